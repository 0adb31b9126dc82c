#!/usr/bin/env bash
# Runs every test: format and lint checks, then builds all binaries (the
# cross-tool tests in tests/ spawn them), then the whole workspace's tests.
# Installs missing Debian packages first (as root; else names the apt line)
# and fetches the real models into the cache if missing.
# Ends with one summary line: "tests: N passed, N failed", where a test
# binary that crashed (a signal, or an exit without its result line) counts
# as one failure; the exit status is non-zero when cargo test failed or
# anything failed, whatever the counts say.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
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
# A binary killed by a signal (SIGILL, SIGSEGV, SIGABRT) prints no result line.
crashed=$(grep -E "process didn't exit successfully: .*\(signal: " "$log" || true)
if [ -n "$crashed" ]; then
  echo "$crashed" | sed -E 's/^.*process didn.t exit successfully: `?([^ `]*).*\((signal: [^)]*)\).*$/crashed: \1 (\2)/'
  failed=$((failed + $(echo "$crashed" | wc -l)))
fi
[ "$failed" -gt 0 ] && [ "$status" -eq 0 ] && status=1
echo "tests: $passed passed, $failed failed"
exit "$status"
