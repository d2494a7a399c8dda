/*
** core/tokenizer_pretok.c: normalizers and pre-tokenizers.
** The two split regexes are implemented by hand over Unicode classes (core/unicode.h), alternative
** by alternative in the regex's own order (leftmost-first, as Rust's regex and JS RegExp match):
**   GPT-2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
**   LLaMA-3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*
**            |\s*[\r\n]+|\s+(?!\S)|\s+
** Every alternative set ends in \s+ or a class that covers what the others leave, so some
** alternative always matches at least one character and splitting always makes progress.
*/
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"
#include "unicode.h"

/* ---- normalizers ---- */

static int replace_all(const char *s, size_t len, const char *a, const char *b, struct tok_str *out,
                       struct slm_err *err)
{
    size_t alen = strlen(a), blen = strlen(b), i = 0;
    int rc = 0;
    if (alen == 0) return tok_str_append(out, s, len, err);
    while (i < len && !rc) {
        const char *hit = alen <= len - i ? memmem(s + i, len - i, a, alen) : NULL;
        size_t upto = hit ? (size_t)(hit - s) : len;
        rc = tok_str_append(out, s + i, upto - i, err);
        if (!rc && hit) rc = tok_str_append(out, b, blen, err);
        i = hit ? upto + alen : len;
    }
    return rc;
}

int tok_normalize(const struct tokenizer *t, const char *s, size_t len, bool first_section,
                  char **out, size_t *out_len, struct slm_err *err)
{
    struct tok_str cur = {0}, next = {0};
    int rc = tok_str_append(&cur, s, len, err);
    for (size_t k = 0; k < t->n_norms && !rc; k++) {
        const struct tok_norm *nm = &t->norms[k];
        next.n = 0;
        if (nm->op == NORM_PREPEND) {
            if (cur.n == 0) continue;   /* HF prepends to non-empty strings only */
            rc = tok_str_append(&next, nm->a, strlen(nm->a), err);
            if (!rc) rc = tok_str_append(&next, cur.s, cur.n, err);
        } else {
            rc = replace_all(cur.s ? cur.s : "", cur.n, nm->a, nm->b, &next, err);
        }
        struct tok_str tmp = cur;
        cur = next;
        next = tmp;
    }
    (void)first_section;
    free(next.s);
    if (rc) { free(cur.s); return rc; }
    if (!cur.s && (rc = tok_str_append(&cur, "", 0, err))) return rc;
    *out = cur.s;
    *out_len = cur.n;
    return 0;
}

/* ---- the split regexes ---- */

static bool is_other(uint32_t c) { return !unicode_is_space(c) && !unicode_is_letter(c) && !unicode_is_number(c); }
static bool is_nl(uint32_t c) { return c == '\r' || c == '\n'; }

static uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* 's 't 're 've 'm 'll 'd at i (cp[i] == '\''); returns the end or 0. */
static size_t contraction(const uint32_t *cp, size_t i, size_t n, bool nocase)
{
    if (i + 1 >= n) return 0;
    uint32_t a = nocase ? ascii_lower(cp[i + 1]) : cp[i + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if (i + 2 >= n) return 0;
    uint32_t b = nocase ? ascii_lower(cp[i + 2]) : cp[i + 2];
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    return 0;
}

/* \s+(?!\S)|\s+ at a whitespace character i */
static size_t space_run(const uint32_t *cp, size_t i, size_t n)
{
    size_t k = i;
    while (k < n && unicode_is_space(cp[k])) k++;
    if (k == n) return n;
    return k - 1 > i ? k - 1 : k;   /* leave the last space to the word that follows */
}

static size_t match_gpt2(const uint32_t *cp, size_t i, size_t n)
{
    size_t m, j;
    if (cp[i] == '\'' && (m = contraction(cp, i, n, false))) return m;
    j = cp[i] == ' ' ? i + 1 : i;
    if (j < n && unicode_is_letter(cp[j])) {
        while (j < n && unicode_is_letter(cp[j])) j++;
        return j;
    }
    if (j < n && unicode_is_number(cp[j])) {
        while (j < n && unicode_is_number(cp[j])) j++;
        return j;
    }
    if (j < n && is_other(cp[j])) {
        while (j < n && is_other(cp[j])) j++;
        return j;
    }
    return space_run(cp, i, n);
}

static size_t match_llama3(const uint32_t *cp, size_t i, size_t n)
{
    size_t m, j;
    uint32_t c = cp[i];
    if (c == '\'' && (m = contraction(cp, i, n, true))) return m;
    j = i;
    if (!unicode_is_letter(c) && !unicode_is_number(c) && !is_nl(c) && i + 1 < n && unicode_is_letter(cp[i + 1]))
        j = i + 1;
    if (unicode_is_letter(cp[j])) {
        while (j < n && unicode_is_letter(cp[j])) j++;
        return j;
    }
    if (unicode_is_number(c)) {
        for (j = i; j < n && j < i + 3 && unicode_is_number(cp[j]); j++) {}
        return j;
    }
    j = c == ' ' ? i + 1 : i;
    if (j < n && is_other(cp[j])) {
        while (j < n && is_other(cp[j])) j++;
        while (j < n && is_nl(cp[j])) j++;
        return j;
    }
    /* c is whitespace: \s*[\r\n]+ ends after the last newline of the run */
    size_t k = i, last_nl = n;
    for (; k < n && unicode_is_space(cp[k]); k++)
        if (is_nl(cp[k])) last_nl = k;
    if (last_nl < n) return last_nl + 1;
    return space_run(cp, i, n);
}

/* ---- pre-tokenize one section and BPE its pieces ---- */

static int split_and_bpe(struct tokenizer *t, const char *s, size_t len, struct tok_ids *out,
                         struct slm_err *err)
{
    uint32_t *cp = malloc((len + 1) * sizeof *cp);
    size_t *off = malloc((len + 1) * sizeof *off);
    int rc = 0;
    if (!cp || !off) { rc = slm_err_set(err, SLM_ENOMEM, "pre-tokenizing %zu bytes", len); goto done; }
    size_t n = 0;
    for (size_t i = 0; i < len; n++) {
        off[n] = i;
        i += utf8_decode((const unsigned char *)s + i, len - i, &cp[n]);
    }
    off[n] = len;
    for (size_t i = 0; i < n && !rc;) {
        size_t j = t->split == SPLIT_GPT2 ? match_gpt2(cp, i, n) : match_llama3(cp, i, n);
        rc = tok_bpe_word(t, s + off[i], off[j] - off[i], out, err);
        i = j;
    }
done:
    free(cp);
    free(off);
    return rc;
}

/* Metaspace: spaces become the replacement, optionally prepended; optionally split before each
** replacement (the replacement stays at the start of its piece). */
static int metaspace_and_bpe(struct tokenizer *t, const char *s, size_t len, bool first_section,
                             struct tok_ids *out, struct slm_err *err)
{
    struct tok_str buf = {0};
    const char *r = t->metaspace_repl;
    size_t rl = strlen(r);
    int rc = 0;
    bool prepend = t->metaspace_prepend == PREPEND_ALWAYS ||
                   (t->metaspace_prepend == PREPEND_FIRST && first_section);
    /* the check for a leading replacement comes after spaces became replacements, as in HF */
    if (prepend && len > 0 && s[0] != ' ' && !(len >= rl && memcmp(s, r, rl) == 0))
        rc = tok_str_append(&buf, r, rl, err);
    if (!rc) rc = replace_all(s, len, " ", r, &buf, err);
    if (rc || buf.n == 0) goto done;
    if (!t->metaspace_split) {
        rc = tok_bpe_word(t, buf.s, buf.n, out, err);
        goto done;
    }
    for (size_t i = 0; i < buf.n && !rc;) {
        size_t j = i + 1;
        while (j < buf.n && !(buf.n - j >= rl && memcmp(buf.s + j, r, rl) == 0)) j++;
        rc = tok_bpe_word(t, buf.s + i, j - i, out, err);
        i = j;
    }
done:
    free(buf.s);
    return rc;
}

int tok_pretokenize_and_bpe(struct tokenizer *t, const char *s, size_t len, bool first_section,
                            struct tok_ids *out, struct slm_err *err)
{
    if (len == 0) return 0;
    if (t->metaspace) return metaspace_and_bpe(t, s, len, first_section, out, err);
    char *tmp = NULL;
    if (t->byte_level && t->add_prefix_space && s[0] != ' ') {
        if (!(tmp = malloc(len + 1))) return slm_err_set(err, SLM_ENOMEM, "pre-tokenizing %zu bytes", len);
        tmp[0] = ' ';
        memcpy(tmp + 1, s, len);
        s = tmp;
        len++;
    }
    int rc = t->split == SPLIT_NONE ? tok_bpe_word(t, s, len, out, err) : split_and_bpe(t, s, len, out, err);
    free(tmp);
    return rc;
}
