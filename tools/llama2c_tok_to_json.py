#!/usr/bin/env python3
"""Convert a llama2.c tokenizer (tokenizer.bin / tok512.bin) into the tokenizer.json and
tokenizer_config.json that transformers' LlamaConverter writes for a LLaMA-2 SentencePiece model
(legacy mode), so that a llama2.c checkpoint converted to Hugging Face format can be tokenized by
any tokenizer.json reader (ours: core/tokenizer*.c).

llama2.c layout: int32 max_token_length, then per piece: float32 score, int32 len, len bytes.
Its exporter (llama2.c tokenizer.py) rewrote the SentencePiece model: "\u2581" became " ", and
pieces 1 and 2 became "\\n<s>\\n" and "\\n</s>\\n". We undo both. Byte pieces "<0xXX>" stay.

Merges are derived from the scores as transformers' generate_merges() does: every split of a piece
into two pieces is a merge; merges of one piece are ordered by the ids of their halves, and all
merges by (score of the merged piece, length of the left half, length of the right half),
descending, stable.

Usage: llama2c_tok_to_json.py TOKENIZER.BIN OUT_DIR
"""
import json
import os
import struct
import sys

SPIECE = "\u2581"


def read_pieces(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        sys.exit(f"{path}: too short for a llama2.c tokenizer")
    pieces, off = [], 4
    while off < len(data):
        if off + 8 > len(data):
            sys.exit(f"{path}: truncated piece header at byte {off}")
        score, n = struct.unpack_from("<fi", data, off)
        off += 8
        if n < 0 or off + n > len(data):
            sys.exit(f"{path}: piece {len(pieces)} has bad length {n}")
        pieces.append((data[off:off + n].decode("utf-8"), score))
        off += n
    return pieces


def hf_piece(i, text):
    if i == 0:
        return "<unk>"
    if i == 1:
        return "<s>"
    if i == 2:
        return "</s>"
    return text.replace(" ", SPIECE)


def generate_merges(vocab, scores):
    merges = []
    for piece, score in scores:
        local = []
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                local.append((left, right, score))
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [[m[0], m[1]] for m in merges]


def added(i, content):
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    src, out = sys.argv[1], sys.argv[2]
    raw = read_pieces(src)
    scores = [(hf_piece(i, p), s) for i, (p, s) in enumerate(raw)]
    vocab = {}
    for i, (p, _) in enumerate(scores):
        if p in vocab:
            sys.exit(f"{src}: piece {p!r} appears twice (ids {vocab[p]} and {i})")
        vocab[p] = i
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPIECE},
            {"type": "Replace", "pattern": {"String": " "}, "content": SPIECE}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPIECE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
            "vocab": vocab, "merges": generate_merges(vocab, scores)},
    }
    config = {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": None, "legacy": True, "clean_up_tokenization_spaces": False,
        "model_max_length": 512, "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print(f"{len(vocab)} pieces, {len(tok['model']['merges'])} merges -> {out}")


if __name__ == "__main__":
    main()
