/*
** core/tokenizer_codec.c: encode and decode.
** encode: the raw text is first cut at added tokens (leftmost, longest; lstrip/rstrip eat the
** adjacent whitespace), then each section between them is normalized, pre-tokenized and BPE'd
** (tokenizer_pretok.c, tokenizer_bpe.c); the post-processor's BOS/EOS wrap the result.
** decode: ids -> token strings -> the decoder chain of tokenizer.json (or ByteLevel for the
** vocab.json layout), ending in UTF-8 with invalid bytes replaced by U+FFFD, as HF does.
*/
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"
#include "unicode.h"

/* ---- encode ---- */

/* Longest added token starting at s[i], or NULL. */
static const struct tok_added *added_at(const struct tokenizer *t, const char *s, size_t len, size_t i)
{
    const struct tok_added *best = NULL;
    for (size_t k = 0; k < t->n_added; k++) {
        const struct tok_added *a = &t->added[k];
        if (a->content[0] == s[i] && a->len <= len - i && (!best || a->len > best->len) &&
            memcmp(a->content, s + i, a->len) == 0)
            best = a;
    }
    return best;
}

static bool ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

static int encode_section(struct tokenizer *t, const char *s, size_t len, bool first, struct tok_ids *out,
                          struct slm_err *err)
{
    if (len == 0) return 0;
    if (t->n_norms == 0) return tok_pretokenize_and_bpe(t, s, len, first, out, err);
    char *norm = NULL;
    size_t nlen;
    int rc = tok_normalize(t, s, len, first, &norm, &nlen, err);
    if (!rc) rc = tok_pretokenize_and_bpe(t, norm, nlen, first, out, err);
    free(norm);
    return rc;
}

int tokenizer_encode(struct tokenizer *t, const char *text, size_t len, bool add_special, int32_t **ids,
                     size_t *n, struct slm_err *err)
{
    struct tok_ids out = {0};
    int rc = 0;
    bool first_byte[256] = {0};
    *ids = NULL;
    *n = 0;
    if (!text && len) return slm_err_set(err, SLM_EINVAL, "tokenizer_encode: NULL text");
    for (size_t k = 0; k < t->n_added; k++) first_byte[(unsigned char)t->added[k].content[0]] = true;
    if (add_special)
        for (size_t k = 0; k < t->n_prefix && !rc; k++) rc = tok_ids_push(&out, t->prefix[k], err);

    size_t start = 0;   /* start of the current plain section */
    for (size_t i = 0; i < len && !rc;) {
        const struct tok_added *a = first_byte[(unsigned char)text[i]] ? added_at(t, text, len, i) : NULL;
        if (!a) { i++; continue; }
        size_t sec_end = i, next = i + a->len;
        if (a->lstrip) while (sec_end > start && ascii_space(text[sec_end - 1])) sec_end--;
        if (a->rstrip) while (next < len && ascii_space(text[next])) next++;
        rc = encode_section(t, text + start, sec_end - start, start == 0, &out, err);
        if (!rc) rc = tok_ids_push(&out, a->id, err);
        start = i = next;
    }
    if (!rc) rc = encode_section(t, text + start, len - start, start == 0, &out, err);
    if (add_special)
        for (size_t k = 0; k < t->n_suffix && !rc; k++) rc = tok_ids_push(&out, t->suffix[k], err);
    if (rc) { free(out.v); return rc; }
    if (!out.v && !(out.v = malloc(sizeof *out.v))) return slm_err_set(err, SLM_ENOMEM, "token ids");
    *ids = out.v;
    *n = out.n;
    return 0;
}

/* ---- decode ---- */

struct parts { struct tok_str *v; size_t n; };

static void parts_free(struct parts *p)
{
    for (size_t i = 0; i < p->n; i++) free(p->v[i].s);
    free(p->v);
    p->v = NULL;
    p->n = 0;
}

/* Length of the invalid sequence at s[0] that becomes one U+FFFD: the maximal prefix of a valid
** sequence (Unicode's "maximal subpart", what Rust's from_utf8_lossy and TextDecoder do), at least 1. */
static size_t utf8_bad_len(const unsigned char *s, size_t len)
{
    unsigned char c = s[0];
    size_t need = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 1;
    size_t k = 1;
    for (; k < need && k < len; k++) {
        unsigned char lo = 0x80, hi = 0xBF;
        if (k == 1) {
            if (c == 0xE0) lo = 0xA0;
            else if (c == 0xED) hi = 0x9F;
            else if (c == 0xF0) lo = 0x90;
            else if (c == 0xF4) hi = 0x8F;
        }
        if (s[k] < lo || s[k] > hi) break;
    }
    return k;
}

