#!/usr/bin/env bash
# A build for copying between x86-64 machines: x86-64-v3 (AVX2, FMA, F16C,
# BMI2; every x86-64 server CPU since 2015: Intel Haswell, AMD Excavator/Zen)
# instead of this machine's own instruction set. llama-cpp-sys-2 sees a
# target-cpu other than native and builds ggml with GGML_NATIVE=OFF,
# -march=x86-64-v3 and the matching GGML_AVX2/FMA/F16C/BMI2 options. On a CPU
# without them the tools exit 2 naming what is missing (libs/cli/src/cpu.rs).
#
#   bash scripts/build-portable.sh [LEVEL]   # LEVEL: x86-64-v3 (default) or x86-64-v2
# Binaries: target/portable/release/. The speed it costs: README "Portable build".
set -euo pipefail
cd "$(dirname "$0")/.."
level=${1:-x86-64-v3}
case $level in
  x86-64-v2 | x86-64-v3 | x86-64-v4) ;;
  *) echo "build-portable: error: level must be x86-64-v2, -v3 or -v4, not $level" >&2; exit 2 ;;
esac
bash scripts/setup.sh build
# RUSTFLAGS replaces .cargo/config.toml's target-cpu=native; a target dir of
# its own keeps the native build's ggml.
RUSTFLAGS="-C target-cpu=$level" cargo build --release --workspace --bins \
  --target-dir "target/portable-$level"
mkdir -p target/portable
ln -sfn "../portable-$level/release" target/portable/release
echo "target/portable/release (built for $level)"
