#!/usr/bin/env bash
# The GPU pass still owed (no device time was left after R4): one stage per device call, each under
# the 10-minute limit and the 64 MiB a call carries. Carry (after ../shared/device/fetch-wheels.sh,
# fetch-flashinfer.sh and benchmarks/device/split_gguf.sh here):
#   perf        .whl .tok .smol/a .smol/sha256   W1, W2, W5, start-up to ready; keeps GGUF part a in /tmp
#   check       .whl .smol/b .smol/sha256        GPU tests; SmolLM2 real-weights bf16 check (parts joined)
#                                                (issue `check` within the 30 s the machine stays warm)
#   flashinfer  .whl .fi                         FlashInfer backend tests on the real library, W1 with it
#   online      .whl .tok .data                  W3 at rate inf, 4, 8, 16 through run_all.sh (~8 min)
#   prefix      .whl .tok                        W4 64 x 16, radix on/off through run_all.sh, then plot.py
set -uo pipefail
cd "$(dirname "$0")/../.."
. benchmarks/device/setup_env.sh
L=benchmarks/configs/Llama-3.1-8B-Instruct; Q=benchmarks/configs/Qwen3-0.6B; TOK=.tok/smollm2
D="--load-format dummy --context-length 4096"
# SmolLM2 real weights, carried in two halves over two calls
[ -f .smol/a ] && cp .smol/a /tmp/smol.part_a
if [ -f .smol/b ] && [ -f /tmp/smol.part_a ]; then
  cat /tmp/smol.part_a .smol/b > /tmp/SmolLM2-135M-Instruct.Q4_1.gguf
  [ "$(sha256sum /tmp/SmolLM2-135M-Instruct.Q4_1.gguf | cut -d' ' -f1)" = "$(cat .smol/sha256)" ] \
    && export SMOL_GGUF=/tmp/SmolLM2-135M-Instruct.Q4_1.gguf || echo "joined GGUF does not match its checksum"
fi
export PYTHON=python3 RESULTS="$OUT" TOKENIZER=$TOK PEERS=0 SERVER_ARGS="--context-length 4096" SHAREGPT=.data/sharegpt_head.json
case "${1:-}" in
check)
  timeout 400 python3 -m pytest -q tests/gpu tests/kernels -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.txt" | tail -5
  [ -n "${SMOL_GGUF:-}" ] && SGLSERVE_GPU_TEST_MODEL=$SMOL_GGUF timeout 150 python3 -m pytest -q -s tests/gpu/test_engine_gpu.py \
      -p no:cacheprovider 2>&1 | grep -E "agreement|passed|failed" ;;
flashinfer)  # the first paged prefill JIT-compiles for ~100 s (fetch-flashinfer.sh): the tests warm it
  timeout 400 python3 -m pytest -q tests/kernels/test_flashinfer_backend.py -p no:cacheprovider 2>&1 | tail -3
  python3 -m sglserve.bench_one_batch --model-path $L $D --attention-backend flashinfer \
      --batch-size 1 --input-len 128 --output-len 512 --result-file "$OUT/w1_flashinfer.jsonl" | tail -1 ;;
perf)
  python3 -m sglserve.bench_one_batch --model-path $L $D --batch-size 1 --input-len 128 --output-len 512 --result-file "$OUT/w1.jsonl" | tail -1
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
*) echo "stage: perf | check | flashinfer | online | prefix" >&2; exit 2 ;;
esac
