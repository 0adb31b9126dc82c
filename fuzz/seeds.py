#!/usr/bin/env python3
"""Writes small GGUF seed files for the fuzzer into fuzz/seeds/."""
import os, struct

here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "seeds")
os.makedirs(out, exist_ok=True)

def s(x): b = x.encode(); return struct.pack("<Q", len(b)) + b
def kv(key, ty, payload): return s(key) + struct.pack("<I", ty) + payload
def arr(elem, items, enc): return struct.pack("<IQ", elem, len(items)) + b"".join(enc(i) for i in items)

def model(version=3, align=32, extra=()):
    kvs = [
        kv("general.architecture", 8, s("llama")),
        kv("general.file_type", 4, struct.pack("<I", 2)),
        kv("llama.context_length", 4, struct.pack("<I", 128)),
        kv("llama.embedding_length", 4, struct.pack("<I", 32)),
        kv("tokenizer.ggml.tokens", 9, arr(8, ["<s>", "</s>", "\u2581a", "b"], s)),
        kv("tokenizer.ggml.scores", 9, arr(6, [0.0, 0.0, -1.0, -2.0], lambda f: struct.pack("<f", f))),
        kv("tokenizer.ggml.token_type", 9, arr(5, [3, 3, 1, 1], lambda i: struct.pack("<i", i))),
        kv("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 1)),
        kv("x.nested", 9, struct.pack("<IQ", 9, 1) + arr(5, [1, 2], lambda i: struct.pack("<i", i))),
        *extra,
    ]
    tensors = [("token_embd.weight", [32, 4], 2, bytes(range(72))), ("output_norm.weight", [32], 0, b"\0" * 128)]
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs)
    infos, data, off = b"", b"", 0
    for name, dims, ty, payload in tensors:
        infos += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ty, off)
        data += payload + b"\0" * (-len(payload) % align)
        off = len(data)
    body = head + infos
    return body + b"\0" * (-len(body) % align) + data

seeds = {
    "valid-v3": model(),
    "valid-v2": model(version=2),
    "align-64": model(align=64, extra=[kv("general.alignment", 4, struct.pack("<I", 64))]),
    "empty-header": b"GGUF" + struct.pack("<IQQ", 3, 0, 0),
    "huge-kv-count": b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 63),
    "string-len-max": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**64 - 1) + b"k" * 16,
}
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {out}")
