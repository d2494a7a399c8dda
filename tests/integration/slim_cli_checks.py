#!/usr/bin/env python3
"""Helpers of tests/integration/slim_cli.sh (standard library only).
  slim_cli_checks.py prep MODEL_DIR OUT_DIR
      writes OUT_DIR/story1.txt (the sample's first story, as llama2.c saw it) and
      OUT_DIR/story1-ids.json (llama2.c's ids of it: tinystories-ids.json up to the second BOS)
  slim_cli_checks.py check < CHECKS
      one check a line, "NAME FILE...", on the outputs of slim; prints "ok: ..." or "FAIL: ..."
      per check and exits with the number of failures
"""
import json
import math
import re
import sys


def prep(model_dir, out_dir):
    text = open(f"{model_dir}/tinystories-sample.txt", encoding="utf-8").read()
    story = text.split("<|endoftext|>")[0].strip()
    ids = json.load(open(f"{model_dir}/tinystories-ids.json"))["ids"]
    end = ids.index(1, 1)
    with open(f"{out_dir}/story1.txt", "w", encoding="utf-8") as f:
        f.write(story)
    with open(f"{out_dir}/story1-ids.json", "w") as f:
        json.dump(ids[:end], f)


def load(path):
    with open(path) as f:
        return json.load(f)


def finite_ppl(r, what):
    p = r["perplexity"]
    assert isinstance(p, float) and math.isfinite(p) and p > 1, f"{what}: perplexity {p!r}"
    return p


def text_ppl(out):
    m = re.search(r"^perplexity\s+(\S+)$", open(out).read(), re.M)
    assert m, f"{out}: no perplexity line"
    p = float(m.group(1))
    assert math.isfinite(p) and p > 1, f"text perplexity {p}"
    return f"eval --text prints perplexity {p}"


def same_ppl(text_out, ids_out):
    a, b = load(text_out), load(ids_out)
    p = finite_ppl(a, "text run")
    assert a["windows"] == 5, f"text run: {a['windows']} windows, want 5"
    assert p == b["perplexity"] and a["tokens"] == b["tokens"], f"text {a} != ids {b}"
    return f"--json is valid JSON; story 1 from text and from llama2.c's ids: perplexity {p} both"


def ids_ppl(out):
    r = load(out)
    p = finite_ppl(r, "ids run")
    assert r["windows"] == 28, f"{r['windows']} windows, want 28 (1809 ids / 64)"
    return f"--ids reads the fixture's {{\"ids\": [...]}} file: perplexity {p}"


def compressed(method, metrics_out, dense_out, eval_out):
    metrics, dense, comp = load(metrics_out), load(dense_out), load(eval_out)
    d, p = finite_ppl(dense, "dense"), finite_ppl(comp, method)
    assert p > d, f"{method}: reloaded perplexity {p} not above dense {d}"
    after = metrics["perplexity"]["tinystories"]["after"]
    assert abs(after - p) <= 1e-5 * p, f"{method}: job reported {after}, reloaded checkpoint gives {p}"
    if method == "wanda":
        sp = metrics["compression"]["measured_sparsity"]
        assert sp == 0.5, f"wanda 2:4: measured sparsity {sp}"
    else:
        mem = metrics["memory"]
        assert mem["params_after"] < mem["params_before"] and mem["kept_width"] == 48, f"slicegpt memory {mem}"
    return f"{method}: reloaded checkpoint perplexity {p:.4f} > dense {d:.4f}, equal to the job's report"


CHECKS = {"text_ppl": text_ppl, "same_ppl": same_ppl, "ids_ppl": ids_ppl, "compressed": compressed}


def check():
    fails = 0
    for line in sys.stdin:
        name, *args = line.split()
        try:
            print("ok:", CHECKS[name](*args))
        except Exception as e:  # a missing file, bad JSON or a failed assertion are all failures
            print(f"FAIL: {name}: {type(e).__name__}: {e}")
            fails += 1
    return fails


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "prep":
        prep(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 2 and sys.argv[1] == "check":
        sys.exit(check())
    else:
        sys.exit(__doc__)
