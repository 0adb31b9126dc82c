"""Driver of scripts/bench-serve.sh: our `serve` against llama-server over HTTP.

Both servers are already running (ports in argv). Per round, in an order
that alternates between rounds:
  aggregate  4 streaming greedy requests at once, 128 tokens each, raw
             prompts unique to the round (no cached prefix on either side);
             generated tokens of all 4 over the wall time from the first
             request sent to the last stream's end
  ttft       one streaming request alone, a ~200-token prompt unique to the
             round: time from sending it to its first generated text
Prints median (min-max) of each over the rounds, and ratios of medians.
Standard library only.
"""

import json
import statistics
import sys
import threading
import time
import urllib.request

OURS, PEER, ROUNDS, N_GEN = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
PLACES = ["a small village", "the mountains", "a busy city", "the old forest", "a quiet harbor",
          "the desert", "a distant island", "the royal castle", "a snowy valley", "the river delta",
          "a hidden cave", "the northern plains", "a floating market", "the lighthouse", "a farm",
          "the space station", "a library", "the jungle", "a train station", "the moon base"]
WORDS = ["red", "blue", "green", "gold", "silver", "purple", "orange", "white", "black", "brown",
         "pink", "grey", "amber", "violet", "teal", "crimson", "ivory", "olive", "navy", "coral"]


def stream(port, peer, prompt, n):
    """Sends one streaming request; (tokens generated, t_first_text, t_end)."""
    if peer:
        url = f"http://127.0.0.1:{port}/completion"
        body = {"prompt": prompt, "n_predict": n, "temperature": 0, "stream": True,
                "ignore_eos": True, "cache_prompt": False}
    else:
        url = f"http://127.0.0.1:{port}/api/generate"
        body = {"model": "smollm2:135m", "prompt": prompt, "raw": True, "stream": True,
                "options": {"temperature": 0, "num_predict": n}}
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    first, tokens = None, 0
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode().strip()
            if peer:
                if not line.startswith("data: "):
                    continue
                v = json.loads(line[6:])
                if v.get("content") and first is None:
                    first = time.perf_counter()
                if v.get("stop"):
                    tokens = v.get("tokens_predicted", v.get("timings", {}).get("predicted_n", 0))
                    break
            else:
                if not line:
                    continue
                v = json.loads(line)
                if "error" in v:
                    raise RuntimeError(v["error"])
                if v.get("response") and first is None:
                    first = time.perf_counter()
                if v.get("done"):
                    tokens = v["eval_count"]
                    break
    return tokens, first, time.perf_counter()


def aggregate(port, peer, rnd):
    prompts = [f"Once upon a time in {PLACES[(rnd * 4 + i) % len(PLACES)]}, a {WORDS[rnd % len(WORDS)]}"
               for i in range(4)]
    out = [None] * 4

    def run(i):
        out[i] = stream(port, peer, prompts[i], N_GEN)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = max(o[2] for o in out) - t0
    return sum(o[0] for o in out) / wall, sum(o[0] for o in out)


def ttft(port, peer, rnd):
    text = " ".join(f"The {WORDS[(rnd + i) % len(WORDS)]} bird flew over {PLACES[(rnd + i) % len(PLACES)]}."
                    for i in range(20))
    t0 = time.perf_counter()
    _, first, _ = stream(port, peer, f"{rnd}. {text}", 4)
    return (first - t0) * 1000


def fmt(xs):
    return f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"


def main():
    for peer, port in ((False, OURS), (True, PEER)):  # warm up: load, first graphs
        aggregate(port, peer, 99)
    agg = {False: [], True: []}
    toks = {False: [], True: []}
    tt = {False: [], True: []}
    for rnd in range(ROUNDS):
        order = (False, True) if rnd % 2 == 0 else (True, False)
        for peer in order:
            port = PEER if peer else OURS
            rate, n = aggregate(port, peer, rnd)
            agg[peer].append(rate)
            toks[peer].append(n)
            tt[peer].append(ttft(port, peer, rnd))
        print(f"round {rnd + 1}: serve {agg[False][-1]:.1f} t/s, ttft {tt[False][-1]:.0f} ms; "
              f"llama-server {agg[True][-1]:.1f} t/s, ttft {tt[True][-1]:.0f} ms", file=sys.stderr)
    ma, pa = statistics.median(agg[False]), statistics.median(agg[True])
    mt, pt = statistics.median(tt[False]), statistics.median(tt[True])
    print(f"| 4 parallel streams, {N_GEN} tokens each | serve | llama-server -np 4 | ratio |")
    print("|---|---|---|---|")
    print(f"| aggregate t/s | {fmt(agg[False])} | {fmt(agg[True])} | {ma / pa:.2f} |")
    print(f"| time to first token, one stream, ms | {fmt(tt[False])} | {fmt(tt[True])} | {mt / pt:.2f} |")
    print(f"| tokens generated per round (median) | {statistics.median(toks[False]):.0f} | "
          f"{statistics.median(toks[True]):.0f} | |")


main()
