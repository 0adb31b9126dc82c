#!/usr/bin/env bash
# Builds llama.cpp's own tools — the programs a user would pick instead of
# `infer` — from the llama.cpp tree inside the llama-cpp-python 0.3.36 sdist on
# PyPI (the crate we vendor ggml from ships no tools/ sources), with the same
# instruction sets as our build: -march=native without AMX (see
# .cargo/config.toml), or PORTABLE=1 for x86-64-v3 like scripts/build-portable.sh.
# Cached: prints the folder holding the binaries (and their shared libraries;
# run them with LD_LIBRARY_PATH set to it) and does nothing when it is built.
#
#   LLPIPE_PEERS_DIR  cache folder (default ~/.cache/llpipe/peers)
#   JOBS              parallel compile jobs (default: nproc)
set -euo pipefail
VERSION=0.3.36
TARGETS=(llama-bench llama-completion llama-server llama-tokenize)
root=${LLPIPE_PEERS_DIR:-$HOME/.cache/llpipe/peers}
amx=(-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
if [ "${PORTABLE:-0}" = 1 ]; then
  flavour=x86-64-v3
  flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
         -DGGML_BMI2=ON -DCMAKE_C_FLAGS="-march=x86-64-v3" -DCMAKE_CXX_FLAGS="-march=x86-64-v3")
else
  flavour=native
  flags=(-DGGML_NATIVE=ON -DCMAKE_C_FLAGS="${amx[*]}" -DCMAKE_CXX_FLAGS="${amx[*]}")
fi
out="$root/llama-cpp-python-$VERSION-$flavour"
bin="$out/build/bin"
if [ -x "$bin/llama-completion" ] && [ -x "$bin/llama-bench" ] && [ -f "$out/.done" ]; then
  echo "$bin"
  exit 0
fi
for tool in cmake c++ python3; do
  command -v "$tool" >/dev/null || { echo "build-peers: error: $tool not found (apt-get install cmake g++ python3-pip)" >&2; exit 2; }
done
mkdir -p "$root"
src="$root/llama-cpp-python-$VERSION"
if [ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]; then
  dl=$(mktemp -d "$root/.dl.XXXXXX")
  trap 'rm -rf "$dl"' EXIT
  echo "build-peers: downloading the llama-cpp-python $VERSION sdist from PyPI" >&2
  python3 -m pip download --quiet --no-deps --no-binary :all: --disable-pip-version-check \
    --dest "$dl" "llama-cpp-python==$VERSION" >&2
  tar -xzf "$dl/llama_cpp_python-$VERSION.tar.gz" -C "$dl"
  rm -rf "$src"
  mv "$dl/llama_cpp_python-$VERSION" "$src"
fi
echo "build-peers: building ${TARGETS[*]} ($flavour) into $bin" >&2
cmake -S "$src/vendor/llama.cpp" -B "$out/build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
  -DGGML_AMX_BF16=OFF "${flags[@]}" >"$out.cmake.log" 2>&1 ||
  { tail -20 "$out.cmake.log" >&2; exit 2; }
cmake --build "$out/build" -j "${JOBS:-$(nproc)}" --target "${TARGETS[@]}" >"$out.build.log" 2>&1 ||
  { tail -30 "$out.build.log" >&2; exit 2; }
touch "$out/.done"
echo "$bin"
