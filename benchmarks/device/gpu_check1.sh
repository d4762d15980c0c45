#!/usr/bin/env bash
# First GPU pass: kernel tests, engine-on-GPU tests, W1 (batch-1 decode) and a W2 probe.
set -uo pipefail
cd "$(dirname "$0")/../.."
. benchmarks/device/setup_env.sh
L=benchmarks/configs/Llama-3.1-8B-Instruct
timeout 150 python3 -m pytest -q -x tests/kernels tests/gpu/test_kernels_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/kernel_tests.txt" | tail -15
timeout 150 python3 -m pytest -q -x -s tests/gpu/test_engine_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/engine_gpu.txt" | tail -25
timeout 120 python3 -m sglserve.bench_one_batch --model-path $L --load-format dummy --context-length 4096 \
  --batch-size 1 --input-len 128 --output-len 512 --log-level info --result-file "$OUT/w1.jsonl" 2>&1 | grep -v Loading | tee "$OUT/w1.txt" | tail -8
timeout 150 python3 -m sglserve.bench_offline_throughput --model-path $L --load-format dummy --context-length 4096 \
  --num-prompts 300 --random-input-len 256 --random-output-len 256 --log-level info --result-file "$OUT/w2.jsonl" 2>&1 | grep -v Loading | tee "$OUT/w2.txt" | tail -12
