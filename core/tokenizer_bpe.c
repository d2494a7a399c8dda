/*
** core/tokenizer_bpe.c: the BPE model. Tokens live in an id -> string array and an open-addressing
** string -> id table; merges in a (left id, right id) -> (rank, merged id) table. A word is merged
** the way Hugging Face tokenizers does it: start from one symbol per character (or per byte for
** byte-level models, with <0xXX> byte fallback for SentencePiece models), then repeatedly apply
** the lowest-rank merge, leftmost first, using a binary heap over a doubly linked symbol list, so a
** word of n symbols costs O(n log n) (LLaMA-2 encodes a whole line as one word).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"
#include "unicode.h"

#define TOK_MAX_ID (1 << 24)   /* ids above this are not a vocabulary, they are a mistake */

/* ---- growable buffers ---- */

int tok_ids_push(struct tok_ids *b, int32_t id, struct slm_err *err)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        int32_t *v = realloc(b->v, cap * sizeof *v);
        if (!v) return slm_err_set(err, SLM_ENOMEM, "token buffer of %zu ids", cap);
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = id;
    return 0;
}

int tok_str_append(struct tok_str *b, const char *s, size_t n, struct slm_err *err)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) return slm_err_set(err, SLM_ENOMEM, "text buffer of %zu bytes", cap);
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
    return 0;
}

/* ---- string -> id ---- */

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u;   /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static uint32_t pow2_at_least(size_t n)
{
    uint32_t c = 64;
    while (c < n) c <<= 1;
    return c;
}

int tok_map_init(struct tok_map *m, size_t expected, struct slm_err *err)
{
    m->cap = pow2_at_least(expected * 2 + 1);
    m->count = 0;
    m->slots = calloc(m->cap, sizeof *m->slots);
    if (!m->slots) return slm_err_set(err, SLM_ENOMEM, "token table of %u slots", m->cap);
    return 0;
}

void tok_map_free(struct tok_map *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = m->count = 0;
}

static struct tok_map_slot *map_find(const struct tok_map *m, const char *key, size_t len)
{
    uint32_t mask = m->cap - 1;
    for (uint32_t i = hash_bytes(key, len) & mask;; i = (i + 1) & mask) {
        struct tok_map_slot *s = &m->slots[i];
        if (!s->key || (s->len == len && memcmp(s->key, key, len) == 0)) return s;
    }
}

int tok_map_put(struct tok_map *m, const char *key, uint32_t len, int32_t val, struct slm_err *err)
{
    if ((m->count + 1) * 2 > m->cap) {
        struct tok_map bigger;
        int rc = tok_map_init(&bigger, m->cap, err);
        if (rc) return rc;
        for (uint32_t i = 0; i < m->cap; i++)
            if (m->slots[i].key) *map_find(&bigger, m->slots[i].key, m->slots[i].len) = m->slots[i];
        bigger.count = m->count;
        free(m->slots);
        *m = bigger;
    }
    struct tok_map_slot *s = map_find(m, key, len);
    if (!s->key) m->count++;
    s->key = key;
    s->len = len;
    s->val = val;
    return 0;
}

int32_t tok_map_get(const struct tok_map *m, const char *key, size_t len)
{
    if (!m->slots) return -1;
    const struct tok_map_slot *s = map_find(m, key, len);
    return s->key ? s->val : -1;
}

/* ---- (left, right) -> merge ---- */

static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)(a + 1) << 32) | (uint32_t)(b + 1); }

static uint32_t hash_u64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (uint32_t)k;
}

int tok_merges_init(struct tok_merges *m, size_t expected, struct slm_err *err)
{
    m->cap = pow2_at_least(expected * 2 + 1);
    m->count = 0;
    m->slots = calloc(m->cap, sizeof *m->slots);
    if (!m->slots) return slm_err_set(err, SLM_ENOMEM, "merge table of %u slots", m->cap);
    return 0;
}

void tok_merges_free(struct tok_merges *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = m->count = 0;
}

