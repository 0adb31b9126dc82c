#!/usr/bin/env bash
# Runs every test: builds all binaries first (the cross-tool tests in tests/
# spawn them), then the whole workspace's tests, then format and lint checks.
# The real models must be in the cache (scripts/fetch-models.sh; .ci/run does it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-models.sh >/dev/null
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
