#!/usr/bin/env python3
"""Write the small seed corpora in tests/fuzz/corpora/ (committed; re-run to regenerate).
safetensors: tiny valid files (every dtype, 0-d, empty, metadata) and near-miss invalid ones.
config: the fixtures' config.json files. jobspec: a few job specs from the unit tests."""
import json, os, shutil, struct

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))


def st_image(header, data=b"", hl=None, pad=True):
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h) if hl is None else hl) + h + data


def ent(dt, shape, b, e):
    return {"dtype": dt, "shape": shape, "data_offsets": [b, e]}


def write(dirname, name, blob):
    d = os.path.join(here, "corpora", dirname)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(blob)


seeds = {
    "valid-empty": st_image({}),
    "valid-meta": st_image({"__metadata__": {"format": "pt"}, "w": ent("F32", [2, 2], 0, 16)}, bytes(range(16))),
    "valid-mixed": st_image({"i": ent("I64", [1], 0, 8), "f": ent("F32", [1], 8, 12), "b": ent("BF16", [2], 12, 16),
                             "h": ent("F16", [1], 16, 18), "s": ent("I16", [1], 18, 20), "u": ent("U8", [1], 20, 21),
                             "c": ent("I8", [1], 21, 22), "t": ent("BOOL", [1], 22, 23), "d": ent("F64", [], 23, 31),
                             "n": ent("I32", [0, 3], 31, 31)}, bytes(31)),
    "valid-scalar": st_image({"x": ent("F64", [], 0, 8)}, struct.pack("<d", 1.5)),
    "bad-overlap": st_image({"a": ent("U8", [8], 0, 8), "b": ent("U8", [8], 4, 12)}, bytes(12)),
    "bad-hole": st_image({"a": ent("U8", [4], 0, 4), "b": ent("U8", [4], 8, 12)}, bytes(12)),
    "bad-dtype": st_image({"a": ent("F8_E4M3", [4], 0, 4)}, bytes(4)),
    "bad-shape": st_image({"a": ent("F32", [4294967296, 4294967296, 2], 0, 4)}, bytes(4)),
    "bad-size": st_image({"a": ent("F32", [3], 0, 8)}, bytes(8)),
    "bad-hlen": st_image({}, hl=1 << 40),
    "bad-dup": st_image(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"x"),
    "bad-meta": st_image({"__metadata__": {"k": 1}}),
    "bad-truncated": st_image({"w": ent("F32", [2, 2], 0, 16)}, bytes(16))[:30],
}
for name, blob in seeds.items():
    write("safetensors", name, blob)

for model in ("tiny-opt", "tiny-llama", "tiny-phi", "tiny-opt350m", "stories260K"):
    src = os.path.join(root, "tests", "data", model, "config.json")
    if os.path.exists(src):
        with open(src, "rb") as f:
            write("config", model + ".json", f.read())

model = {"source": "hf://facebook/opt-125m"}
specs = {
    "minimal": {"model": model},
    "slim": {"model": model, "method": "slim", "pruning": {"method": "wanda", "pattern": "2:4"},
             "quantization": {"method": "slim-quant"}, "lowrank": {"method": "slim"}},
    "sparsegpt": {"model": model, "pruning": {"method": "sparsegpt", "sparsity": 0.7, "blocksize": 64, "damp": 0.05}},
    "slicegpt": {"model": model, "method": "slicegpt", "slicegpt": {"sparsity": 0.25}},
    "eval": {"model": model, "method": "eval", "eval": {"perplexity": []}},
    "bad-field": {"model": model, "pruning": {"method": "wanda", "sparsity": 2}},
}
for name, doc in specs.items():
    write("jobspec", name + ".json", json.dumps(doc).encode())