static struct tok_merge_slot *merge_find(const struct tok_merges *m, uint64_t key)
{
    uint32_t mask = m->cap - 1;
    for (uint32_t i = hash_u64(key) & mask;; i = (i + 1) & mask)
        if (m->slots[i].key == 0 || m->slots[i].key == key) return &m->slots[i];
}

int tok_merges_put(struct tok_merges *m, int32_t a, int32_t b, int32_t rank, int32_t id,
                   struct slm_err *err)
{
    if ((m->count + 1) * 2 > m->cap) {
        struct tok_merges bigger;
        int rc = tok_merges_init(&bigger, m->cap, err);
        if (rc) return rc;
        for (uint32_t i = 0; i < m->cap; i++)
            if (m->slots[i].key) *merge_find(&bigger, m->slots[i].key) = m->slots[i];
        bigger.count = m->count;
        free(m->slots);
        *m = bigger;
    }
    struct tok_merge_slot *s = merge_find(m, pair_key(a, b));
    if (s->key) return 0;   /* a repeated merge keeps its first (best) rank, as HF does */
    s->key = pair_key(a, b);
    s->rank = rank;
    s->id = id;
    m->count++;
    return 0;
}

const struct tok_merge_slot *tok_merges_get(const struct tok_merges *m, int32_t a, int32_t b)
{
    if (!m->slots) return NULL;
    const struct tok_merge_slot *s = merge_find(m, pair_key(a, b));
    return s->key ? s : NULL;
}

/* ---- GPT-2 byte <-> unicode ---- */

