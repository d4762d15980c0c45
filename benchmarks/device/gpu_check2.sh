#!/usr/bin/env bash
# Second GPU pass: decode profile, W1 (overlap on/off, engine + HTTP), W2, W5, GPU engine tests, HF peer W1.
set -uo pipefail
cd "$(dirname "$0")/../.."
. benchmarks/device/setup_env.sh
L=benchmarks/configs/Llama-3.1-8B-Instruct; Q=benchmarks/configs/Qwen3-0.6B; TOK=.tok/smollm2
D="--load-format dummy --context-length 4096"
timeout 100 python3 benchmarks/device/profile_decode.py --model-path $L $D --batch-size 1 64 256 > "$OUT/profile.txt" 2>&1; grep -E '^\{' "$OUT/profile.txt"
for ov in "" "--disable-overlap-schedule"; do
timeout 60 python3 -m sglserve.bench_one_batch --model-path $L $D --batch-size 1 --input-len 128 --output-len 512 $ov --result-file "$OUT/w1.jsonl" 2>&1 | grep -E '^\{' | cut -c1-330
done
timeout 150 python3 -m sglserve.bench_offline_throughput --model-path $L $D --num-prompts 1000 --random-input-len 256 --random-output-len 256 --log-level info --result-file "$OUT/w2.jsonl" > "$OUT/w2.txt" 2>&1; grep -E '^\{' "$OUT/w2.txt"; grep "Decode batch" "$OUT/w2.txt" | tail -3
timeout 120 python3 -m sglserve.bench_offline_throughput --model-path $Q $D --num-prompts 256 --random-input-len 1024 --random-output-len 1024 --random-range-ratio 0.09765625 --result-file "$OUT/w5.jsonl" > "$OUT/w5.txt" 2>&1; grep -E '^\{' "$OUT/w5.txt" || tail -5 "$OUT/w5.txt"
python3 -m sglserve.launch_server --model-path $L $D --tokenizer-path $TOK --port 30100 > "$OUT/server.log" 2>&1 &
for i in $(seq 60); do curl -sf localhost:30100/health >/dev/null && break; sleep 1; done
timeout 60 python3 -m sglserve.bench_serving --backend sglserve --port 30100 --tokenizer $TOK --dataset-name random --num-prompts 3 --random-input-len 128 --random-output-len 512 --random-range-ratio 1 --max-concurrency 1 --disable-tqdm --output-file "$OUT/w1_http.jsonl" 2>&1 | grep -iE "throughput|TPOT|ITL" | head -8
kill %1; wait
timeout 150 python3 -m pytest -q -x -s tests/gpu/test_engine_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/engine_gpu.txt" | grep -E "agreement|identical|passed|failed|Error" | head
timeout 60 python3 benchmarks/peers/hf_transformers.py one-batch --model-path $L --input-len 128 --output-len 512 --result-file "$OUT/peer_w1.jsonl" 2>&1 | tail -2 | cut -c1-300
