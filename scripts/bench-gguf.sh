#!/usr/bin/env bash
# Benchmarks gguf-inspect against the Python `gguf` package's gguf-dump on
# Gemma3-270M (262,144-token vocabulary), in the same run, and prints both
# times and the ratio. Also prints the time of gguf::parse alone.
#
#   LLPIPE_MODELS_DIR  model cache (default ~/.cache/llpipe/models)
#   RUNS               hyperfine runs for gguf-inspect (default 30)
#   PEER_RUNS          runs for gguf-dump (default 2; it takes seconds each)
#
# gguf-dump comes from `pip install gguf` into target/bench-venv when it is
# not on PATH already. Needs hyperfine (falls back to a timing loop).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${LLPIPE_MODELS_DIR:-$HOME/.cache/llpipe/models}
model="$dir/gemma-3-270m-q4_k_m.gguf"
runs=${RUNS:-30}
[ -f "$model" ] || { echo "missing $model: run scripts/fetch-models.sh" >&2; exit 2; }

cargo build --release -p gguf-inspect >&2
cargo build --release -p gguf --example parse_time >&2
ours=target/release/gguf-inspect

dump=$(command -v gguf-dump || true)
if [ -z "$dump" ]; then
  venv=target/bench-venv
  if [ ! -x "$venv/bin/gguf-dump" ]; then
    echo "installing the python gguf package into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check gguf >&2
  fi
  dump="$venv/bin/gguf-dump"
fi
peer_version=$("$(dirname "$dump")/python" -c 'import importlib.metadata as m; print(m.version("gguf"))' 2>/dev/null || echo "?")

echo "machine: $(nproc) cores, $(uname -m); file: $(basename "$model") ($(stat -c %s "$model") bytes)"
echo "== gguf::parse alone (in memory, release) =="
target/release/examples/parse_time "$model" 50

# mean seconds of a command, by hyperfine or a plain loop
mean_s() { # runs warmup cmd...
  local n=$1 w=$2; shift 2
  if command -v hyperfine >/dev/null; then
    local json; json=$(mktemp)
    hyperfine --style none --runs "$n" --warmup "$w" --export-json "$json" "$*" >&2
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["mean"])' "$json"
    rm -f "$json"
  else
    local t0 t1; for _ in $(seq "$w"); do "$@" >/dev/null; done
    t0=$(date +%s.%N); for _ in $(seq "$n"); do "$@" >/dev/null; done; t1=$(date +%s.%N)
    python3 -c "print(($t1-$t0)/$n)"
  fi
}

echo "== whole process: gguf-inspect --tensors (JSON to /dev/null; gguf-dump lists tensors too) =="
ours_s=$(mean_s "$runs" 3 "$ours --tensors $model > /dev/null")
echo "== whole process: gguf-dump $peer_version (python gguf package) =="
peer_s=$(mean_s "${PEER_RUNS:-2}" 0 "$dump $model > /dev/null")

python3 - "$ours_s" "$peer_s" <<'PY'
import sys
ours, peer = float(sys.argv[1]), float(sys.argv[2])
print(f"gguf-inspect: {ours*1e3:.1f} ms   gguf-dump: {peer*1e3:.0f} ms   ratio: {peer/ours:.0f}x faster")
PY
