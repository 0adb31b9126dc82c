#!/usr/bin/env bash
# Benchmark as a user measures it: `infer` end to end against llama.cpp's own
# tools (llama-completion, llama-bench) built from the llama.cpp tree of the
# llama-cpp-python sdist with the same instruction sets (scripts/build-peers.sh).
#
#   bash scripts/bench-e2e.sh [ROUNDS] [THREADS] [all|smollm2|gemma3]
#
# Per model and round, in an order that alternates between rounds:
#   generation  infer -n 128 --ignore-eos (its eval rate, first token excluded
#               as llama.cpp excludes it) vs llama-completion -n 128 --ignore-eos
#               ("eval time … tokens per second"); prompt "Once upon a time",
#               greedy, raw (no chat template) on both sides
#   pp512       infer on a 512-token prompt (its prompt eval rate) vs
#               llama-bench -p 512 -n 0 -r 1 (avg_ts)
#   load        wall time of `-n 1` on a short prompt: start, load, the prompt,
#               one token, exit — for both programs
#   RSS         peak resident size of the generation runs (/usr/bin/time -v)
# Prints the median (min–max) of each over the rounds and the ratio of the
# medians, the machine, and the fraction of memory bandwidth each program's
# generation uses (weight bytes per token × tokens/s ÷ a plain read loop's
# GB/s on the same threads). Goals (issue 11): generation ≥ 1.10×, pp512 ≥
# 1.0×, load ≤ 0.5×, RSS ≤ 1.0×.
#   INFER_ARGS="--draft-max 0"  extra infer flags (e.g. to compare settings)
#   INFER_BIN=target/portable/release/infer   another infer build (the
#                               portable one: scripts/build-portable.sh)
#   INFER_BASE=/path/to/infer   a second infer build run in the same rounds,
#                               alternating with the others (a "before" build,
#                               to show a change does not regress): a column
#                               "base" and the ratio infer / base
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
THREADS=${2:-2}
WHICH=${3:-all}
mapfile -t MODELS < <(bash scripts/fetch-models.sh)
case $WHICH in
  all) ;;
  smollm2) MODELS=("${MODELS[0]}") ;;
  gemma3) MODELS=("${MODELS[1]}") ;;
  *) echo "bench-e2e: error: model must be all, smollm2 or gemma3, not $WHICH" >&2; exit 2 ;;
esac
PEERS=$(bash scripts/build-peers.sh)
if [ -n "${INFER_BIN:-}" ]; then
  INFER=$INFER_BIN
else
  cargo build -q --release -p infer
  INFER=target/release/infer
fi
[ -x /usr/bin/time ] || { echo "bench-e2e: error: /usr/bin/time missing (apt-get install time)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O3 -march=native -pthread scripts/membw.c -o "$work/membw"
export LD_LIBRARY_PATH="$PEERS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# A prompt of at most 512 tokens (BOS included) for each model, as many whole
# words as fit: llama-tokenize counts.
long_text() {
  local s="The quick brown fox jumps over the lazy dog while the farmer counts his sheep in the valley below. "
  for _ in $(seq 64); do printf '%s' "$s"; done
}
prompt512() { # model -> file with 512 tokens (BOS included)
  local model=$1 out=$2
  long_text >"$work/long.txt"
  python3 - "$work/long.txt" "$out" "$model" "$PEERS/llama-tokenize" <<'PY'
import sys, subprocess, ast
text, out, model, tok = sys.argv[1:]
words = open(text).read().split(" ")
def count(t):
    r = subprocess.run([tok, "-m", model, "-p", t, "--ids", "--log-disable"],
                       capture_output=True, text=True, check=True)
    return len(ast.literal_eval(r.stdout.strip().splitlines()[-1]))
lo, hi = 1, len(words)
while lo < hi:  # the most words whose tokens (with BOS) are <= 512
    mid = (lo + hi + 1) // 2
    if count(" ".join(words[:mid])) <= 512: lo = mid
    else: hi = mid - 1
open(out, "w").write(" ".join(words[:lo]))
print(count(" ".join(words[:lo])))
PY
}

run_round() { # model round-index results-file
  local m=$1 r=$2 res=$3 order
  if [ -n "${INFER_BASE:-}" ]; then
    case $((r % 3)) in
      0) order="infer base peer" ;; 1) order="base peer infer" ;; *) order="peer infer base" ;;
    esac
  elif [ $((r % 2)) -eq 0 ]; then order="infer peer"; else order="peer infer"; fi
  for who in $order; do
    if [ "$who" != peer ]; then
      local INFER=$INFER
      [ "$who" = base ] && INFER=$INFER_BASE
      # generation (and RSS)
      /usr/bin/time -v -o "$work/time" "$INFER" --model "$m" --raw -p "Once upon a time" -n 128 \
        --ignore-eos --temperature 0 --threads "$THREADS" --json ${INFER_ARGS:-} >"$work/out" 2>"$work/err" ||
        { cat "$work/err" >&2; exit 1; }
      python3 - "$work/out" "$who" >>"$res" <<'PY'
