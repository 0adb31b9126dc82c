#!/usr/bin/env bash
# Runs every test: format and lint checks, then builds all binaries (the
# cross-tool tests in tests/ spawn them), then the whole workspace's tests.
# The real models must be in the cache (fetched here if missing).
# Ends with one summary line: "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-models.sh >/dev/null
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# The GPU tests (gpu_*) pass without running when there is no GPU backend or
# device: say which they did (see scripts/gpu-check.sh for a GPU machine).
# --workspace keeps the feature set of the run above (no rebuild of ggml).
cargo test --workspace -q gpu_ -- --nocapture --test-threads=1 2>&1 |
    grep -E '^gpu (ggml|parity): ' | sort -u || true
passed=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed' "$log" | awk '{s += $6} END {print s + 0}')
echo "tests: $passed passed, $failed failed"
exit "$status"
