#!/usr/bin/env bash
# Final GPU pass: decode-tile sweep (best exported), then W1, W2, W5, server start-up, W1 via HTTP, W3, W5 peer.
set -uo pipefail
cd "$(dirname "$0")/../.."
. benchmarks/device/setup_env.sh
L=benchmarks/configs/Llama-3.1-8B-Instruct; Q=benchmarks/configs/Qwen3-0.6B; TOK=.tok/smollm2
D="--load-format dummy --context-length 4096"
timeout 120 python3 benchmarks/kernels/sweep_decode.py > "$OUT/sweep.txt" 2>&1; tail -4 "$OUT/sweep.txt" | cut -c1-200
BEST=$(grep -o 'SGLSERVE_DECODE_CFG=.*' "$OUT/sweep.txt" | tail -1); [ -n "$BEST" ] && export "$BEST"; echo "using $BEST"
timeout 60 python3 -m sglserve.bench_one_batch --model-path $L $D --batch-size 1 --input-len 128 --output-len 512 --result-file "$OUT/w1.jsonl" 2>&1 | grep -E '^\{' | cut -c1-260
timeout 120 python3 -m sglserve.bench_offline_throughput --model-path $L $D --num-prompts 1000 --random-input-len 256 --random-output-len 256 --measure-gpu-busy --result-file "$OUT/w2.jsonl" > "$OUT/w2.log" 2>&1; tail -c 700 "$OUT/w2.jsonl"
timeout 90 python3 -m sglserve.bench_offline_throughput --model-path $Q $D --num-prompts 256 --random-input-len 1024 --random-output-len 1024 --random-range-ratio 0.09765625 --measure-gpu-busy --result-file "$OUT/w5.jsonl" > "$OUT/w5.log" 2>&1; tail -c 700 "$OUT/w5.jsonl"
serve() {
  local log=$1; shift; local t0=$(date +%s.%N)
  python3 -m sglserve.launch_server --model-path $L $D --tokenizer-path $TOK --port 30100 "$@" > "$OUT/$log" 2>&1 &
  for i in $(seq 300); do curl -sf localhost:30100/health >/dev/null && break; sleep 0.2; done
  echo "server $log ready after $(awk "BEGIN{print $(date +%s.%N) - $t0}") s"
}
B="python3 -m sglserve.bench_serving --backend sglserve --port 30100 --tokenizer $TOK --disable-tqdm"
W3="--dataset-name sharegpt --dataset-path .data/sharegpt_head.json"
serve server.log
timeout 60 $B --dataset-name random --num-prompts 3 --random-input-len 128 --random-output-len 512 --random-range-ratio 1 --max-concurrency 1 --output-file "$OUT/w1_http.jsonl" 2>&1 | grep -E "Output token throughput|Median TPOT"
timeout 100 $B $W3 --num-prompts 1000 --request-rate inf --output-file "$OUT/w3.jsonl" --tag chunk8192 2>&1 | grep -E "Output token throughput|P99 ITL|Median ITL"
kill %1; wait
serve server_c2048.log --chunked-prefill-size 2048
timeout 100 $B $W3 --num-prompts 1000 --request-rate inf --output-file "$OUT/w3.jsonl" --tag chunk2048 2>&1 | grep -E "Output token throughput|P99 ITL|Median ITL"
timeout 70 $B $W3 --num-prompts 300 --request-rate 8 --output-file "$OUT/w3.jsonl" --tag chunk2048_rate8 2>&1 | grep -E "Output token throughput|P99 ITL|Median TTFT"
kill %1; wait
grep -h "Starting sglserve\|Scheduler process started\|Load weight end\|Captured\|fired up" "$OUT/server.log" | cut -c1-120
timeout 70 python3 benchmarks/peers/hf_transformers.py throughput --model-path $Q --num-prompts 32 --random-input-len 1024 --random-output-len 1024 --random-range-ratio 0.09765625 --result-file "$OUT/w5_peer.jsonl" > "$OUT/w5_peer.log" 2>&1; tail -c 400 "$OUT/w5_peer.jsonl"
