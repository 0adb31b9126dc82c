#!/usr/bin/env bash
# Compile-and-link check of `infer --features cuda` on a machine without a GPU
# or a CUDA toolkit, with NVIDIA's compiler and libraries from PyPI wheels.
# Not part of scripts/test.sh: ggml's CUDA kernels take tens of minutes to build.
#
#   scripts/check-cuda-build.sh            # sm_90 (H100/H200), 2 cmake jobs, niced
#   CUDA_ARCH="80;90" scripts/check-cuda-build.sh
#   GPU_BUNDLE=1 scripts/check-cuda-build.sh  # also the GPU checks' binaries, packed
#
# With GPU_BUNDLE=1 it also builds the GPU parity tests (libs/models/tests/
# parity.rs, gpu_*), ggml's unit tests and the benchmark example with the
# cuda feature, and packs them with infer into target/cuda-check/gpu-bundle.tar.xz
# (one xz stream with a dictionary larger than the four binaries, which share
# ggml-cuda's kernels; Python's lzma unpacks it) for scripts/gpu-check.sh on
# a GPU machine.
#
# Environment: CUDA_ARCH (CMAKE_CUDA_ARCHITECTURES, default 90), JOBS (default 2),
# LLPIPE_CUDA_CACHE (default ~/.cache/llpipe/cuda), LLPIPE_MODELS_DIR.
#
# Why CUDA 13 wheels and not the cu12 ones: nvidia-cuda-nvcc-cu12 (12.1 to 12.9)
# ships only ptxas and libnvvm, no nvcc, cudafe++ or cicc, so it cannot compile
# .cu files. CUDA 13's wheels (nvidia-cuda-nvcc, -crt, -runtime, nvidia-nvvm, ...)
# install a whole toolkit tree into site-packages/nvidia/cu13. A CUDA 13 binary
# needs an NVIDIA driver >= 580 on the GPU machine.
#
# Two things the wheels lack, and what this script does instead (both logged):
#  * libcuda.so (the driver) is not in any wheel: a stub with soname libcuda.so.1
#    is built from cuda.h, every function returning CUDA_ERROR_STUB_LIBRARY, and
#    put in lib/stubs, where a toolkit has its own stub. It is for linking only;
#    at run time the driver's real libcuda.so.1 is loaded.
#  * llama-cpp-sys-2's build.rs links cuBLAS statically on Linux (cublas_static,
#    cublasLt_static), and the cuBLAS wheel has only the shared libraries: two
#    empty placeholder archives of those names satisfy the build script, and the
#    real libcublas.so.13 / libcublasLt.so.13 are linked with -C link-arg.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)

ARCH=${CUDA_ARCH:-90}
JOBS=${JOBS:-2}
CACHE=${LLPIPE_CUDA_CACHE:-$HOME/.cache/llpipe/cuda}
# CUDA 13.0 update 2, one release of every component.
CUDA_SET=13.0.2
WHEELS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-culibos==13.0.85
    nvidia-cuda-cccl==13.0.85
    nvidia-cublas==13.1.0.3
)
SITE=$CACHE/site-$CUDA_SET
ROOT=$SITE/nvidia/cu13
LINKDIR=$CACHE/link-$CUDA_SET
NODRIVER=$CACHE/nodriver-$CUDA_SET
TARGET_DIR=target/cuda-check
BIN=$TARGET_DIR/release/infer

say() { echo "check-cuda-build: $*"; }
fail() { echo "check-cuda-build: FAILED: $*" >&2; echo "cuda build: FAILED ($*)"; exit 1; }

# 1. The wheels, installed once into the cache.
if [ ! -f "$SITE/.complete" ]; then
    say "installing ${WHEELS[*]} into $SITE"
    rm -rf "$SITE.tmp"
    PIP_ROOT_USER_ACTION=ignore pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --target "$SITE.tmp" "${WHEELS[@]}"
    rm -rf "$SITE"
    mv "$SITE.tmp" "$SITE"
    touch "$SITE/.complete"
