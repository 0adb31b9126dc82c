#!/usr/bin/env bash
# What the network hop costs: `infer --rpc` with the layers split three ways
# (two infer-workers on 127.0.0.1 and the local CPU, --tensor-split 1,1,1)
# against the same model run locally, both on llama.cpp's engine.
#
#   bash scripts/bench-rpc.sh [ROUNDS] [THREADS] [all|smollm2|gemma3]
#
# Per model and round, local and split alternate (which goes first swaps
# every round): `-n 128 --ignore-eos`, prompt "Once upon a time", greedy,
# raw, --draft-max 0, --no-repack (workers never repack, so both sides run
# the same kernels), THREADS threads for infer and for each worker.
# Prints the median (min–max) generation rate (eval_count / eval_duration,
# the first token excluded as Ollama counts it) of each, their ratio, the
# load time (load_duration) and the peak resident size of each process:
# infer's from /usr/bin/time -v, each worker's VmHWM (/proc) after the
# rounds. Each worker should hold only its share of the weights.
#   INFER_ARGS="..."  extra flags for both infer runs
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
THREADS=${2:-1}
WHICH=${3:-all}
mapfile -t MODELS < <(bash scripts/fetch-models.sh)
case $WHICH in
  all) ;;
  smollm2) MODELS=("${MODELS[0]}") ;;
  gemma3) MODELS=("${MODELS[1]}") ;;
  *) echo "bench-rpc: error: model must be all, smollm2 or gemma3, not $WHICH" >&2; exit 2 ;;
esac
T=${CARGO_TARGET_DIR:-target}
cargo build -q --release -p infer -p infer-worker
[ -x /usr/bin/time ] || { echo "bench-rpc: error: /usr/bin/time missing (apt-get install time)" >&2; exit 2; }
command -v jq >/dev/null || { echo "bench-rpc: error: jq missing (apt-get install jq)" >&2; exit 2; }
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_worker N: an infer-worker on a free port; sets port[N] and pids
declare -A port
start_worker() {
  local p
  p=$(free_port)
  "$T/release/infer-worker" --port "$p" --threads "$THREADS" --cache "$work/cache$1" 2>"$work/worker$1.log" &
  pids+=($!)
  port[$1]=$p
  for _ in $(seq 300); do
    grep -q "listening on" "$work/worker$1.log" && return 0
    sleep 0.1
  done
  echo "bench-rpc: error: worker $1 did not start: $(cat "$work/worker$1.log")" >&2
  exit 2
}

# stats FILE: "median (min–max)" of the numbers in FILE
stats() {
  sort -g "$1" | awk '{a[NR]=$1} END {m = NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2; printf "%.1f (%.1f–%.1f)", m, a[1], a[NR]}'
}
median() { sort -g "$1" | awk '{a[NR]=$1} END {print NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# run NAME MODEL [FLAGS…]: one generation; appends t/s, load s, RSS MiB
run() {
  local name=$1 model=$2
  shift 2
  /usr/bin/time -v -o "$work/time" "$T/release/infer" --model "$model" --engine llama.cpp \
    --raw -p "Once upon a time" -n 128 --ignore-eos --temperature 0 --draft-max 0 \
    --no-repack --threads "$THREADS" --json ${INFER_ARGS:-} "$@" >"$work/out" 2>"$work/err" \
    || { echo "bench-rpc: error: $name run failed: $(tail -1 "$work/err")" >&2; exit 2; }
  cp "$work/err" "$work/$name.err"
  tail -1 "$work/out" | jq -r '.data | (.eval_count / .eval_duration * 1e9)' >>"$work/$name.tps"
  tail -1 "$work/out" | jq -r '.data | (.load_duration / 1e9)' >>"$work/$name.load"
  awk '/Maximum resident/ {printf "%.0f\n", $6/1024}' "$work/time" >>"$work/$name.rss"
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores; threads $THREADS per process; $ROUNDS rounds"
for model in "${MODELS[@]}"; do
  # fresh workers per model, so each one's peak is that model's share
  pids=()
  start_worker 1
  start_worker 2
  rpc="127.0.0.1:${port[1]},127.0.0.1:${port[2]}"
  rm -f "$work"/*.tps "$work"/*.load "$work"/*.rss
  for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then
      run local "$model"
      run split "$model" --rpc "$rpc" --tensor-split 1,1,1
    else
      run split "$model" --rpc "$rpc" --tensor-split 1,1,1
      run local "$model"
    fi
  done
  notice=$(grep -m1 "over RPC" "$work/split.err" || true)
  w1=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/${pids[0]}/status")
  w2=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/${pids[1]}/status")
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo
  echo "$(basename "$model")"
  echo "  ${notice#infer: }"
  printf '  %-28s %-24s %-24s %s\n' "" "local" "split (RPC)" "split/local"
  ratio=$(awk -v a="$(median "$work/split.tps")" -v b="$(median "$work/local.tps")" 'BEGIN {printf "%.2f", a/b}')
  printf '  %-28s %-24s %-24s %s\n' "generation, tokens/s" "$(stats "$work/local.tps")" "$(stats "$work/split.tps")" "$ratio"
  printf '  %-28s %-24s %-24s\n' "load, s" "$(stats "$work/local.load")" "$(stats "$work/split.load")"
  printf '  %-28s %-24s %-24s\n' "peak RSS of infer, MiB" "$(stats "$work/local.rss")" "$(stats "$work/split.rss")"
  printf '  %-28s %s\n' "peak RSS of workers, MiB" "$w1 and $w2"
done