import json, sys
d = json.loads(open(sys.argv[1]).read().splitlines()[-1])["data"]
# eval_duration covers the decodes after the first token (sampled from the
# prompt's pass): eval_count - 1 of them, as llama.cpp counts its runs.
print(sys.argv[2], "tg", (d["eval_count"] - 1) / (d["eval_duration"] / 1e9))
PY
      echo "$who rss $(awk -F': ' '/Maximum resident/ {print $2}' "$work/time")" >>"$res"
      # pp512
      "$INFER" --model "$m" --raw --prompt-file "$work/p512.txt" -n 1 --temperature 0 \
        --threads "$THREADS" --json ${INFER_ARGS:-} >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
      python3 -c 'import json,sys; d=json.loads(open(sys.argv[1]).read().splitlines()[-1])["data"]; print(sys.argv[2], "pp", d["prompt_eval_count"]/(d["prompt_eval_duration"]/1e9))' "$work/out" "$who" >>"$res"
      # load to first token
      local t0 t1
      t0=$(date +%s%N)
      "$INFER" --model "$m" --raw -p "Once upon a time" -n 1 --temperature 0 --threads "$THREADS" \
        ${INFER_ARGS:-} >/dev/null 2>&1
      t1=$(date +%s%N)
      echo "$who load $(((t1 - t0) / 1000000))" >>"$res"
    else
      /usr/bin/time -v -o "$work/time" "$PEERS/llama-completion" -m "$m" -p "Once upon a time" -n 128 \
        -t "$THREADS" --temp 0 --ignore-eos -no-cnv >"$work/out" 2>"$work/err" </dev/null ||
        { tail -5 "$work/err" >&2; exit 1; }
      awk '/eval time/ && !/prompt eval/ {for (i = 1; i <= NF; i++) if ($i == "tokens" && $(i+1) == "per") print "peer tg", $(i-1)}' "$work/err" >>"$res"
      echo "peer rss $(awk -F': ' '/Maximum resident/ {print $2}' "$work/time")" >>"$res"
      "$PEERS/llama-bench" -m "$m" -t "$THREADS" -p 512 -n 0 -r 1 -o json >"$work/bench.json" 2>/dev/null
      python3 -c 'import json,sys; print("peer pp", json.load(open(sys.argv[1]))[0]["avg_ts"])' "$work/bench.json" >>"$res"
      t0=$(date +%s%N)
      "$PEERS/llama-completion" -m "$m" -p "Once upon a time" -n 1 -t "$THREADS" --temp 0 -no-cnv \
        </dev/null >/dev/null 2>&1
      t1=$(date +%s%N)
      echo "peer load $(((t1 - t0) / 1000000))" >>"$res"
    fi
  done
}

BW=$("$work/membw" "$THREADS")
CPU=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
echo "machine: $CPU, $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $THREADS threads; read loop $BW GB/s"
echo "peers: $PEERS (llama.cpp 0c1e570; flash attention: its default, auto = on for CPU)"
echo "infer: $INFER ${INFER_ARGS:-} (flash attention: its default)"
[ -z "${INFER_BASE:-}" ] || echo "base: $INFER_BASE ${INFER_ARGS:-}"
for m in "${MODELS[@]}"; do
  n=$(prompt512 "$m" "$work/p512.txt")
  res="$work/$(basename "$m").res"
  : >"$res"
  # One untimed round first: page cache and huge pages warm for both.
  run_round "$m" 0 /dev/null
  for r in $(seq "$ROUNDS"); do
    run_round "$m" "$r" "$res"
    echo "  $(basename "$m"): round $r/$ROUNDS" >&2
  done
  python3 - "$res" "$m" "$BW" "$n" "$ROUNDS" <<'PY'
import sys, os, statistics as st
res, model, bw, n512, rounds = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
v = {}
for line in open(res):
    who, what, x = line.split()
    v.setdefault((who, what), []).append(float(x))
def cell(xs, fmt):
    return f"{fmt.format(st.median(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"
rows = [("generation t/s (128 tokens)", "tg", "{:.1f}", "≥ 1.10"),
        (f"pp512 t/s ({n512}-token prompt)", "pp", "{:.1f}", "≥ 1.0"),
        ("load to first token ms", "load", "{:.0f}", "≤ 0.5"),
        ("peak RSS KiB", "rss", "{:.0f}", "≤ 1.0")]
print(f"\n{os.path.basename(model)}: median (min–max) of {rounds} alternating rounds")
print("| | infer | llama.cpp | ratio | goal |\n|---|---|---|---|---|")
for name, key, fmt, goal in rows:
    a, b = v[("infer", key)], v[("peer", key)]
    print(f"| {name} | {cell(a, fmt)} | {cell(b, fmt)} | {st.median(a) / st.median(b):.2f} | {goal} |")
if ("base", "tg") in v:
    print("\n| | infer | base | infer / base |\n|---|---|---|---|")
    for name, key, fmt, _ in rows:
        a, b = v[("infer", key)], v[("base", key)]
        print(f"| {name} | {cell(a, fmt)} | {cell(b, fmt)} | {st.median(a) / st.median(b):.2f} |")
size = os.path.getsize(model)
for who in ("infer", "peer"):
    tg = st.median(v[(who, "tg")])
    print(f"{who}: {size / 1e9 * tg:.1f} GB/s of weights read while generating = {size / 1e9 * tg / bw:.0%} of the read loop's {bw} GB/s")
PY
done
