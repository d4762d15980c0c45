#!/usr/bin/env bash
# Third GPU pass: engine tests, W1/W2/W5 after the host-path work, server start-up time, W1 via HTTP, W3 at rate inf, W4.
set -uo pipefail
cd "$(dirname "$0")/../.."
. benchmarks/device/setup_env.sh
L=benchmarks/configs/Llama-3.1-8B-Instruct; Q=benchmarks/configs/Qwen3-0.6B; TOK=.tok/smollm2
D="--load-format dummy --context-length 4096"
timeout 150 python3 -m pytest -q -s tests/gpu/test_engine_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/engine_gpu.txt" | grep -E "agreement|identical|passed|failed|Error" | head
timeout 60 python3 -m sglserve.bench_one_batch --model-path $L $D --batch-size 1 --input-len 128 --output-len 512 --result-file "$OUT/w1.jsonl" 2>&1 | grep -E '^\{' | cut -c1-300
timeout 120 python3 -m sglserve.bench_offline_throughput --model-path $L $D --num-prompts 1000 --random-input-len 256 --random-output-len 256 --measure-gpu-busy --log-level info --result-file "$OUT/w2.jsonl" > "$OUT/w2.log" 2>&1; tail -c 900 "$OUT/w2.jsonl"; grep -c retracted "$OUT/w2.log"
timeout 90 python3 -m sglserve.bench_offline_throughput --model-path $Q $D --num-prompts 256 --random-input-len 1024 --random-output-len 1024 --random-range-ratio 0.09765625 --measure-gpu-busy --result-file "$OUT/w5.jsonl" > "$OUT/w5.log" 2>&1; tail -c 900 "$OUT/w5.jsonl"
serve() {  # serve <log> <flags...>: start, print seconds to ready
  local log=$1; shift; local t0=$(date +%s.%N)
  python3 -m sglserve.launch_server --model-path $L $D --tokenizer-path $TOK --port 30100 "$@" > "$OUT/$log" 2>&1 &
  for i in $(seq 300); do curl -sf localhost:30100/health >/dev/null && break; sleep 0.2; done
  echo "server $log ready after $(awk "BEGIN{print $(date +%s.%N) - $t0}") s"
}
B="python3 -m sglserve.bench_serving --backend sglserve --port 30100 --tokenizer $TOK --disable-tqdm"
serve server.log
timeout 60 $B --dataset-name random --num-prompts 3 --random-input-len 128 --random-output-len 512 --random-range-ratio 1 --max-concurrency 1 --output-file "$OUT/w1_http.jsonl" 2>&1 | grep -E "Output token throughput|Median TPOT"
timeout 120 $B --dataset-name sharegpt --dataset-path .data/sharegpt_head.json --num-prompts 1000 --request-rate inf --output-file "$OUT/w3.jsonl" --output-details 2>&1 | grep -E "Successful|Duration|Output token throughput|ITL|TTFT" | head -12
timeout 120 $B --dataset-name generated-shared-prefix --gsp-num-groups 16 --gsp-prompts-per-group 16 --output-file "$OUT/w4.jsonl" --tag radix_on 2>&1 | grep -E "Duration|Output token throughput|hit rate"
kill %1; wait
serve server_noradix.log --disable-radix-cache
timeout 150 $B --dataset-name generated-shared-prefix --gsp-num-groups 16 --gsp-prompts-per-group 16 --output-file "$OUT/w4.jsonl" --tag radix_off 2>&1 | grep -E "Duration|Output token throughput|hit rate"
kill %1; wait
