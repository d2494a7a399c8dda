#!/usr/bin/env python3
"""Copy chosen tensors of a .safetensors file, keeping only the first K rows of dimension 0
of each (test fixtures small enough to commit). Pure Python: no torch/numpy needed.
usage: trim-safetensors.py IN OUT K name[=keepall] ..."""
import json, struct, sys

src, dst, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
want = sys.argv[4:]
f = open(src, 'rb')
n = struct.unpack('<Q', f.read(8))[0]
hdr = json.loads(f.read(n))
base = 8 + n
sizes = {'F32': 4, 'I64': 8, 'BF16': 2, 'F16': 2, 'I32': 4}
out_hdr, blobs, off = {}, [], 0
for spec in want:
    name, _, mode = spec.partition('=')
    t = hdr[name]
    f.seek(base + t['data_offsets'][0])
    data = f.read(t['data_offsets'][1] - t['data_offsets'][0])
    shape = list(t['shape'])
    if mode != 'keepall' and shape and shape[0] > k:
        row = len(data) // shape[0]
        data = data[:row * k]
        shape[0] = k
    out_hdr[name] = {'dtype': t['dtype'], 'shape': shape, 'data_offsets': [off, off + len(data)]}
    blobs.append(data)
    off += len(data)
out_hdr['__metadata__'] = {'source': src.split('/fixtures/')[-1], 'trimmed_rows': str(k)}
h = json.dumps(out_hdr, separators=(',', ':')).encode()
h += b' ' * ((8 - len(h) % 8) % 8)
with open(dst, 'wb') as o:
    o.write(struct.pack('<Q', len(h)))
    o.write(h)
    for b in blobs:
        o.write(b)
