#!/bin/sh
# Benchmark: our native engine vs llama.cpp's (engine::reference, same ggml
# build) on the same GGUF, threads and KV type, in one run. Prints tokens/s for
# pp512 and tg128 (best of --reps), load-to-first-token time and peak RSS, and
# the ratios ours/llama.cpp. Each engine runs in its own process so RSS is its own.
#
#   scripts/bench-infer.sh [MODEL.gguf|all] [THREADS] [KV_TYPE] [REPS]
#
# "all" (the default) runs SmolLM2-135M (llama) and Gemma3-270M.
# llama.cpp runs as its own tools do: persistent thread pool, weights
# repacked where its CPU backend has faster kernels (Q4_0, Q4_K on AVX2).
set -eu
cd "$(dirname "$0")/.."
DIR=${LLPIPE_MODELS_DIR:-$HOME/.cache/llpipe/models}
THREADS=${2:-2}
KV=${3:-f16}
REPS=${4:-3}
cargo build -q --release -p models --example bench
BIN=target/release/examples/bench
if [ "${1:-all}" = all ]; then
  set -- "$DIR/SmolLM2-135M-Instruct.Q4_1.gguf" "$DIR/gemma-3-270m-q4_k_m.gguf"
else
  set -- "$1"
fi
for MODEL in "$@"; do
[ -f "$MODEL" ] || { echo "bench-infer: missing $MODEL (run scripts/fetch-models.sh)" >&2; exit 2; }
OURS=$("$BIN" --model "$MODEL" --engine native --threads "$THREADS" --kv-type "$KV" --reps "$REPS")
PEER=$("$BIN" --model "$MODEL" --engine llama.cpp --threads "$THREADS" --kv-type "$KV" --reps "$REPS")
python3 - "$OURS" "$PEER" "$MODEL" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"model {sys.argv[3].rsplit('/', 1)[-1]}  threads {o['threads']}  kv {o['kv']}")
print(f"{'':24}{'native':>12}{'llama.cpp':>12}{'ratio':>8}")
for k, label, better in [("pp512", "pp512 (t/s)", "higher"), ("tg128", "tg128 (t/s)", "higher"),
                         ("load_first_token_ms", "load+first token (ms)", "lower"), ("peak_rss_kb", "peak RSS (KiB)", "lower")]:
    print(f"{label:24}{o[k]:>12.1f}{p[k]:>12.1f}{o[k] / p[k]:>8.2f}  ({better} is better)")
PY
done
