# Sourced at the start of every stage (benchmarks/device/stages.sh). On the GPU machine (with .whl
# carried): installs the wheels the image lacks into /tmp/site, maps kernels/ to the import name
# sglserve_kernels, sets PYTHONPATH, and writes $OUT/env.txt (GPU, commit). With DRYRUN=1 (this
# CPU machine) it installs nothing and keeps the current environment's PYTHONPATH.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ "${DRYRUN:-0}" = 1 ]; then
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  echo "DRYRUN on $(hostname): $(nproc) CPUs, no GPU" > "$OUT/env.txt"
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${CARRY_ROOT:-.}"/.whl/*.whl
  if [ -d "${CARRY_ROOT:-.}/.spy" ]; then  # py-spy, carried only by the calls that profile (2.8 MB)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${CARRY_ROOT:-.}"/.spy/*.whl
  fi
  if [ -d "${CARRY_ROOT:-.}/.fi" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${CARRY_ROOT:-.}"/.fi/*.whl
  fi
  mkdir -p /tmp/kpath && ln -sfn "$PWD/kernels" /tmp/kpath/sglserve_kernels
  export PYTHONPATH=/tmp/site:$PWD:/tmp/kpath PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH
  unset TRITON_INTERPRET
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/env.txt"
fi
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ local changes)')" >> "$OUT/env.txt"
cat "$OUT/env.txt"