static bool utf8_ok_at(const unsigned char *s, size_t len, size_t *n)
{
    uint32_t cp;
    *n = utf8_decode(s, len, &cp);
    return !(cp == 0xFFFD && !(*n == 3 && s[0] == 0xEF));
}

/* Append bytes as UTF-8, invalid sequences replaced by U+FFFD. */
static int append_lossy(struct tok_str *out, const char *s, size_t len, struct slm_err *err)
{
    int rc = 0;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len && !rc;) {
        size_t n;
        if (utf8_ok_at(u + i, len - i, &n)) rc = tok_str_append(out, s + i, n, err);
        else { rc = tok_str_append(out, "\xef\xbf\xbd", 3, err); n = utf8_bad_len(u + i, len - i); }
        i += n;
    }
    return rc;
}

static int dec_bytelevel(struct parts *p, struct slm_err *err)
{
    struct tok_str raw = {0}, out = {0};
    int rc = 0;
    for (size_t i = 0; i < p->n && !rc; i++) {
        const char *s = p->v[i].s;
        size_t len = p->v[i].n, before = raw.n;
        bool all = true;
        for (size_t k = 0; k < len && all && !rc;) {
            uint32_t cp;
            k += utf8_decode((const unsigned char *)s + k, len - k, &cp);
            int b = tok_cp_to_byte(cp);
            if (b < 0) all = false;
            else { char c = (char)b; rc = tok_str_append(&raw, &c, 1, err); }
        }
        if (!rc && !all) { raw.n = before; rc = tok_str_append(&raw, s, len, err); }
    }
    if (!rc) rc = append_lossy(&out, raw.s, raw.n, err);
    free(raw.s);
    if (rc) { free(out.s); return rc; }
    parts_free(p);
    if (!(p->v = calloc(1, sizeof *p->v))) { free(out.s); return slm_err_set(err, SLM_ENOMEM, "decode"); }
    p->v[0] = out;
    p->n = 1;
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* "<0xAB>" -> 0xAB, else -1 */
static int byte_token(const struct tok_str *s)
{
    if (s->n != 6 || memcmp(s->s, "<0x", 3) != 0 || s->s[5] != '>') return -1;
    int h = hexval(s->s[3]), l = hexval(s->s[4]);
    return h < 0 || l < 0 ? -1 : h * 16 + l;
}

/* Runs of <0xXX> tokens become their bytes when those are valid UTF-8, else one U+FFFD per byte. */
static int dec_bytefallback(struct parts *p, struct slm_err *err)
{
    struct parts q = {calloc(p->n + 1, sizeof *q.v), 0};
    int rc = 0;
    if (!q.v) return slm_err_set(err, SLM_ENOMEM, "decode");
    for (size_t i = 0; i < p->n && !rc;) {
        if (byte_token(&p->v[i]) < 0) { q.v[q.n++] = p->v[i]; p->v[i].s = NULL; i++; continue; }
        struct tok_str raw = {0};
        size_t j = i;
        for (; j < p->n && byte_token(&p->v[j]) >= 0 && !rc; j++) {
            char c = (char)byte_token(&p->v[j]);
            rc = tok_str_append(&raw, &c, 1, err);
        }
        bool valid = true;
        for (size_t k = 0, len; k < raw.n && valid && !rc; k += len)
            valid = utf8_ok_at((const unsigned char *)raw.s + k, raw.n - k, &len);
        struct tok_str o = {0};
        if (!rc && valid) rc = tok_str_append(&o, raw.s, raw.n, err);
        for (size_t k = 0; !rc && !valid && k < raw.n; k++) rc = tok_str_append(&o, "\xef\xbf\xbd", 3, err);
        free(raw.s);
        q.v[q.n++] = o;
        i = j;
    }
    parts_free(p);
    *p = q;
    return rc;
}

static int dec_replace(struct parts *p, const char *a, const char *b, struct slm_err *err)
{
    size_t alen = strlen(a), blen = strlen(b);
    for (size_t i = 0; i < p->n; i++) {
        struct tok_str o = {0};
        const char *s = p->v[i].s ? p->v[i].s : "";
        size_t len = p->v[i].n;
        int rc = 0;
        for (size_t k = 0; k < len && !rc;) {
            if (alen && len - k >= alen && memcmp(s + k, a, alen) == 0) { rc = tok_str_append(&o, b, blen, err); k += alen; }
            else { rc = tok_str_append(&o, s + k, 1, err); k++; }
        }
        if (rc) { free(o.s); return rc; }
        free(p->v[i].s);
        p->v[i] = o;
    }
    return 0;
}

static int dec_fuse(struct parts *p, struct slm_err *err)
{
    struct tok_str o = {0};
    for (size_t i = 0; i < p->n; i++) {
        int rc = tok_str_append(&o, p->v[i].s ? p->v[i].s : "", p->v[i].n, err);
        if (rc) { free(o.s); return rc; }
    }
    parts_free(p);
    if (!(p->v = calloc(1, sizeof *p->v))) { free(o.s); return slm_err_set(err, SLM_ENOMEM, "decode"); }
    p->v[0] = o;
    p->n = 1;
    return 0;
}

/* Strip: drop up to start leading and stop trailing occurrences of the content character. */
static void dec_strip(struct parts *p, const char *c, int start, int stop)
{
    size_t cl = strlen(c);
    for (size_t i = 0; i < p->n && cl; i++) {
        struct tok_str *s = &p->v[i];
        size_t a = 0, e = s->n;
        for (int k = 0; k < start && e - a >= cl && memcmp(s->s + a, c, cl) == 0; k++) a += cl;
        for (int k = 0; k < stop && e - a >= cl && memcmp(s->s + e - cl, c, cl) == 0; k++) e -= cl;
        if (a || e != s->n) {
            memmove(s->s, s->s + a, e - a);
            s->n = e - a;
            s->s[s->n] = '\0';
        }
    }
}

int tokenizer_decode(struct tokenizer *t, const int32_t *ids, size_t n, char **text, struct slm_err *err)
{
    struct parts p = {calloc(n + 1, sizeof *p.v), 0};
    struct tok_str out = {0};
    int rc = 0;
    *text = NULL;
    if (!p.v) return slm_err_set(err, SLM_ENOMEM, "decode of %zu ids", n);
    for (size_t i = 0; i < n && !rc; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_tokens || !t->tokens[ids[i]]) {
            rc = slm_err_set(err, SLM_EINVAL, "token id %d at position %zu is not in the vocabulary", ids[i], i);
            break;
        }
        rc = tok_str_append(&p.v[p.n++], t->tokens[ids[i]], t->token_len[ids[i]], err);
    }
    for (size_t k = 0; k < t->n_decs && !rc; k++) {
        const struct tok_dec *d = &t->decs[k];
        switch (d->op) {
        case DEC_BYTELEVEL: rc = dec_bytelevel(&p, err); break;
        case DEC_BYTEFALLBACK: rc = dec_bytefallback(&p, err); break;
        case DEC_REPLACE: rc = dec_replace(&p, d->a, d->b, err); break;
        case DEC_FUSE: rc = dec_fuse(&p, err); break;
        case DEC_STRIP: dec_strip(&p, d->a, d->start, d->stop); break;
        case DEC_METASPACE:
            rc = dec_replace(&p, d->a, " ", err);
            if (!rc && d->prepend != PREPEND_NEVER && p.n) {
                struct parts first = {p.v, 1};   /* only the first token loses its leading space */
                dec_strip(&first, " ", 1, 0);
            }
            break;
        }
    }
    /* no decoder: tokens joined by spaces, as HF does */
    for (size_t i = 0; i < p.n && !rc; i++) {
        if (i && t->n_decs == 0) rc = tok_str_append(&out, " ", 1, err);
        if (!rc) rc = append_lossy(&out, p.v[i].s ? p.v[i].s : "", p.v[i].n, err);
    }
    if (!rc && !out.s) rc = tok_str_append(&out, "", 0, err);
    if (!rc && !out.s) rc = slm_err_set(err, SLM_ENOMEM, "decode");
    parts_free(&p);
    if (rc) { free(out.s); return rc; }
    *text = out.s;
    return 0;
}