static bool byte_is_printable(unsigned b)
{
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

/* The 68 other bytes, in order, get 256 + n: 0x00-0x20 (n 0-32), 0x7F-0xA0 (n 33-66), 0xAD (n 67). */
uint32_t tok_byte_to_cp(unsigned char b)
{
    if (byte_is_printable(b)) return b;
    if (b <= 0x20) return 256u + b;
    if (b == 0xAD) return 256u + 67;
    return 256u + 33 + (b - 0x7Fu);
}

int tok_cp_to_byte(uint32_t cp)
{
    if (cp < 256) return byte_is_printable(cp) ? (int)cp : -1;
    uint32_t n = cp - 256;
    if (n <= 32) return (int)n;
    if (n <= 66) return (int)(0x7F + n - 33);
    return n == 67 ? 0xAD : -1;
}

/* ---- vocabulary ---- */

int tok_add_token(struct tokenizer *t, const char *s, size_t len, int32_t id, struct slm_err *err)
{
    if (id < 0 || id >= TOK_MAX_ID)
        return slm_err_set(err, SLM_EFORMAT, "token id %d out of range [0, %d)", id, TOK_MAX_ID);
    if (len > UINT32_MAX / 2) return slm_err_set(err, SLM_EFORMAT, "token of %zu bytes", len);
    if (id >= t->n_tokens) {
        int32_t n = t->n_tokens ? t->n_tokens : 1024;
        while (n <= id) n *= 2;
        char **tk = realloc(t->tokens, (size_t)n * sizeof *tk);
        if (!tk) return slm_err_set(err, SLM_ENOMEM, "vocabulary of %d tokens", n);
        t->tokens = tk;
        uint32_t *tl = realloc(t->token_len, (size_t)n * sizeof *tl);
        if (!tl) return slm_err_set(err, SLM_ENOMEM, "vocabulary of %d tokens", n);
        t->token_len = tl;
        for (int32_t i = t->n_tokens; i < n; i++) { tk[i] = NULL; tl[i] = 0; }
        t->n_tokens = n;
    }
    if (t->tokens[id]) {
        /* an added token repeating its vocabulary entry is fine; two spellings for one id are not */
        if (t->token_len[id] == len && memcmp(t->tokens[id], s, len) == 0) return 0;
        return slm_err_set(err, SLM_EFORMAT, "token id %d given to both \"%.40s\" and \"%.*s\"", id,
                           t->tokens[id], (int)(len < 40 ? len : 40), s);
    }
    char *copy = malloc(len + 1);
    if (!copy) return slm_err_set(err, SLM_ENOMEM, "token of %zu bytes", len);
    memcpy(copy, s, len);
    copy[len] = '\0';
    t->tokens[id] = copy;
    t->token_len[id] = (uint32_t)len;
    return tok_map_put(&t->vocab, copy, (uint32_t)len, id, err);
}

void tok_index_bytes(struct tokenizer *t)
{
    for (unsigned b = 0; b < 256; b++) {
        char buf[8];
        size_t n = utf8_encode(tok_byte_to_cp((unsigned char)b), buf);
        t->byte_id[b] = tok_map_get(&t->vocab, buf, n);
        n = (size_t)snprintf(buf, sizeof buf, "<0x%02X>", b);
        t->byte_fb[b] = tok_map_get(&t->vocab, buf, n);
    }
}

int tok_add_merge(struct tokenizer *t, const char *a, size_t alen, const char *b, size_t blen,
                  int32_t rank, const char *where, struct slm_err *err)
{
    int32_t ia = tok_map_get(&t->vocab, a, alen), ib = tok_map_get(&t->vocab, b, blen);
    if (ia < 0 || ib < 0)
        return slm_err_set(err, SLM_EFORMAT, "%s: merge %d: \"%.*s\" is not in the vocabulary", where, rank,
                           (int)(ia < 0 ? alen : blen), ia < 0 ? a : b);
    char stackbuf[256];
    char *cat = alen + blen <= sizeof stackbuf ? stackbuf : malloc(alen + blen);
    if (!cat) return slm_err_set(err, SLM_ENOMEM, "merge of %zu bytes", alen + blen);
    memcpy(cat, a, alen);
    memcpy(cat + alen, b, blen);
    int32_t id = tok_map_get(&t->vocab, cat, alen + blen);
    int rc = 0;
    if (id < 0)
        rc = slm_err_set(err, SLM_EFORMAT, "%s: merge %d: \"%.*s\" is not in the vocabulary", where, rank,
                         (int)(alen + blen), cat);
    if (cat != stackbuf) free(cat);
    return rc ? rc : tok_merges_put(&t->merges, ia, ib, rank, id, err);
}

/* ---- merging one word ---- */

struct bpe_cand { int32_t rank, pos, a, b, id; };

static bool cand_less(const struct bpe_cand *x, const struct bpe_cand *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static void heap_push(struct bpe_cand *h, size_t *n, struct bpe_cand c)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static struct bpe_cand heap_pop(struct bpe_cand *h, size_t *n)
{
    struct bpe_cand top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const struct bpe_cand *best = &last;
        if (l < *n && cand_less(&h[l], best)) { m = l; best = &h[l]; }
        if (r < *n && cand_less(&h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (*n) h[i] = last;
    return top;
}

struct bpe_sym { int32_t id, prev, next; };

static void try_pair(const struct tokenizer *t, struct bpe_sym *sy, int32_t l, struct bpe_cand *h,
                     size_t *nh)
{
    int32_t r = sy[l].next;
    if (r < 0) return;
    const struct tok_merge_slot *m = tok_merges_get(&t->merges, sy[l].id, sy[r].id);
    if (m) heap_push(h, nh, (struct bpe_cand){m->rank, l, sy[l].id, sy[r].id, m->id});
}

/* Initial symbols of a word: one per byte (byte-level) or per character (with byte fallback and
** unknown-token fusion as in HF). sy must hold len entries. */
static int word_symbols(const struct tokenizer *t, const char *s, size_t len, struct bpe_sym *sy,
                        int32_t *out_n, struct slm_err *err)
{
    int32_t n = 0;
    bool prev_unk = false;
    for (size_t i = 0; i < len;) {
        const unsigned char *u = (const unsigned char *)s + i;
        if (t->byte_level) {
            int32_t id = t->byte_id[u[0]];
            if (id < 0) {
                if (t->unk_id < 0)
                    return slm_err_set(err, SLM_EFORMAT, "byte 0x%02X has no token and there is no unk_token",
                                       u[0]);
                id = t->unk_id;
            }
            sy[n++].id = id;
            i++;
            continue;
        }
        uint32_t cp;
        size_t cl = utf8_decode(u, len - i, &cp);
        int32_t id = tok_map_get(&t->vocab, s + i, cl);
        if (id >= 0) {
            sy[n++].id = id;
            prev_unk = false;
        } else {
            bool all = t->byte_fallback;
            for (size_t k = 0; all && k < cl; k++) all = t->byte_fb[u[k]] >= 0;
            if (all) {
                for (size_t k = 0; k < cl; k++) sy[n++].id = t->byte_fb[u[k]];
                prev_unk = false;
            } else if (t->unk_id >= 0) {
                if (!(t->fuse_unk && prev_unk)) sy[n++].id = t->unk_id;
                prev_unk = true;
            } else {
                return slm_err_set(err, SLM_EINVAL, "character U+%04X has no token and there is no unk_token",
                                   cp);
            }
        }
        i += cl;
    }
    *out_n = n;
    return 0;
}

int tok_bpe_word(struct tokenizer *t, const char *s, size_t len, struct tok_ids *out, struct slm_err *err)
{
    if (len == 0) return 0;
    if (t->ignore_merges) {
        int32_t id = -1;
        if (!t->byte_level) {
            id = tok_map_get(&t->vocab, s, len);
        } else {
            /* each byte becomes a code point < 0x800: two UTF-8 bytes at most */
            char stackbuf[512];
            char *buf = 2 * len <= sizeof stackbuf ? stackbuf : malloc(2 * len);
            if (!buf) return slm_err_set(err, SLM_ENOMEM, "BPE word of %zu bytes", len);
            size_t n = 0;
            for (size_t i = 0; i < len; i++) n += utf8_encode(tok_byte_to_cp((unsigned char)s[i]), buf + n);
            id = tok_map_get(&t->vocab, buf, n);
            if (buf != stackbuf) free(buf);
        }
        if (id >= 0) return tok_ids_push(out, id, err);
    }

    struct bpe_sym sy_stack[64];
    struct bpe_cand h_stack[3 * 64];
    struct bpe_sym *sy = sy_stack;
    struct bpe_cand *h = h_stack;
    int rc = 0;
    if (len > 64) {
        sy = malloc(len * sizeof *sy);
        h = malloc(3 * len * sizeof *h);
        if (!sy || !h) { rc = slm_err_set(err, SLM_ENOMEM, "BPE word of %zu bytes", len); goto done; }
    }
    int32_t n;
    if ((rc = word_symbols(t, s, len, sy, &n, err))) goto done;
    for (int32_t i = 0; i < n; i++) { sy[i].prev = i - 1; sy[i].next = i + 1 < n ? i + 1 : -1; }

    size_t nh = 0;
    for (int32_t i = 0; i + 1 < n; i++) try_pair(t, sy, i, h, &nh);
    while (nh) {
        struct bpe_cand c = heap_pop(h, &nh);
        int32_t l = c.pos, r = sy[l].next;
        if (sy[l].id != c.a || r < 0 || sy[r].id != c.b) continue;   /* stale */
        sy[l].id = c.id;
        sy[l].next = sy[r].next;
        if (sy[r].next >= 0) sy[sy[r].next].prev = l;
        sy[r].id = -1;
        if (sy[l].prev >= 0) try_pair(t, sy, sy[l].prev, h, &nh);
        try_pair(t, sy, l, h, &nh);
    }
    for (int32_t i = 0; i >= 0 && n > 0; i = sy[i].next)
        if ((rc = tok_ids_push(out, sy[i].id, err))) goto done;
done:
    if (sy != sy_stack) free(sy);
    if (h != h_stack) free(h);
    return rc;
}
