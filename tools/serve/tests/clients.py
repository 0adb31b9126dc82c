"""Drives `serve` with the official Python clients (ollama 0.6.3, openai
3.51.0). Usage: clients.py HOST:PORT GGUF [REGISTRY_HOST:PORT] (a store
holding smollm2:135m, made from the file GGUF; with a plain-http registry,
push and pull go through it too). Asserts; exits non-zero on the first
failure."""

import sys

import ollama
import openai

host = sys.argv[1]
gguf = sys.argv[2]
registry = sys.argv[3] if len(sys.argv) > 3 else None
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

# logprobs: one per token, the chosen one the likeliest (greedy)
r = c.generate(model=MODEL, prompt="Why is the sky blue?", options=OPTS, logprobs=True, top_logprobs=2)
check(len(r.logprobs) == r.eval_count and all(lp.logprob <= 0 for lp in r.logprobs),
      "generate logprobs: one per token")
check(all(len(lp.top_logprobs) == 2 and lp.top_logprobs[0].token == lp.token for lp in r.logprobs),
      "generate top_logprobs: the chosen token first")
check("".join(lp.token for lp in r.logprobs) == r.response, "logprob tokens spell the response")
parts = list(c.chat(model=MODEL, messages=msgs, options=OPTS, stream=True, logprobs=True))
check(sum(len(p.logprobs or []) for p in parts) == parts[-1].eval_count, "streamed chat logprobs")

# capabilities: thinking and tools are refused, in Ollama's words
check(c.show(MODEL).capabilities == ["completion"], "show capabilities")
try:
    c.chat(model=MODEL, messages=msgs, think=True)
    check(False, "think on a model without thinking raises")
except ollama.ResponseError as e:
    check(e.status_code == 400 and e.error == f'"{MODEL}" does not support thinking', f"think: {e.error}")
check(c.chat(model=MODEL, messages=msgs, think=False, options=OPTS).done, "think=False is accepted")
weather = {"type": "function", "function": {"name": "get_weather", "description": "the weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
try:
    c.chat(model=MODEL, messages=msgs, tools=[weather])
    check(False, "tools on a model without them raise")
except ollama.ResponseError as e:
    check(e.status_code == 400 and e.error.endswith("does not support tools"), f"tools: {e.error}")
# a template with tools: a call (forced by a schema) comes back parsed
c.create(model="tooly:py", from_=MODEL, template="""{{- if .Tools }}<|im_start|>system
Tools: {{ range .Tools }}{{ .Function.Name }} {{ end }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .ToolCalls }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}{{ end }}
{{- else }}{{ .Content }}{{ end }}<|im_end|>
{{ end }}<|im_start|>assistant
""")
call = {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
        "properties": {"name": {"type": "string", "enum": ["get_weather"]},
                       "arguments": {"type": "object", "additionalProperties": False, "required": ["city"],
                                     "properties": {"city": {"type": "string", "maxLength": 12}}}}}
ask = [{"role": "user", "content": "What is the weather in Paris?"}]
r = c.chat(model="tooly:py", messages=ask, tools=[weather], format=call,
           options={"temperature": 0, "num_predict": 40})
calls = r.message.tool_calls or []
check(len(calls) == 1 and calls[0].function.name == "get_weather" and "city" in calls[0].function.arguments,
      f"ollama tool call: {calls}")
answer = ask + [r.message, {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"}]
check(c.chat(model="tooly:py", messages=answer, tools=[weather], options=OPTS).done, "a tool result renders")
c.delete("tooly:py")

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

# create: from a model with a new system prompt, and from an uploaded GGUF
r = c.create(model="brief:v1", from_=MODEL, system="Answer in one word.")
check(r.status == "success", f"create from a model: {r.status}")
check('SYSTEM """Answer in one word."""' in c.show("brief:v1").modelfile, "created model has the new system")
digest = c.create_blob(gguf)
parts = list(c.create(model="fromfile:v1", files={"smol.gguf": digest},
                      template="{{ .Prompt }}", parameters={"num_predict": 2}, stream=True))
check(parts[-1].status == "success" and any(p.status == f"using existing layer {digest}" for p in parts),
      f"create from files: {[p.status for p in parts]}")
info = c.show("fromfile:v1")
check(info.template == "{{ .Prompt }}" and "num_predict" in info.parameters, "created model shows its layers")
r = c.generate(model="fromfile:v1", prompt="The sky is")
check(r.done and r.eval_count <= 2, f"created model generates: {r.response!r}")
try:
    c.create(model="bad", files={"x.gguf": "sha256:" + "0" * 64})
    check(False, "create with a missing blob raises")
except ollama.ResponseError as e:
    check(e.status_code == 400 and "not found" in e.error, f"missing blob: {e.status_code} {e.error}")
for m in ("brief:v1", "fromfile:v1"):
    c.delete(m)

# push and pull through a local registry
if registry:
    remote = f"{registry}/library/smol:py"
    c.copy(MODEL, remote)
    parts = list(c.push(remote, insecure=True, stream=True))
    check(parts[0].status == "retrieving manifest" and parts[-1].status == "success", "push streams")
    c.delete(remote)
    parts = list(c.pull(remote, insecure=True, stream=True))
    check(parts[0].status == "pulling manifest" and parts[-1].status == "success", "pull streams")
    check(any(p.total and p.completed == p.total for p in parts), "pull reports total and completed")
    check(c.pull(remote, insecure=True).status == "success", "pull, not streaming")
    r = c.generate(model=remote, prompt="The sky is", options=OPTS)
    check(r.done and r.eval_count == 6, "the pulled model generates")
    try:
        c.pull(f"{registry}/library/nope:x", insecure=True)
        check(False, "pull of an unknown model raises")
    except ollama.ResponseError as e:
        check("file does not exist" in e.error, f"pull unknown: {e.error}")
    c.delete(remote)

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
r = o.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0,
                              logprobs=True, top_logprobs=2)
lps = r.choices[0].logprobs.content
check(len(lps) == 6 and all(len(t.top_logprobs) == 2 for t in lps), "openai chat logprobs")
try:
    o.chat.completions.create(model=MODEL, messages=msgs, reasoning_effort="high")
    check(False, "openai reasoning on a model without thinking raises")
except openai.BadRequestError as e:
    check("does not support thinking" in str(e), "openai reasoning_effort is refused")
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
