# Source at the start of a GPU-machine command (with .whl carried): installs the wheels the image
# lacks into /tmp/site, maps kernels/ to the import name sglserve_kernels, sets PYTHONPATH.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
if [ -d .fi ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .fi/*.whl; fi
mkdir -p /tmp/kpath && ln -sfn "$PWD/kernels" /tmp/kpath/sglserve_kernels
export PYTHONPATH=/tmp/site:$PWD:/tmp/kpath PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
git rev-parse --short HEAD 2>/dev/null | tee "$OUT/commit.txt" || true
