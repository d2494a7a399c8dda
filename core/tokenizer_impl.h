/*
** core/tokenizer_impl.h: internals shared by the tokenizer files (not for use outside core/tokenizer*.c).
**   tokenizer.c         opening: tokenizer.json or vocab.json + merges.txt (+ tokenizer_config.json)
**   tokenizer_bpe.c     string -> id table, merge table, the BPE merge loop, GPT-2 byte <-> unicode map
**   tokenizer_pretok.c  normalizers and pre-tokenizers (GPT-2 and LLaMA-3 regexes by hand, Metaspace)
**   tokenizer_codec.c   encode (added tokens, normalize, pre-tokenize, BPE, BOS/EOS) and decode
** Ownership: struct tokenizer owns every string and table below.
*/
#ifndef SLM_TOKENIZER_IMPL_H
#define SLM_TOKENIZER_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "tokenizer.h"

/* ---- growable buffers ---- */

struct tok_ids { int32_t *v; size_t n, cap; };
struct tok_str { char *s; size_t n, cap; };   /* kept NUL-terminated when non-empty */

int tok_ids_push(struct tok_ids *b, int32_t id, struct slm_err *err);
int tok_str_append(struct tok_str *b, const char *s, size_t n, struct slm_err *err);

/* ---- string -> id table (open addressing; keys are borrowed from tokenizer.tokens) ---- */

struct tok_map_slot { const char *key; uint32_t len; int32_t val; };
struct tok_map { struct tok_map_slot *slots; uint32_t cap, count; };

int tok_map_init(struct tok_map *m, size_t expected, struct slm_err *err);
void tok_map_free(struct tok_map *m);
/* Insert or overwrite; key must outlive the map. */
int tok_map_put(struct tok_map *m, const char *key, uint32_t len, int32_t val, struct slm_err *err);
int32_t tok_map_get(const struct tok_map *m, const char *key, size_t len); /* -1 if absent */

/* ---- merge table: (left id, right id) -> (rank, merged id) ---- */

struct tok_merge_slot { uint64_t key; int32_t rank, id; };   /* key 0 = empty (ids stored +1) */
struct tok_merges { struct tok_merge_slot *slots; uint32_t cap, count; };

int tok_merges_init(struct tok_merges *m, size_t expected, struct slm_err *err);
void tok_merges_free(struct tok_merges *m);
int tok_merges_put(struct tok_merges *m, int32_t a, int32_t b, int32_t rank, int32_t id,
                   struct slm_err *err);
const struct tok_merge_slot *tok_merges_get(const struct tok_merges *m, int32_t a, int32_t b);

/* ---- pipeline configuration ---- */

enum tok_norm_op { NORM_PREPEND, NORM_REPLACE };
struct tok_norm { enum tok_norm_op op; char *a, *b; };        /* prepend a / replace a by b */

enum tok_split { SPLIT_NONE, SPLIT_GPT2, SPLIT_LLAMA3 };
enum tok_prepend { PREPEND_NEVER, PREPEND_FIRST, PREPEND_ALWAYS };

enum tok_dec_op { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE };
struct tok_dec {
    enum tok_dec_op op;
    char *a, *b;              /* REPLACE: a -> b; STRIP: a = content; METASPACE: a = replacement */
    int start, stop;          /* STRIP */
    enum tok_prepend prepend; /* METASPACE */
};

struct tok_added {
    char *content;            /* owned */
    size_t len;
    int32_t id;
    bool special, lstrip, rstrip;
};

struct tokenizer {
    /* vocabulary: id -> string (owned, NUL-terminated), string -> id */
    char **tokens;
    uint32_t *token_len;
    int32_t n_tokens;         /* max id + 1 */
    struct tok_map vocab;
    struct tok_merges merges;

    /* model options */
    bool byte_fallback, ignore_merges, fuse_unk;
    int32_t unk_id;           /* -1 if none */
    int32_t byte_fb[256];     /* ids of <0xXX>, -1 where absent */

    /* normalizer (applied in order) */
    struct tok_norm *norms;
    size_t n_norms;

    /* pre-tokenizer */
    enum tok_split split;
    bool byte_level;          /* ByteLevel pre-tokenizer: bytes -> GPT-2 unicode chars */
    bool add_prefix_space;    /* ByteLevel add_prefix_space */
    bool metaspace;           /* Metaspace pre-tokenizer */
    char metaspace_repl[8];
    enum tok_prepend metaspace_prepend;
    bool metaspace_split;
    int32_t byte_id[256];     /* byte-level: id of the char standing for each byte, -1 if absent */

    /* added tokens, matched on the raw text before anything else */
    struct tok_added *added;
    size_t n_added;

    /* decoder steps */
    struct tok_dec *decs;
    size_t n_decs;

    /* post-processor for a single sequence */
    int32_t *prefix, *suffix;
    size_t n_prefix, n_suffix;

    int32_t bos_id, eos_id;
    const char *kind;
};

/* ---- tokenizer_bpe.c ---- */

/* GPT-2's byte -> code point map (printable bytes map to themselves). */
uint32_t tok_byte_to_cp(unsigned char b);
/* Inverse; -1 for a code point that stands for no byte. */
int tok_cp_to_byte(uint32_t cp);

/* Register id -> string (copy), growing the id space; the vocab map points at the copy. */
int tok_add_token(struct tokenizer *t, const char *s, size_t len, int32_t id, struct slm_err *err);
/* Fill byte_id[] / byte_fb[] from the vocabulary once it is complete. */
void tok_index_bytes(struct tokenizer *t);
/* Add the merge "a b" (rank = its position). Both halves and their concatenation must be tokens. */
int tok_add_merge(struct tokenizer *t, const char *a, size_t alen, const char *b, size_t blen,
                  int32_t rank, const char *where /* file named in errors */, struct slm_err *err);
/* BPE over one pre-token (bytes s[0..len), already normalized), appending ids to out. */
int tok_bpe_word(struct tokenizer *t, const char *s, size_t len, struct tok_ids *out,
                 struct slm_err *err);

/* ---- tokenizer_pretok.c ---- */

/* Apply the normalizers to s[0..len): *out is malloc'd (NUL-terminated), *out_len its length. */
int tok_normalize(const struct tokenizer *t, const char *s, size_t len, bool first_section,
                  char **out, size_t *out_len, struct slm_err *err);
/* Pre-tokenize s[0..len) and BPE each piece into out. */
int tok_pretokenize_and_bpe(struct tokenizer *t, const char *s, size_t len, bool first_section,
                            struct tok_ids *out, struct slm_err *err);

#endif