fi
[ -x "$ROOT/bin/nvcc" ] || fail "no nvcc at $ROOT/bin/nvcc"

# 2. The toolkit layout nvcc, CMake and find_cuda_helper look for.
ln -sfn lib "$ROOT/lib64"    # nvcc.profile and find_cuda_helper use lib64
for l in cudart cublas cublasLt; do
    ln -sfn "lib$l.so.13" "$ROOT/lib/lib$l.so"
done
if [ ! -f "$ROOT/lib/stubs/libcuda.so" ]; then
    say "building the link-time stub libcuda.so (soname libcuda.so.1) from cuda.h"
    mkdir -p "$ROOT/lib/stubs"
    # Every driver function cuda.h declares (after its _v2 renames), as a C
    # function that ignores its arguments and returns CUDA_ERROR_STUB_LIBRARY.
    echo '#include <cuda.h>' | gcc -E -P -I"$ROOT/include" -x c - |
        grep -oE '^[A-Za-z_][A-Za-z0-9_ *]*[ *]cu[A-Z][A-Za-z0-9_]* *\(' |
        grep -oE 'cu[A-Z][A-Za-z0-9_]*' | sort -u |
        awk '{ printf "int %s(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }\n", $1 }' \
            > "$ROOT/lib/stubs/libcuda-stub.c"
    n=$(wc -l < "$ROOT/lib/stubs/libcuda-stub.c")
    [ "$n" -gt 300 ] || fail "only $n driver functions found in cuda.h"
    gcc -shared -fPIC -fno-builtin -Wl,-soname,libcuda.so.1 \
        -o "$ROOT/lib/stubs/libcuda.so" "$ROOT/lib/stubs/libcuda-stub.c"
fi
# Placeholder archives for the static cuBLAS names build.rs asks for.
if [ ! -f "$LINKDIR/libcublasLt_static.a" ]; then
    mkdir -p "$LINKDIR"
    echo 'int llpipe_cublas_placeholder;' > "$LINKDIR/placeholder.c"
    gcc -c -o "$LINKDIR/placeholder.o" "$LINKDIR/placeholder.c"
    for l in cublas_static cublasLt_static; do
        rm -f "$LINKDIR/lib$l.a"
        ar rcs "$LINKDIR/lib$l.a" "$LINKDIR/placeholder.o"
    done
fi

export CUDAToolkit_ROOT=$ROOT CUDA_PATH=$ROOT CUDA_LIBRARY_PATH=$ROOT
export CUDACXX=$ROOT/bin/nvcc PATH=$ROOT/bin:$PATH
# llama-cpp-sys-2's build.rs passes CMAKE_* variables to CMake as -D options.
export CMAKE_CUDA_ARCHITECTURES=$ARCH CMAKE_BUILD_PARALLEL_LEVEL=$JOBS
# RUSTFLAGS replaces build.rustflags of .cargo/config.toml, so repeat target-cpu.
export RUSTFLAGS="-C target-cpu=native -L native=$LINKDIR -L native=$ROOT/lib \
-C link-arg=-lcublas -C link-arg=-lcublasLt"
say "nvcc: $("$CUDACXX" --version | tail -1)"
say "building: cargo build --release -p infer --features cuda --target-dir $TARGET_DIR"
say "CMAKE_CUDA_ARCHITECTURES=$ARCH CMAKE_BUILD_PARALLEL_LEVEL=$JOBS (nice -n 19)"

# 3. The build.
nice -n 19 cargo build --release -p infer --features cuda --target-dir "$TARGET_DIR" ||
    fail "cargo build"
BUILT=$(date +%s)

if [ "${GPU_BUNDLE:-0}" = 1 ]; then
    say "building the GPU checks: parity and ggml tests, bench example (cuda)"
    json=$TARGET_DIR/gpu-tests.json
    nice -n 19 cargo test --release --no-run --features models/cuda,ggml/cuda \
        -p models --test parity -p ggml --lib --target-dir "$TARGET_DIR" \
        --message-format=json > "$json" || fail "cargo test --no-run"
    nice -n 19 cargo build --release -p models --example bench --features models/cuda \
        --target-dir "$TARGET_DIR" || fail "cargo build --example bench"
    bundle=$TARGET_DIR/gpu-bundle
    rm -rf "$bundle" && mkdir -p "$bundle"
    cp "$BIN" "$TARGET_DIR/release/examples/bench" "$bundle/"
    python3 - "$json" "$bundle" <<'PY'
