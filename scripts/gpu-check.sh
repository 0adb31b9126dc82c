#!/usr/bin/env bash
# The GPU checks, on a machine with an NVIDIA GPU (driver >= 580, CUDA 13)
# and no Rust toolchain: runs the binaries that `GPU_BUNDLE=1
# scripts/check-cuda-build.sh` built and packed here.
#
#   scripts/gpu-check.sh BUNDLE.tar.xz MODELS_DIR [OUT_DIR]
#
# 1. ggml's GPU unit test (weights uploaded to the GPU multiply like on the CPU);
# 2. the GPU parity tests (libs/models/tests/parity.rs, gpu_*): both engines
#    run the whole model on the GPU, greedy tokens equal, logits within 0.05;
#    Gemma's is skipped when its GGUF is not in MODELS_DIR;
# 3. infer on the GPU: native (--gpu-layers -1), llama.cpp's engine, and a
#    partial offload (which runs on llama.cpp's engine, with a notice);
# 4. the benchmark (scripts/bench-infer.sh with GPU_LAYERS=-1), both engines
#    on the GPU, f16 and q8_0 caches; then the CPU figures on this machine's
#    cores for comparison, with the GPU hidden (CUDA_VISIBLE_DEVICES=""):
#    a CUDA build of llama.cpp otherwise sends large CPU matrix products to
#    the GPU even with no layer offloaded.
# Everything is also written to OUT_DIR/gpu-check.log. Exit status: the
# number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=$1
MODELS=$2
OUT_DIR=${3:-/tmp/gpu-check}
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu-check.log") 2>&1 < /dev/null
say() { echo "gpu-check: $*"; }
failed=0
step() {
    local name=$1
    shift
    say "== $name: $*"
    local t0=$SECONDS
    if "$@"; then
        say "== $name: ok ($((SECONDS - t0)) s)"
    else
        say "== $name: FAILED (exit $?, $((SECONDS - t0)) s)"
        failed=$((failed + 1))
    fi
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader ||
    say "nvidia-smi failed"
B=/tmp/llpipe-gpu/gpu-bundle
rm -rf /tmp/llpipe-gpu && mkdir -p /tmp/llpipe-gpu
python3 -c 'import lzma, sys, tarfile
tarfile.open(fileobj=lzma.open(sys.argv[1]), mode="r|").extractall(sys.argv[2])' \
    "$BUNDLE" /tmp/llpipe-gpu || { say "cannot unpack $BUNDLE"; exit 99; }
# The CUDA 13 runtime and cuBLAS: from the toolkit or from the pip wheels.
libs=""
for l in libcudart.so.13 libcublas.so.13 libcublasLt.so.13; do
    f=$(find /usr/local /opt /usr/lib -name "$l" 2>/dev/null | head -1)
    [ -n "$f" ] && libs="$libs:$(dirname "$f")" || say "no $l found"
done
export LD_LIBRARY_PATH=${libs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldd "$B/infer" | grep -E 'cuda|cublas|not found'
export LLPIPE_MODELS_DIR=$MODELS
SMOL=$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf
GEMMA=$MODELS/gemma-3-270m-q4_k_m.gguf
skip_gemma=()
[ -f "$GEMMA" ] || { skip_gemma=(--skip gemma3); say "no $GEMMA: Gemma's GPU parity skipped"; }

step ggml-gpu "$B/ggml-tests" gpu_ --nocapture
step parity-gpu "$B/parity-tests" gpu_ --nocapture --test-threads=1 "${skip_gemma[@]}"
P="Why is the sky blue?"
step infer-native-gpu "$B/infer" --model "$SMOL" --gpu-layers -1 --temperature 0 -n 48 -p "$P" --verbose
step infer-llama.cpp-gpu "$B/infer" --model "$SMOL" --engine llama.cpp --gpu-layers -1 \
    --temperature 0 -n 48 -p "$P" --verbose
step infer-partial "$B/infer" --model "$SMOL" --gpu-layers 8 --temperature 0 -n 8 -p "$P"
for kv in f16 q8_0; do
    step "bench-gpu-$kv" env BENCH_BIN="$B/bench" GPU_LAYERS=-1 sh scripts/bench-infer.sh "$SMOL" 1 "$kv" 5 3
done
[ -f "$GEMMA" ] && step bench-gpu-gemma env BENCH_BIN="$B/bench" GPU_LAYERS=-1 sh scripts/bench-infer.sh "$GEMMA" 1 f16 5 2
n=$(nproc)
step "bench-cpu-$n-threads" env CUDA_VISIBLE_DEVICES= BENCH_BIN="$B/bench" \
    sh scripts/bench-infer.sh "$SMOL" "$n" f16 2 2
say "done: $failed step(s) failed"
exit "$failed"
