"""Drives `serve` with the official Python clients (ollama 0.6.3, openai
3.51.0). Usage: clients.py HOST:PORT (a store holding smollm2:135m).
Asserts; exits non-zero on the first failure."""

import sys

import ollama
import openai

host = sys.argv[1]
MODEL = "smollm2:135m"
OPTS = {"temperature": 0, "num_predict": 6}


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


c = ollama.Client(host=f"http://{host}")

# list, show
names = [m.model for m in c.list().models]
check(MODEL in names, f"list has {MODEL}: {names}")
info = c.show(MODEL)
check(info.modelinfo is not None and info.modelinfo.get("general.architecture") == "llama",
      "show has model_info")
check(info.details.family == "llama", "show details family")

# generate, not streaming and streaming
r = c.generate(model=MODEL, prompt="Why is the sky blue?", options=OPTS)
check(r.done and r.done_reason == "length" and r.eval_count == 6 and r.response,
      f"generate: {r.response!r}")
parts = list(c.generate(model=MODEL, prompt="Why is the sky blue?", options=OPTS, stream=True))
check(parts[-1].done and "".join(p.response for p in parts) == r.response,
      "streamed generate equals the whole")
check(parts[-1].total_duration and parts[-1].eval_duration, "final metrics")

# chat, not streaming and streaming
msgs = [{"role": "user", "content": "Say hello."}]
r = c.chat(model=MODEL, messages=msgs, options=OPTS)
check(r.message.role == "assistant" and r.message.content and r.done, f"chat: {r.message.content!r}")
parts = list(c.chat(model=MODEL, messages=msgs, options=OPTS, stream=True))
check("".join(p.message.content for p in parts) == r.message.content, "streamed chat equals the whole")

# embed: unit vectors, one per input; the legacy route agrees
def norm(v):
    return sum(x * x for x in v) ** 0.5


e = c.embed(model=MODEL, input=["Why is the sky blue?", "Bananas are yellow."])
check(len(e.embeddings) == 2 and len(e.embeddings[0]) == 576, "embed: two vectors of n_embd")
check(all(abs(norm(v) - 1) < 1e-4 for v in e.embeddings), "embed: unit length")
check(e.embeddings[0] != e.embeddings[1], "embed: different texts, different vectors")
legacy = c.embeddings(model=MODEL, prompt="Why is the sky blue?").embedding
check(max(abs(a - b) for a, b in zip(legacy, e.embeddings[0])) < 1e-6, "legacy embeddings agree")
e = c.embed(model=MODEL, input="Why is the sky blue?", dimensions=64)
check(len(e.embeddings[0]) == 64 and abs(norm(e.embeddings[0]) - 1) < 1e-4, "embed: dimensions")

# ps
ps = c.ps()
check([m.model for m in ps.models] == [MODEL], f"ps: {ps.models}")

# copy, delete, errors
c.copy(MODEL, "copied:v1")
check("copied:v1" in [m.model for m in c.list().models], "copy")
c.delete("copied:v1")
check("copied:v1" not in [m.model for m in c.list().models], "delete")
try:
    c.generate(model="nope", prompt="x")
    check(False, "unknown model raises")
except ollama.ResponseError as e:
    check(e.status_code == 404 and "not found" in e.error, f"unknown model: {e.status_code} {e.error}")

# OpenAI
o = openai.OpenAI(base_url=f"http://{host}/v1", api_key="x")
r = o.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0)
whole = r.choices[0].message.content
check(whole and r.usage.completion_tokens == 6 and r.choices[0].finish_reason == "length",
      f"openai chat: {whole!r}")
chunks = list(o.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0,
                                        stream=True, stream_options={"include_usage": True}))
text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
check(text == whole, "openai streamed chat equals the whole")
check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6, "include_usage chunk")
r = o.completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0)
check(r.choices[0].text and r.choices[0].finish_reason == "length", f"openai completion: {r.choices[0].text!r}")
emb = o.embeddings.create(model=MODEL, input=["Why is the sky blue?", "Bananas are yellow."])
check(len(emb.data) == 2 and abs(norm(emb.data[0].embedding) - 1) < 1e-4, "openai embeddings (base64)")
flt = o.embeddings.create(model=MODEL, input="Why is the sky blue?", encoding_format="float")
check(max(abs(a - b) for a, b in zip(flt.data[0].embedding, emb.data[0].embedding)) < 1e-6,
      "openai embeddings: float equals base64")
check(flt.usage.prompt_tokens > 0, "openai embeddings usage")
ids = [m.id for m in o.models.list()]
check(MODEL in ids, f"openai models: {ids}")
check(o.models.retrieve(MODEL).id == MODEL, "openai model")
try:
    o.chat.completions.create(model="nope", messages=msgs)
    check(False, "openai unknown model raises")
except openai.NotFoundError:
    check(True, "openai unknown model is NotFoundError")

print("all client checks passed")
