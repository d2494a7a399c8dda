#!/usr/bin/python3
"""Build tests/data/tiny-opt350m: a random OPT shaped like OPT-350M (do_layer_norm_before false:
post-LN blocks, no final LayerNorm; word_embed_proj_dim != hidden_size: project_in/out), with
reference logits from an independent numpy transcription of transformers' OPTForCausalLM
(modeling_opt.py: OPTDecoder / OPTDecoderLayer / OPTAttention). transformers itself cannot be
installed here; this file is the documented stand-in. Needs Debian's python3-numpy.
usage: make-opt350m-fixture.py OUT_DIR"""
import json, os, struct, sys
import numpy as np

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(350)
V, d, dw, L, H, F, P = 512, 64, 32, 2, 4, 128, 64
hd = d // H
W = {}
def rnd(*s, scale=0.2): return (rng.standard_normal(s) * scale).astype(np.float32)
W['model.decoder.embed_tokens.weight'] = rnd(V, dw, scale=0.5)
W['model.decoder.embed_positions.weight'] = rnd(P + 2, d)
W['model.decoder.project_in.weight'] = rnd(d, dw)
W['model.decoder.project_out.weight'] = rnd(dw, d)
for i in range(L):
    p = f'model.decoder.layers.{i}.'
    for n in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
        W[p + f'self_attn.{n}.weight'] = rnd(d, d); W[p + f'self_attn.{n}.bias'] = rnd(d)
    W[p + 'fc1.weight'] = rnd(F, d); W[p + 'fc1.bias'] = rnd(F)
    W[p + 'fc2.weight'] = rnd(d, F); W[p + 'fc2.bias'] = rnd(d)
    for n in ('self_attn_layer_norm', 'final_layer_norm'):
        W[p + n + '.weight'] = (1 + rnd(d)).astype(np.float32); W[p + n + '.bias'] = rnd(d)

def ln(x, w, b, eps=1e-5):
    m = x.mean(-1, keepdims=True); v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b
def lin(x, n): 
    y = x @ W[n + '.weight'].T
    return y + W[n + '.bias'] if n + '.bias' in W else y

B, T = 2, 40
ids = rng.integers(0, V, size=(B, T))
x = W['model.decoder.embed_tokens.weight'][ids].astype(np.float64)
x = lin(x, 'model.decoder.project_in')
x = x + W['model.decoder.embed_positions.weight'][np.arange(T) + 2]
mask = np.triu(np.full((T, T), -np.inf), 1)
hidden = [x]
for i in range(L):
    p = f'model.decoder.layers.{i}.'
    r = x
    q = lin(x, p + 'self_attn.q_proj') * hd ** -0.5
    k = lin(x, p + 'self_attn.k_proj'); v = lin(x, p + 'self_attn.v_proj')
    q, k, v = (t.reshape(B, T, H, hd).transpose(0, 2, 1, 3) for t in (q, k, v))
    s = q @ k.transpose(0, 1, 3, 2) + mask
    s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
    a = (s @ v).transpose(0, 2, 1, 3).reshape(B, T, d)
    x = r + lin(a, p + 'self_attn.out_proj')
    x = ln(x, W[p + 'self_attn_layer_norm.weight'], W[p + 'self_attn_layer_norm.bias'])   # post-LN
    r = x
    h = np.maximum(lin(x, p + 'fc1'), 0)
    x = r + lin(h, p + 'fc2')
    x = ln(x, W[p + 'final_layer_norm.weight'], W[p + 'final_layer_norm.bias'])
    hidden.append(x)
x = lin(x, 'model.decoder.project_out')          # no final LayerNorm when do_layer_norm_before is false
logits = x @ W['model.decoder.embed_tokens.weight'].T.astype(np.float64)   # tied head
lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
nll = lse[:, :-1] - np.take_along_axis(logits[:, :-1], ids[:, 1:, None], -1)[..., 0]

def save(path, tensors):
    hdr, blobs, off = {}, [], 0
    for n, a in tensors.items():
        dt = {np.float32: 'F32', np.int64: 'I64'}[a.dtype.type]
        b = a.tobytes(); hdr[n] = {'dtype': dt, 'shape': list(a.shape), 'data_offsets': [off, off + len(b)]}
        blobs.append(b); off += len(b)
    h = json.dumps(hdr).encode(); h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h))); f.write(h); [f.write(b) for b in blobs]

save(f'{out}/model.safetensors', W)
ref = {'input_ids': ids.astype(np.int64), 'logits': logits.astype(np.float32), 'nll': nll.astype(np.float32)}
for i, h in enumerate(hidden): ref[f'hidden_{i}'] = h.astype(np.float32)
save(f'{out}/reference.safetensors', ref)
json.dump({'model_type': 'opt', 'architectures': ['OPTForCausalLM'], 'hidden_size': d, 'ffn_dim': F,
           'num_hidden_layers': L, 'num_attention_heads': H, 'vocab_size': V, 'max_position_embeddings': P,
           'word_embed_proj_dim': dw, 'do_layer_norm_before': False, 'activation_function': 'relu',
           'tie_word_embeddings': True, 'enable_bias': True}, open(f'{out}/config.json', 'w'), indent=1)
json.dump({'mean_nll': float(nll.mean()), 'ppl': float(np.exp(nll.mean())),
           'note': 'numpy float64 transcription of transformers OPT (post-LN, project_in/out); hidden_i = output of block i-1, hidden_0 = embeddings; no final-norm hidden state'},
          open(f'{out}/reference.json', 'w'), indent=1)
