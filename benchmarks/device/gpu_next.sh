#!/usr/bin/env bash
# The GPU pass still owed (no device time was left after R4): one stage per device call, each
# under the 10-minute limit. Carry .whl, .tok, .data (and .fi for the flashinfer rows).
#   bash benchmarks/device/gpu_next.sh check    # GPU tests incl. the FlashInfer backend, SmolLM2 bf16 if $SMOL_GGUF
#   bash benchmarks/device/gpu_next.sh perf     # W1 (triton, flashinfer), W2, W5, start-up to ready
#   bash benchmarks/device/gpu_next.sh online   # W3 at rate inf, 4, 8, 16 through run_all.sh (~8 min)
#   bash benchmarks/device/gpu_next.sh prefix   # W4 64 x 16, radix on/off through run_all.sh, then plot.py
set -uo pipefail
cd "$(dirname "$0")/../.."
. benchmarks/device/setup_env.sh
L=benchmarks/configs/Llama-3.1-8B-Instruct; Q=benchmarks/configs/Qwen3-0.6B; TOK=.tok/smollm2
D="--load-format dummy --context-length 4096"
export PYTHON=python3 RESULTS="$OUT" TOKENIZER=$TOK PEERS=0 SERVER_ARGS="--context-length 4096" SHAREGPT=.data/sharegpt_head.json
case "${1:-}" in
check)
  timeout 400 python3 -m pytest -q tests/gpu tests/kernels -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.txt" | tail -5
  [ -n "${SMOL_GGUF:-}" ] && SGLSERVE_GPU_TEST_MODEL=$SMOL_GGUF timeout 150 python3 -m pytest -q -s tests/gpu/test_engine_gpu.py \
      -p no:cacheprovider 2>&1 | grep -E "agreement|passed|failed" ;;
perf)
  python3 -m sglserve.bench_one_batch --model-path $L $D --batch-size 1 --input-len 128 --output-len 512 --result-file "$OUT/w1.jsonl" | tail -1
  python3 -c "import flashinfer" 2>/dev/null && python3 -m sglserve.bench_one_batch --model-path $L $D --attention-backend flashinfer \
      --batch-size 1 --input-len 128 --output-len 512 --result-file "$OUT/w1_flashinfer.jsonl" | tail -1
  timeout 120 python3 -m sglserve.bench_offline_throughput --model-path $L $D --num-prompts 1000 --random-input-len 256 \
      --random-output-len 256 --random-range-ratio 1.0 --measure-gpu-busy --result-file "$OUT/w2.jsonl" | tail -3
  timeout 90 python3 -m sglserve.bench_offline_throughput --model-path $Q $D --num-prompts 256 --random-input-len 1024 \
      --random-output-len 1024 --random-range-ratio 0.09765625 --measure-gpu-busy --result-file "$OUT/w5.jsonl" | tail -3
  t0=$(date +%s.%N)
  python3 -m sglserve.launch_server --model-path $L $D --tokenizer-path $TOK --port 30100 > "$OUT/server_startup.log" 2>&1 &
  for i in $(seq 600); do curl -sf localhost:30100/health > /dev/null && break; sleep 0.1; done
  echo "start-up to ready: $(awk "BEGIN{print $(date +%s.%N) - $t0}") s"; kill %1; wait ;;
online)
  timeout 590 bash benchmarks/run_all.sh W3 2>&1 | grep -E "run_all|Output token throughput|P99 ITL" ;;
prefix)
  timeout 500 bash benchmarks/run_all.sh W4 2>&1 | grep -E "run_all|Output token throughput|hit rate"
  python3 benchmarks/plot.py --results "$OUT" ;;
*) echo "stage: check | perf | online | prefix" >&2; exit 2 ;;
esac
