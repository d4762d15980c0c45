#!/usr/bin/env bash
# Final short GPU pass (device time nearly spent): decode-tile sweep, W2, W5, W3 (rate inf, chunk 2048).
set -uo pipefail
cd "$(dirname "$0")/../.."
. benchmarks/device/setup_env.sh
L=benchmarks/configs/Llama-3.1-8B-Instruct; Q=benchmarks/configs/Qwen3-0.6B; TOK=.tok/smollm2
D="--load-format dummy --context-length 4096"
timeout 60 python3 benchmarks/kernels/sweep_decode.py > "$OUT/sweep.txt" 2>&1; cut -c1-160 "$OUT/sweep.txt" | tail -13
BEST=$(grep -o 'SGLSERVE_DECODE_CFG=.*' "$OUT/sweep.txt" | tail -1); [ -n "$BEST" ] && export "$BEST"; echo "using $BEST"
timeout 60 python3 -m sglserve.bench_offline_throughput --model-path $L $D --num-prompts 1000 --random-input-len 256 --random-output-len 256 --measure-gpu-busy --result-file "$OUT/w2.jsonl" > "$OUT/w2.log" 2>&1; tail -c 600 "$OUT/w2.jsonl"
timeout 40 python3 -m sglserve.bench_offline_throughput --model-path $Q $D --num-prompts 256 --random-input-len 1024 --random-output-len 1024 --random-range-ratio 0.09765625 --measure-gpu-busy --result-file "$OUT/w5.jsonl" > "$OUT/w5.log" 2>&1; tail -c 600 "$OUT/w5.jsonl"
python3 -m sglserve.launch_server --model-path $L $D --tokenizer-path $TOK --port 30100 --chunked-prefill-size 2048 > "$OUT/server.log" 2>&1 &
for i in $(seq 300); do curl -sf localhost:30100/health >/dev/null && break; sleep 0.2; done
timeout 45 python3 -m sglserve.bench_serving --backend sglserve --port 30100 --tokenizer $TOK --disable-tqdm --dataset-name sharegpt --dataset-path .data/sharegpt_head.json --num-prompts 1000 --request-rate inf --output-file "$OUT/w3.jsonl" --tag chunk2048 2>&1 | grep -E "Successful|Output token throughput|ITL|TTFT"
kill %1; wait; grep -h "Starting sglserve\|Scheduler process started\|Load weight end\|Captured\|fired up" "$OUT/server.log" | cut -c1-100