import json, shutil, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        name = {"parity": "parity-tests", "ggml": "ggml-tests"}.get(m["target"]["name"])
        if name:  # --lib also selects models' own unit tests: not needed there
            shutil.copy(m["executable"], f"{sys.argv[2]}/{name}")
PY
    strip "$bundle"/*
    tar -C "$TARGET_DIR" -cf - gpu-bundle | xz -T1 --lzma2=preset=6,dict=512MiB > "$bundle.tar.xz"
    say "packed $(ls "$bundle" | tr '\n' ' ')into $bundle.tar.xz ($(du -m "$bundle.tar.xz" | cut -f1) MiB)"
fi

# 4. The result.
[ -x "$BIN" ] || fail "no binary at $BIN"
nm "$BIN" | grep ' T ggml_backend_cuda_init$' > /dev/null || fail "$BIN lacks ggml_backend_cuda_init"
kernels=$(nm "$BIN" | grep -c ' fatbinData$' || true)
[ "$kernels" -gt 100 ] || fail "$BIN holds only $kernels CUDA fat binaries (one per .cu file)"
say "$BIN: ggml-cuda linked in, $kernels CUDA fat binaries"
export LD_LIBRARY_PATH=$ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ! ldconfig -p | grep 'libcuda.so.1 ' > /dev/null; then
    # No driver here: load the stub, so the binary starts and sees no GPU.
    mkdir -p "$NODRIVER"
    ln -sfn "$ROOT/lib/stubs/libcuda.so" "$NODRIVER/libcuda.so.1"
    LD_LIBRARY_PATH=$NODRIVER:$LD_LIBRARY_PATH
    say "no NVIDIA driver here: running with the stub libcuda.so.1 ($NODRIVER)"
fi
ldd "$BIN" | grep -E 'cuda|cublas' | sed 's/^/check-cuda-build:   /'
for l in libcublas.so.13 libcublasLt.so.13 libcuda.so.1; do
    ldd "$BIN" | grep "$l => /" > /dev/null || fail "$BIN: $l not found by ldd"
done
"$BIN" --version || fail "$BIN --version"

# A GPU run: must work where nvidia-smi sees a GPU; elsewhere, record what happens.
MODEL=${LLPIPE_MODELS_DIR:-$HOME/.cache/llpipe/models}/SmolLM2-135M-Instruct.Q4_1.gguf
gpu=no
nvidia-smi -L > /dev/null 2>&1 && gpu=yes
if [ -f "$MODEL" ]; then
    set +e
    out=$("$BIN" --model "$MODEL" --engine llama.cpp --gpu-layers 99 --temperature 0 \
        -n 8 --raw -p "The capital of France is" 2>&1)
    rc=$?
    set -e
    if [ "$gpu" = yes ]; then
        say "GPU run (infer --engine llama.cpp --gpu-layers 99): exit $rc"
    else
        say "no GPU here, so no GPU run was checked; with --gpu-layers 99 infer exited $rc:"
    fi
    echo "$out" | tail -n 5 | sed 's/^/check-cuda-build:   /'
    [ "$gpu" = no ] || [ "$rc" = 0 ] || fail "GPU run failed (exit $rc)"
else
    say "no $MODEL: GPU run skipped (run scripts/fetch-models.sh)"
fi

END=$(date +%s)
mins=$(((BUILT - START + 30) / 60))
[ "$gpu" = yes ] && ran="GPU run ok" || ran="no GPU, GPU run skipped"
echo "cuda build: ok (sm_${ARCH//;/,sm_}, CUDA $CUDA_SET wheels, cargo $mins min this run, $ran)"
