"""tests/bench/hf_forward.py: the transformers side of tests/bench/gpu_bench.sh.

  hf_forward.py make opt125m|llama7b:L DIR [bf16]   random model (fp32, or bf16 to halve the files)
                                              saved with save_pretrained (safetensors)
  hf_forward.py time DIR [SEQLEN] [REPS]      forward + loss throughput on CUDA, same token ids as
                                              gpu_forward_bench.c: ids[t] = (t * 7919) % vocab
Prints one line like gpu-forward-bench so the table lines up.
"""
import statistics
import sys
import time

import torch
import transformers


def make(kind, out, dtype="fp32"):
    torch.manual_seed(0)
    if kind == "opt125m":  # OPTConfig's defaults are facebook/opt-125m's shape
        cfg = transformers.OPTConfig()
        cls = transformers.OPTForCausalLM
    elif kind.startswith("llama7b"):  # LLaMA-2-7B's shape; ":L" keeps only L of its 32 blocks
        layers = int(kind.split(":")[1]) if ":" in kind else 32
        cfg = transformers.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                       max_position_embeddings=4096, rms_norm_eps=1e-5)
        cls = transformers.LlamaForCausalLM
    else:
        raise SystemExit(f"unknown model kind {kind}")
    with torch.device("cuda"):
        model = cls(cfg).float()
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)


def timeit(path, T=2048, reps=5):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).cuda().eval()
    V = model.config.vocab_size
    ids = torch.tensor([[(t * 7919) % V for t in range(T)]], device="cuda")
    times = []
    with torch.inference_mode():
        loss = model(ids, labels=ids).loss  # warm-up
        torch.cuda.synchronize()
        for _ in range(reps):
            t0 = time.perf_counter()
            loss = model(ids, labels=ids).loss
            loss.item()
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    attn = getattr(model.config, "_attn_implementation", "?")
    name = f"transformers {transformers.__version__} ({attn})"
    print(f"{'hf':5} {name:28} {T / med:10.0f} tokens/s  median {med:.4f} s (min {min(times):.4f}, {reps} reps)"
          f"  mean_nll {loss.item():.6f}  torch {torch.__version__} tf32={torch.backends.cuda.matmul.allow_tf32}")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(*sys.argv[2:5])
    else:
        timeit(sys.argv[2], *(int(a) for a in sys.argv[3:]))
