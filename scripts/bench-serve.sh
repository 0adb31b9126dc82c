#!/usr/bin/env bash
# Benchmark `serve` as its clients see it, against llama.cpp's own
# `llama-server` (built by scripts/build-peers.sh from the llama.cpp tree of
# the llama-cpp-python sdist, same instruction sets), on SmolLM2:
#
#   bash scripts/bench-serve.sh [ROUNDS] [THREADS] [N_GEN] [ENGINE]
#
# serve: OLLAMA_NUM_PARALLEL=4 (continuous batching), --ctx 2048 per
# sequence, --engine ENGINE (native, the default, or llama.cpp: its engine
# in process, batching the same way); llama-server: -np 4 -c 8192 (2048 per slot, as Ollama starts it),
# continuous batching on (its default); both with THREADS threads and flash
# attention (both defaults on the CPU). Each round, alternating which server
# goes first: the aggregate tokens/s of 4 streaming greedy requests of N_GEN
# tokens at once, and the time to first token of one request with a
# ~200-token prompt alone (scripts/bench_serve.py). Goals (issue 13):
# aggregate ≥ 1.0×, time to first token ≤ 1.0×.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
THREADS=${2:-2}
N_GEN=${3:-128}
ENGINE=${4:-native}
mapfile -t MODELS < <(bash scripts/fetch-models.sh)
GGUF=${MODELS[0]}
PEERS=$(bash scripts/build-peers.sh)
cargo build -q --release -p serve-tool -p model-create
rel=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 600); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench-serve: error: nothing listens on port $1" >&2
  exit 1
}

export OLLAMA_MODELS="$work/models"
"$rel"/model-create smollm2:135m --gguf "$GGUF" >/dev/null
OURS=$(free_port)
OLLAMA_HOST="127.0.0.1:$OURS" OLLAMA_NUM_PARALLEL=4 OLLAMA_KEEP_ALIVE=-1 \
  "$rel"/serve --threads "$THREADS" --ctx 2048 --engine "$ENGINE" 2>"$work/serve.log" &
pids+=($!)
PEER=$(free_port)
LD_LIBRARY_PATH="$PEERS" "$PEERS/llama-server" -m "$GGUF" -np 4 -c 8192 -t "$THREADS" \
  --host 127.0.0.1 --port "$PEER" >"$work/peer.log" 2>&1 &
pids+=($!)
wait_port "$OURS"
wait_port "$PEER"
# llama-server listens before it has loaded the model
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$PEER/health" >/dev/null && break
  sleep 0.1
done

echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; threads $THREADS; $ROUNDS rounds; serve --engine $ENGINE"
python3 scripts/bench_serve.py "$OURS" "$PEER" "$ROUNDS" "$N_GEN"
