#!/usr/bin/env bash
# One GPU call: the kernel tests (tests/kernels run on CUDA when present, plus tests/gpu/test_kernels_gpu.py)
# and the attention micro-benchmark. Results land in ${OUT:-/tmp/sglserve_kernels_out}.
# Needs a CUDA build of torch and triton in the active Python (pip install -e ".[test]").
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/sglserve_kernels_out}"
mkdir -p "$OUT"
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python -m pytest -q tests/kernels tests/gpu/test_kernels_gpu.py -p no:cacheprovider -rs 2>&1 | tee "$OUT/kernel_tests.txt" | tail -40
python benchmarks/kernels/bench_attention.py --extend --json "$OUT/bench_attention.json" 2>&1 | tee "$OUT/bench_attention.txt"
