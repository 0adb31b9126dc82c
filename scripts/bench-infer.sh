#!/bin/sh
# Benchmark: our native engine vs llama.cpp's (engine::llama_cpp, same ggml
# build) on the same GGUF, threads and KV type, in one run. Prints tokens/s for
# pp512 and tg128 (best of --reps), load-to-first-token time and peak RSS, and
# the ratios ours/llama.cpp. Each engine runs in its own process so RSS is its own.
#
#   scripts/bench-infer.sh [MODEL.gguf|all] [THREADS] [KV_TYPE] [REPS] [ROUNDS]
#   GPU_LAYERS=-1 scripts/bench-infer.sh ...   # both engines on the GPU only (GPU builds)
# Without GPU_LAYERS the CPU tables come first; then, when the bench binary
# is a GPU build that finds a device, the same tables with both engines on
# the GPU, or a line saying the GPU run was skipped.
#   BENCH_BIN=path/to/bench scripts/bench-infer.sh ...  # a prebuilt bench example
#
# "all" (the default) runs SmolLM2-135M (llama) and Gemma3-270M. Our engine
# runs twice: mapping the file (the default: fastest load) and with
# --no-mmap (weights read into 2 MiB huge pages: fewer TLB misses while
# generating, slower load). The two ratio columns are each against llama.cpp.
# llama.cpp runs as its own tools do: persistent thread pool, weights
# repacked where its CPU backend has faster kernels (Q4_0, Q4_K on AVX2).
set -eu
cd "$(dirname "$0")/.."
DIR=${LLPIPE_MODELS_DIR:-$HOME/.cache/llpipe/models}
THREADS=${2:-2}
KV=${3:-f16}
REPS=${4:-2}
ROUNDS=${5:-3}
GPU_LAYERS=${GPU_LAYERS:-0}
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  cargo build -q --release -p models --example bench
  BIN=target/release/examples/bench
fi
ARG1=${1:-all}
if [ "$ARG1" = all ]; then
  set -- "$DIR/SmolLM2-135M-Instruct.Q4_1.gguf" "$DIR/gemma-3-270m-q4_k_m.gguf"
else
  set -- "$1"
fi
if [ -z "${GPU_LAYERS_SET:-}" ] && [ "$GPU_LAYERS" = 0 ]; then
  GPU=$("$BIN" --gpu-probe)
else
  GPU=""  # GPU_LAYERS given (or this is the GPU pass): no second pass
fi
for MODEL in "$@"; do
[ -f "$MODEL" ] || { echo "bench-infer: missing $MODEL (run scripts/fetch-models.sh)" >&2; exit 2; }
# Rounds alternate the engines, so a slow spell of this shared machine hits
# them alike; each figure is the best over the rounds.
OURS=""; HUGE=""; PEER=""
for _ in $(seq "$ROUNDS"); do
  OURS="$OURS$("$BIN" --model "$MODEL" --engine native --threads "$THREADS" --kv-type "$KV" --reps "$REPS" --gpu-layers "$GPU_LAYERS") "
  HUGE="$HUGE$("$BIN" --model "$MODEL" --engine native --no-mmap true --threads "$THREADS" --kv-type "$KV" --reps "$REPS" --gpu-layers "$GPU_LAYERS") "
  PEER="$PEER$("$BIN" --model "$MODEL" --engine llama.cpp --threads "$THREADS" --kv-type "$KV" --reps "$REPS" --gpu-layers "$GPU_LAYERS") "
done
python3 - "$OURS" "$HUGE" "$PEER" "$MODEL" <<'PY'
import json, sys
def best(runs):
    rs = [json.loads(r) for r in runs.replace("} {", "}\n{").split("\n") if r.strip()]
    b = dict(rs[0])
    for k in ("pp512", "tg128"):
        b[k] = max(r[k] for r in rs)
    for k in ("load_first_token_ms", "peak_rss_kb"):
        b[k] = min(r[k] for r in rs)
    return b
o, h, p = (best(a) for a in sys.argv[1:4])
print(f"model {sys.argv[4].rsplit('/', 1)[-1]}  on {o['device']}  threads {o['threads']}  kv {o['kv']}  (load {open('/proc/loadavg').read().split()[0]})")
print(f"{'':24}{'native':>10}{'--no-mmap':>11}{'llama.cpp':>11}{'ratio':>7}{'ratio':>11}")
for k, label, better in [("pp512", "pp512 (t/s)", "higher"), ("tg128", "tg128 (t/s)", "higher"),
                         ("load_first_token_ms", "load+first token (ms)", "lower"), ("peak_rss_kb", "peak RSS (KiB)", "lower")]:
    print(f"{label:24}{o[k]:>10.1f}{h[k]:>11.1f}{p[k]:>11.1f}{o[k] / p[k]:>7.2f}{h[k] / p[k]:>11.2f}  ({better} is better)")
PY
done
if [ "$GPU" = none ]; then
  echo "bench-infer: GPU: SKIPPED: no GPU (a CPU-only build, or no device found; see scripts/check-cuda-build.sh)"
elif [ -n "$GPU" ]; then
  echo "bench-infer: GPU: $GPU, both engines with --gpu-layers -1"
  GPU_LAYERS=-1 GPU_LAYERS_SET=1 BENCH_BIN=$BIN sh scripts/bench-infer.sh "$ARG1" "$THREADS" "$KV" "$REPS" "$ROUNDS"
fi
