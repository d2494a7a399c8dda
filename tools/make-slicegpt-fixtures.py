#!/usr/bin/env python3
"""Copy what tests/unit/core/slicegpt.c needs from ../shared/fixtures/slicegpt-reference into
tests/data/slicegpt (pure Python, no numpy). Per model and level P: refP.safetensors with
eval_logits (first ROWS rows of the first window), eval_nll, every pca.*.eigenvalues (f64) and,
for level TENSOR_LEVEL only, every model tensor as F16 (rounding 2^-11 relative, well inside the
2e-3-of-max tolerance). fused.safetensors: fused.eval_logits (trimmed), fused.eval_nll.
ids.safetensors copied; axes.json = summary.json's rotated_axes and perplexities.
usage: make-slicegpt-fixtures.py SRC_DIR DST_DIR
       make-slicegpt-fixtures.py --full SRC_DIR REPO_TESTS_DATA DST_DIR
The --full form builds a whole test-data folder of symbolic links to the untrimmed fixture (every
tensor at every level, and the slim-reference OPT with its model), for
SLIM_TEST_DATA=DST_DIR build/tests/unit/t-core-slicegpt (never committed)."""
import json, struct, sys, os

ROWS, TENSOR_LEVEL = 16, 25
MODELS = ['tiny-opt', 'tiny-llama', 'tiny-phi', 'stories260K']
FULL = sys.argv[1] == '--full'
if FULL:
    src, repo_data, dst = sys.argv[2], os.path.abspath(sys.argv[3]), sys.argv[4]
    MODELS = MODELS + ['slim-reference-model']
else:
    src, dst = sys.argv[1], sys.argv[2]


def read(path):
    f = open(path, 'rb')
    n = struct.unpack('<Q', f.read(8))[0]
    hdr = json.loads(f.read(n))
    base = 8 + n
    out = {}
    for name, t in hdr.items():
        if name == '__metadata__':
            continue
        f.seek(base + t['data_offsets'][0])
        out[name] = (t['dtype'], list(t['shape']), f.read(t['data_offsets'][1] - t['data_offsets'][0]))
    return out


def write(path, tensors, meta):
    hdr, blobs, off = {}, [], 0
    for name, (dt, shape, data) in tensors.items():
        hdr[name] = {'dtype': dt, 'shape': shape, 'data_offsets': [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    hdr['__metadata__'] = meta
    h = json.dumps(hdr, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h + b''.join(blobs))


def trim(t, rows):
    dt, shape, data = t
    row = len(data) // shape[0]
    return (dt, [rows] + shape[1:], data[:row * rows])


def to_f16(t):
    dt, shape, data = t
    assert dt == 'F32'
    vals = struct.unpack('<%df' % (len(data) // 4), data)
    return ('F16', shape, struct.pack('<%de' % len(vals), *vals))



def summary(s, d):
    summ = json.load(open(os.path.join(s, 'summary.json')))
    keep = {'rotated_axes': summ['rotated_axes'], 'fused_ppl': summ['fused']['ppl'],
            'levels': {k: {'ppl': v['ppl'], 'params_sliced': v['params_sliced'], 'params_after_fusion': v['params_after_fusion']}
                       for k, v in summ['levels'].items()}}
    json.dump(keep, open(os.path.join(d, 'summary.json'), 'w'), indent=1)


if FULL:
    src = os.path.abspath(src)
    os.makedirs(os.path.join(dst, 'slicegpt'), exist_ok=True)
    os.symlink(os.path.join(repo_data, 'slicegpt', 'configs'), os.path.join(dst, 'slicegpt', 'configs'))
    for model in MODELS:
        s, d = os.path.join(src, model), os.path.join(dst, 'slicegpt', model)
        os.makedirs(d)
        for level in (0, 10, 25, 30):
            os.symlink(os.path.join(s, 'slice%d.safetensors' % level), os.path.join(d, 'ref%d.safetensors' % level))
        os.symlink(os.path.join(s, 'dense.safetensors'), os.path.join(d, 'fused.safetensors'))
        os.symlink(os.path.join(s, 'ids.safetensors'), os.path.join(d, 'ids.safetensors'))
        summary(s, d)
        weights = os.path.join(src, '..', 'slim-reference', 'model') if model == 'slim-reference-model' else os.path.join(repo_data, model)
        os.symlink(os.path.abspath(weights), os.path.join(dst, model))
    sys.exit(0)

for model in MODELS:
    s, d = os.path.join(src, model), os.path.join(dst, model)
    os.makedirs(d, exist_ok=True)
    meta = {'source': 'shared/fixtures/slicegpt-reference/' + model, 'trimmed_logit_rows': str(ROWS)}
    dense = read(os.path.join(s, 'dense.safetensors'))
    write(os.path.join(d, 'fused.safetensors'),
          {'fused.eval_logits': trim(dense['fused.eval_logits'], ROWS), 'fused.eval_nll': dense['fused.eval_nll']}, meta)
    write(os.path.join(d, 'ids.safetensors'), read(os.path.join(s, 'ids.safetensors')), meta)
    for level in (0, 10, 25, 30):
        t = read(os.path.join(s, 'slice%d.safetensors' % level))
        out = {'eval_logits': trim(t['eval_logits'], ROWS), 'eval_nll': t['eval_nll']}
        for name, v in t.items():
            if name.startswith('pca.'):
                out[name] = v
            elif level == TENSOR_LEVEL and not name.startswith('eval_'):
                out[name] = to_f16(v)
        write(os.path.join(d, 'ref%d.safetensors' % level), out, meta)
    summary(s, d)
