/*
** core/tokenizer.c: opening a tokenizer the way transformers builds one from a model folder.
**   tokenizer.json (model.type BPE): vocab, merges ("a b" or ["a", "b"]), byte_fallback, unk_token,
**     ignore_merges; added_tokens; normalizer (Prepend, Replace, Sequence); pre_tokenizer
**     (ByteLevel, Split with the GPT-2 or LLaMA-3 regex, Metaspace, Sequence); decoder (ByteLevel,
**     Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence); post_processor (TemplateProcessing,
**     RobertaProcessing, BertProcessing, ByteLevel, Sequence) for BOS/EOS.
**   vocab.json + merges.txt (GPT-2 style, byte-level): BOS/EOS from tokenizer_config.json
**     (add_bos_token/add_eos_token, bos_token/eos_token; OPT adds "</s>") or special_tokens_map.json.
** Anything else in those files that would change the ids is refused with SLM_EUNSUPPORTED rather
** than silently ignored. Encoding and decoding are in tokenizer_codec.c.
*/
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "fileio.h"
#include "tokenizer_impl.h"

/* The pre-tokenizer regexes we implement by hand (tokenizer_pretok.c), as tokenizer.json spells them. */
static const char GPT2_REGEX[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char LLAMA3_REGEX[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char METASPACE[] = "\xe2\x96\x81";   /* U+2581 */
#define MAX_MERGES_BYTES ((size_t)256 << 20)          /* GPT-2's merges.txt is 456 KB */

/* ---- small helpers ---- */

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static char *path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static int load_json(json_t **out, const char *path, size_t flags, struct slm_err *err)
{
    json_error_t je;   /* config files hold integers like 1e30 (model_max_length): flags may read them as reals */
    FILE *f = fopen(path, "rb");
    if (!f) return slm_err_set(err, SLM_EIO, "%s: %s", path, strerror(errno));
    *out = json_loadf(f, JSON_REJECT_DUPLICATES | flags, &je);
    fclose(f);
    if (!*out)
        return slm_err_set(err, SLM_EFORMAT, "%s: line %d column %d: %s", path, je.line, je.column, je.text);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return slm_err_set(err, SLM_EFORMAT, "%s: top level is not a JSON object", path);
    }
    return 0;
}

/* A special token given as "text" or as {"content": "text", ...}; NULL if neither. */
static const char *token_text(const json_t *v)
{
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_object(v)) return json_string_value(json_object_get(v, "content"));
    return NULL;
}

static bool get_bool(const json_t *o, const char *key, bool dflt)
{
    const json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static const char *get_type(const json_t *o) { return json_string_value(json_object_get(o, "type")); }

static int push_id(int32_t **v, size_t *n, int32_t id, struct slm_err *err)
{
    int32_t *p = realloc(*v, (*n + 1) * sizeof *p);
    if (!p) return slm_err_set(err, SLM_ENOMEM, "special token list");
    p[(*n)++] = id;
    *v = p;
    return 0;
}

static int add_added(struct tokenizer *t, const char *content, int32_t id, bool special, bool lstrip,
                     bool rstrip, struct slm_err *err)
{
    size_t len = strlen(content);
    if (len == 0) return slm_err_set(err, SLM_EFORMAT, "added token %d is empty", id);
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == len && memcmp(t->added[i].content, content, len) == 0) return 0;
    struct tok_added *a = realloc(t->added, (t->n_added + 1) * sizeof *a);
    if (!a) return slm_err_set(err, SLM_ENOMEM, "added token list");
    t->added = a;
    char *c = dup_str(content);
    if (!c) return slm_err_set(err, SLM_ENOMEM, "added token");
    t->added[t->n_added++] = (struct tok_added){c, len, id, special, lstrip, rstrip};
    return 0;
}

/* ---- tokenizer.json sections ---- */

static int parse_model(struct tokenizer *t, const json_t *model, const char *path, struct slm_err *err)
{
    const char *type = get_type(model);
    if (!type || strcmp(type, "BPE") != 0)
        return slm_err_set(err, SLM_EUNSUPPORTED, "%s: model type \"%s\" is not supported (BPE only)", path,
                           type ? type : "(none)");
    const json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab)) return slm_err_set(err, SLM_EFORMAT, "%s: model.vocab is not an object", path);
    if (!json_is_array(merges)) return slm_err_set(err, SLM_EFORMAT, "%s: model.merges is not an array", path);
    const char *bad[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < 2; i++) {
        const char *v = json_string_value(json_object_get(model, bad[i]));
        if (v && *v) return slm_err_set(err, SLM_EUNSUPPORTED, "%s: model.%s is not supported", path, bad[i]);
    }
    int rc;
    if ((rc = tok_map_init(&t->vocab, json_object_size(vocab) + 512, err))) return rc;
    const char *key;
    const json_t *val;
    json_object_foreach((json_t *)vocab, key, val) {
        if (!json_is_integer(val))
            return slm_err_set(err, SLM_EFORMAT, "%s: vocab entry \"%.40s\" has no integer id", path, key);
        json_int_t id = json_integer_value(val);
        if (id < 0 || id > INT32_MAX)
            return slm_err_set(err, SLM_EFORMAT, "%s: vocab entry \"%.40s\" has id %lld", path, key, (long long)id);
        if ((rc = tok_add_token(t, key, strlen(key), (int32_t)id, err))) return rc;
    }
    if ((rc = tok_merges_init(&t->merges, json_array_size(merges), err))) return rc;
    size_t i;
    json_array_foreach((json_t *)merges, i, val) {
        const char *a, *b;
        size_t alen, blen;
        if (json_is_string(val)) {
            a = json_string_value(val);
            const char *sp = strchr(a, ' ');
            if (!sp || sp == a || !sp[1] || strchr(sp + 1, ' '))
                return slm_err_set(err, SLM_EFORMAT, "%s: merge %zu \"%.40s\" is not two tokens split by a space",
                                   path, i, a);
            alen = (size_t)(sp - a);
            b = sp + 1;
            blen = strlen(b);
        } else if (json_is_array(val) && json_array_size(val) == 2 && json_is_string(json_array_get(val, 0)) &&
                   json_is_string(json_array_get(val, 1))) {
            a = json_string_value(json_array_get(val, 0));
            b = json_string_value(json_array_get(val, 1));
            alen = json_string_length(json_array_get(val, 0));
            blen = json_string_length(json_array_get(val, 1));
        } else {
            return slm_err_set(err, SLM_EFORMAT, "%s: merge %zu is neither \"a b\" nor [\"a\", \"b\"]", path, i);
        }
        if (i > INT32_MAX) return slm_err_set(err, SLM_EFORMAT, "%s: too many merges", path);
        if ((rc = tok_add_merge(t, a, alen, b, blen, (int32_t)i, path, err))) return rc;
    }
    t->byte_fallback = get_bool(model, "byte_fallback", false);
    t->ignore_merges = get_bool(model, "ignore_merges", false);
    t->fuse_unk = get_bool(model, "fuse_unk", false);
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    if (unk) t->unk_id = tok_map_get(&t->vocab, unk, strlen(unk));
    return 0;
}

static int parse_added_tokens(struct tokenizer *t, const json_t *arr, const char *path, struct slm_err *err)
{
    if (!arr || json_is_null(arr)) return 0;
    if (!json_is_array(arr)) return slm_err_set(err, SLM_EFORMAT, "%s: added_tokens is not an array", path);
    size_t i;
    const json_t *v;
    json_array_foreach((json_t *)arr, i, v) {
        const json_t *id = json_object_get(v, "id");
        const char *content = json_string_value(json_object_get(v, "content"));
        if (!json_is_integer(id) || !content)
            return slm_err_set(err, SLM_EFORMAT, "%s: added_tokens[%zu] needs an integer id and a content", path, i);
        json_int_t iv = json_integer_value(id);
        if (iv < 0 || iv > INT32_MAX)
            return slm_err_set(err, SLM_EFORMAT, "%s: added_tokens[%zu] has id %lld", path, i, (long long)iv);
        int rc = tok_add_token(t, content, strlen(content), (int32_t)iv, err);
        if (!rc) rc = add_added(t, content, (int32_t)iv, get_bool(v, "special", false), get_bool(v, "lstrip", false),
                                get_bool(v, "rstrip", false), err);
        if (rc) return rc;
    }
    return 0;
}

static int add_norm(struct tokenizer *t, enum tok_norm_op op, const char *a, const char *b, struct slm_err *err)
{
    struct tok_norm *n = realloc(t->norms, (t->n_norms + 1) * sizeof *n);
    if (!n) return slm_err_set(err, SLM_ENOMEM, "normalizer list");
    t->norms = n;
    struct tok_norm *x = &n[t->n_norms];
    x->op = op;
    x->a = dup_str(a);
    x->b = b ? dup_str(b) : NULL;
    t->n_norms++;
    if (!x->a || (b && !x->b)) return slm_err_set(err, SLM_ENOMEM, "normalizer");
    return 0;
}

/* Replace's pattern: only {"String": "..."} (a Regex pattern would need a regex engine). */
static const char *string_pattern(const json_t *o)
{
    return json_string_value(json_object_get(json_object_get(o, "pattern"), "String"));
}

/* Sequence nodes: run fn on each element of o[key] (a list of normalizers, pre-tokenizers, ...). */
typedef int (*parse_fn)(struct tokenizer *t, const json_t *node, const char *path, struct slm_err *err);

static int parse_each(struct tokenizer *t, const json_t *o, const char *key, parse_fn fn, const char *path,
                      struct slm_err *err)
{
    const json_t *arr = json_object_get(o, key), *v;
    size_t i;
    if (!json_is_array(arr)) return slm_err_set(err, SLM_EFORMAT, "%s: Sequence without a \"%s\" list", path, key);
    json_array_foreach((json_t *)arr, i, v) {
        int rc = fn(t, v, path, err);
        if (rc) return rc;
    }
    return 0;
}

static int parse_normalizer(struct tokenizer *t, const json_t *n, const char *path, struct slm_err *err)
{
    if (!n || json_is_null(n)) return 0;
    const char *type = get_type(n);
    if (!type) return slm_err_set(err, SLM_EFORMAT, "%s: normalizer without a type", path);
    if (!strcmp(type, "Sequence")) {
        return parse_each(t, n, "normalizers", parse_normalizer, path, err);
    }
    if (!strcmp(type, "Prepend")) {
        const char *p = json_string_value(json_object_get(n, "prepend"));
        if (!p) return slm_err_set(err, SLM_EFORMAT, "%s: Prepend normalizer without \"prepend\"", path);
        return add_norm(t, NORM_PREPEND, p, NULL, err);
    }
    if (!strcmp(type, "Replace")) {
        const char *a = string_pattern(n), *b = json_string_value(json_object_get(n, "content"));
        if (!a || !b) return slm_err_set(err, SLM_EUNSUPPORTED, "%s: Replace normalizer needs a String pattern and content", path);
        return add_norm(t, NORM_REPLACE, a, b, err);
    }
    return slm_err_set(err, SLM_EUNSUPPORTED, "%s: normalizer \"%s\" is not supported", path, type);
}

static int parse_prepend_scheme(const json_t *o, enum tok_prepend *out)
{
    const char *s = json_string_value(json_object_get(o, "prepend_scheme"));
    if (s) {
        if (!strcmp(s, "always")) *out = PREPEND_ALWAYS;
        else if (!strcmp(s, "first")) *out = PREPEND_FIRST;
        else if (!strcmp(s, "never")) *out = PREPEND_NEVER;
        else return -1;
        return 0;
    }
    *out = get_bool(o, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER;
    return 0;
}

static int set_split(struct tokenizer *t, enum tok_split s, const char *path, struct slm_err *err)
{
    if (t->split != SPLIT_NONE)
        return slm_err_set(err, SLM_EUNSUPPORTED, "%s: two splitting pre-tokenizers in sequence are not supported", path);
    t->split = s;
    return 0;
}

static int parse_pretok(struct tokenizer *t, const json_t *p, const char *path, struct slm_err *err)
{
    if (!p || json_is_null(p)) return 0;
    const char *type = get_type(p);
    if (!type) return slm_err_set(err, SLM_EFORMAT, "%s: pre_tokenizer without a type", path);
    if (!strcmp(type, "Sequence")) {
        return parse_each(t, p, "pretokenizers", parse_pretok, path, err);
    }
    if (!strcmp(type, "ByteLevel")) {
        t->byte_level = true;
        t->add_prefix_space = get_bool(p, "add_prefix_space", true);
        return get_bool(p, "use_regex", true) ? set_split(t, SPLIT_GPT2, path, err) : 0;
    }
    if (!strcmp(type, "Split")) {
        const char *re = json_string_value(json_object_get(json_object_get(p, "pattern"), "Regex"));
        const char *beh = json_string_value(json_object_get(p, "behavior"));
        if (!re || !beh || strcmp(beh, "Isolated") != 0 || get_bool(p, "invert", false))
            return slm_err_set(err, SLM_EUNSUPPORTED, "%s: Split pre_tokenizer supported only with a Regex pattern, "
                               "Isolated, not inverted", path);
        if (!strcmp(re, LLAMA3_REGEX)) return set_split(t, SPLIT_LLAMA3, path, err);
        if (!strcmp(re, GPT2_REGEX)) return set_split(t, SPLIT_GPT2, path, err);
        return slm_err_set(err, SLM_EUNSUPPORTED, "%s: Split regex \"%.60s\" is not one of GPT-2's or LLaMA-3's",
                           path, re);
    }
    if (!strcmp(type, "Metaspace")) {
        const char *r = json_string_value(json_object_get(p, "replacement"));
        if (!r) r = METASPACE;
        if (strlen(r) >= sizeof t->metaspace_repl || !*r)
            return slm_err_set(err, SLM_EFORMAT, "%s: Metaspace replacement \"%s\" is not one character", path, r);
        strcpy(t->metaspace_repl, r);
        if (parse_prepend_scheme(p, &t->metaspace_prepend))
            return slm_err_set(err, SLM_EFORMAT, "%s: unknown Metaspace prepend_scheme", path);
        t->metaspace_split = get_bool(p, "split", true);
        t->metaspace = true;
        return 0;
    }
    return slm_err_set(err, SLM_EUNSUPPORTED, "%s: pre_tokenizer \"%s\" is not supported", path, type);
}

static int add_dec(struct tokenizer *t, struct tok_dec d, struct slm_err *err)
{
    struct tok_dec *v = realloc(t->decs, (t->n_decs + 1) * sizeof *v);
    if (!v) { free(d.a); free(d.b); return slm_err_set(err, SLM_ENOMEM, "decoder list"); }
    t->decs = v;
    v[t->n_decs++] = d;
    return 0;
}

static int parse_decoder(struct tokenizer *t, const json_t *d, const char *path, struct slm_err *err)
{
    if (!d || json_is_null(d)) return 0;
    const char *type = get_type(d);
    if (!type) return slm_err_set(err, SLM_EFORMAT, "%s: decoder without a type", path);
    struct tok_dec x = {0};
    if (!strcmp(type, "Sequence")) {
        return parse_each(t, d, "decoders", parse_decoder, path, err);
    } else if (!strcmp(type, "ByteLevel")) {
        x.op = DEC_BYTELEVEL;
    } else if (!strcmp(type, "ByteFallback")) {
        x.op = DEC_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        x.op = DEC_FUSE;
    } else if (!strcmp(type, "Replace")) {
        const char *a = string_pattern(d), *b = json_string_value(json_object_get(d, "content"));
        if (!a || !b) return slm_err_set(err, SLM_EUNSUPPORTED, "%s: Replace decoder needs a String pattern and content", path);
        x.op = DEC_REPLACE;
        x.a = dup_str(a);
        x.b = dup_str(b);
        if (!x.a || !x.b) { free(x.a); free(x.b); return slm_err_set(err, SLM_ENOMEM, "decoder"); }
    } else if (!strcmp(type, "Strip")) {
        const char *c = json_string_value(json_object_get(d, "content"));
        x.op = DEC_STRIP;
        x.a = dup_str(c ? c : " ");
        x.start = (int)json_integer_value(json_object_get(d, "start"));
        x.stop = (int)json_integer_value(json_object_get(d, "stop"));
        if (!x.a) return slm_err_set(err, SLM_ENOMEM, "decoder");
    } else if (!strcmp(type, "Metaspace")) {
        const char *r = json_string_value(json_object_get(d, "replacement"));
        x.op = DEC_METASPACE;
        if (parse_prepend_scheme(d, &x.prepend))
            return slm_err_set(err, SLM_EFORMAT, "%s: unknown Metaspace prepend_scheme", path);
        x.a = dup_str(r ? r : METASPACE);
        if (!x.a) return slm_err_set(err, SLM_ENOMEM, "decoder");
    } else {
        return slm_err_set(err, SLM_EUNSUPPORTED, "%s: decoder \"%s\" is not supported", path, type);
    }
    return add_dec(t, x, err);
}

/* A special token in a post-processor: "<s>" resolved through special_tokens or the vocabulary. */
static int special_ids(struct tokenizer *t, const json_t *specials, const char *name, int32_t **v, size_t *n,
                       const char *path, struct slm_err *err)
{
    const json_t *ids = json_object_get(json_object_get(specials, name), "ids");
    if (json_is_array(ids)) {
        size_t i;
        const json_t *x;
        json_array_foreach((json_t *)ids, i, x) {
            json_int_t id = json_integer_value(x);
            if (!json_is_integer(x) || id < 0 || id >= t->n_tokens || !t->tokens[id])
                return slm_err_set(err, SLM_EFORMAT, "%s: post_processor special token \"%s\" has a bad id", path, name);
            int rc = push_id(v, n, (int32_t)id, err);
            if (rc) return rc;
        }
        return 0;
    }
    int32_t id = tok_map_get(&t->vocab, name, strlen(name));
    if (id < 0) return slm_err_set(err, SLM_EFORMAT, "%s: post_processor token \"%s\" is not in the vocabulary", path, name);
    return push_id(v, n, id, err);
}

static int parse_post(struct tokenizer *t, const json_t *p, const char *path, struct slm_err *err)
{
    if (!p || json_is_null(p)) return 0;
    const char *type = get_type(p);
    if (!type) return slm_err_set(err, SLM_EFORMAT, "%s: post_processor without a type", path);
    int rc = 0;
    if (!strcmp(type, "Sequence")) {
        return parse_each(t, p, "processors", parse_post, path, err);
    }
    if (!strcmp(type, "ByteLevel")) return 0;   /* only trims offsets */
    if (!strcmp(type, "TemplateProcessing")) {
        const json_t *single = json_object_get(p, "single"), *specials = json_object_get(p, "special_tokens");
        if (!json_is_array(single)) return slm_err_set(err, SLM_EFORMAT, "%s: TemplateProcessing without \"single\"", path);
        bool seen_seq = false;
        size_t i;
        const json_t *v;
        json_array_foreach((json_t *)single, i, v) {
            const char *sp = json_string_value(json_object_get(json_object_get(v, "SpecialToken"), "id"));
            if (json_object_get(v, "Sequence")) { seen_seq = true; continue; }
            if (!sp) return slm_err_set(err, SLM_EFORMAT, "%s: TemplateProcessing item %zu is neither SpecialToken nor Sequence", path, i);
            if ((rc = special_ids(t, specials, sp, seen_seq ? &t->suffix : &t->prefix,
                                  seen_seq ? &t->n_suffix : &t->n_prefix, path, err)))
                return rc;
        }
        return 0;
    }
    if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        const json_t *cls = json_object_get(p, "cls"), *sep = json_object_get(p, "sep");
        if (!json_is_integer(json_array_get(cls, 1)) || !json_is_integer(json_array_get(sep, 1)))
            return slm_err_set(err, SLM_EFORMAT, "%s: %s needs cls and sep as [token, id]", path, type);
        if ((rc = push_id(&t->prefix, &t->n_prefix, (int32_t)json_integer_value(json_array_get(cls, 1)), err)))
            return rc;
        return push_id(&t->suffix, &t->n_suffix, (int32_t)json_integer_value(json_array_get(sep, 1)), err);
    }
    return slm_err_set(err, SLM_EUNSUPPORTED, "%s: post_processor \"%s\" is not supported", path, type);
}

/* ---- the two file layouts ---- */

static int open_tokenizer_json(struct tokenizer *t, const char *path, struct slm_err *err)
{
    json_t *root = NULL;
    int rc = load_json(&root, path, 0, err);
    if (rc) return rc;
    const json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) { rc = slm_err_set(err, SLM_EFORMAT, "%s: no \"model\" object", path); goto done; }
    if ((rc = parse_model(t, model, path, err))) goto done;
    if ((rc = parse_added_tokens(t, json_object_get(root, "added_tokens"), path, err))) goto done;
    if ((rc = parse_normalizer(t, json_object_get(root, "normalizer"), path, err))) goto done;
    if ((rc = parse_pretok(t, json_object_get(root, "pre_tokenizer"), path, err))) goto done;
    if ((rc = parse_decoder(t, json_object_get(root, "decoder"), path, err))) goto done;
    if ((rc = parse_post(t, json_object_get(root, "post_processor"), path, err))) goto done;
    if (t->n_prefix == 1) t->bos_id = t->prefix[0];
    if (t->n_suffix == 1) t->eos_id = t->suffix[0];
done:
    json_decref(root);
    return rc;
}

static int open_vocab_merges(struct tokenizer *t, const char *vocab_path, const char *merges_path,
                             struct slm_err *err)
{
    json_t *vocab = NULL;
    char *text = NULL;
    size_t len;
    int rc = load_json(&vocab, vocab_path, 0, err);
    if (rc) return rc;
    if ((rc = tok_map_init(&t->vocab, json_object_size(vocab) + 512, err))) goto done;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        json_int_t id = json_integer_value(val);
        if (!json_is_integer(val) || id < 0 || id > INT32_MAX) {
            rc = slm_err_set(err, SLM_EFORMAT, "%s: entry \"%.40s\" has no valid id", vocab_path, key);
            goto done;
        }
        if ((rc = tok_add_token(t, key, strlen(key), (int32_t)id, err))) goto done;
    }
    if ((rc = file_read_all(merges_path, MAX_MERGES_BYTES, &text, &len, err))) goto done;
    if ((rc = tok_merges_init(&t->merges, len / 8 + 16, err))) goto done;
    int32_t rank = 0;
    size_t lineno = 0;
    for (size_t i = 0; i < len;) {
        size_t e = i;
        while (e < len && text[e] != '\n') e++;
        size_t end = e > i && text[e - 1] == '\r' ? e - 1 : e;
        lineno++;
        /* "#version: 0.2" header and blank lines carry no merge */
        if (end > i && !(lineno == 1 && text[i] == '#')) {
            const char *sp = memchr(text + i, ' ', end - i);
            if (!sp || sp == text + i || sp + 1 == text + end || memchr(sp + 1, ' ', (size_t)(text + end - sp - 1))) {
                rc = slm_err_set(err, SLM_EFORMAT, "%s:%zu: not two tokens split by a space", merges_path, lineno);
                goto done;
            }
            if ((rc = tok_add_merge(t, text + i, (size_t)(sp - (text + i)), sp + 1, (size_t)(text + end - sp - 1),
                                    rank++, merges_path, err)))
                goto done;
        }
        i = e + 1;
    }
    t->byte_level = true;
    t->split = SPLIT_GPT2;
    rc = add_dec(t, (struct tok_dec){.op = DEC_BYTELEVEL}, err);
done:
    json_decref(vocab);
    free(text);
    return rc;
}

/* tokenizer_config.json / special_tokens_map.json: names of BOS/EOS/UNK and, for the vocab.json
** layout, whether BOS/EOS are added and which special strings are never split. */
static int apply_config(struct tokenizer *t, const char *config_path, const char *map_path, bool legacy_layout,
                        struct slm_err *err)
{
    json_t *cfg = NULL, *map = NULL;
    int rc = 0;
    if (config_path && file_exists(config_path) && (rc = load_json(&cfg, config_path, JSON_DECODE_INT_AS_REAL, err))) goto done;
    if (map_path && file_exists(map_path) && (rc = load_json(&map, map_path, JSON_DECODE_INT_AS_REAL, err))) goto done;
    static const char *names[] = {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                                  "mask_token"};
    int32_t ids[7];
    for (size_t k = 0; k < 7; k++) {
        const char *s = token_text(json_object_get(cfg, names[k]));
        if (!s) s = token_text(json_object_get(map, names[k]));
        /* GPT2Tokenizer's defaults: "<|endoftext|>" is BOS, EOS and UNK */
        if (!s && legacy_layout && k < 3) s = "<|endoftext|>";
        ids[k] = s ? tok_map_get(&t->vocab, s, strlen(s)) : -1;
        if (legacy_layout && ids[k] >= 0 && (rc = add_added(t, s, ids[k], true, false, false, err))) goto done;
    }
    if (ids[0] >= 0) t->bos_id = ids[0];
    if (ids[1] >= 0) t->eos_id = ids[1];
    if (legacy_layout) {
        if (ids[2] >= 0) t->unk_id = ids[2];
        t->add_prefix_space = get_bool(cfg, "add_prefix_space", false);
        if (get_bool(cfg, "add_bos_token", false)) {
            if (t->bos_id < 0) { rc = slm_err_set(err, SLM_EFORMAT, "%s: add_bos_token without a bos_token", config_path); goto done; }
            if ((rc = push_id(&t->prefix, &t->n_prefix, t->bos_id, err))) goto done;
        }
        if (get_bool(cfg, "add_eos_token", false)) {
            if (t->eos_id < 0) { rc = slm_err_set(err, SLM_EFORMAT, "%s: add_eos_token without an eos_token", config_path); goto done; }
            if ((rc = push_id(&t->suffix, &t->n_suffix, t->eos_id, err))) goto done;
        }
    }
done:
    json_decref(cfg);
    json_decref(map);
    return rc;
}

/* ---- public ---- */

int tokenizer_open_files(struct tokenizer **out, const char *tokenizer_json, const char *vocab_json,
                         const char *merges_txt, const char *config_json, const char *special_map_json,
                         struct slm_err *err)
{
    *out = NULL;
    if (!tokenizer_json && !(vocab_json && merges_txt))
        return slm_err_set(err, SLM_EINVAL, "tokenizer: need tokenizer.json or vocab.json and merges.txt");
    struct tokenizer *t = calloc(1, sizeof *t);
    if (!t) return slm_err_set(err, SLM_ENOMEM, "tokenizer");
    t->unk_id = t->bos_id = t->eos_id = -1;
    int rc = tokenizer_json ? open_tokenizer_json(t, tokenizer_json, err)
                            : open_vocab_merges(t, vocab_json, merges_txt, err);
    if (!rc) rc = apply_config(t, config_json, special_map_json, !tokenizer_json, err);
    if (rc) { tokenizer_free(t); return rc; }
    tok_index_bytes(t);
    if (t->byte_level) {
        for (unsigned b = 0; b < 256; b++)
            if (t->byte_id[b] < 0 && t->unk_id < 0) {
                tokenizer_free(t);
                return slm_err_set(err, SLM_EFORMAT, "byte-level vocabulary lacks the token for byte 0x%02X", b);
            }
    }
    t->kind = t->split == SPLIT_LLAMA3 ? "bpe-tiktoken" : t->byte_level ? "bpe-bytelevel" : "bpe-sentencepiece";
    *out = t;
    return 0;
}

int tokenizer_open(struct tokenizer **out, const char *dir, struct slm_err *err)
{
    const char *names[] = {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                           "special_tokens_map.json"};
    char *p[5] = {0};
    int rc = 0;
    *out = NULL;
    for (int i = 0; i < 5; i++)
        if (!(p[i] = path_join(dir, names[i]))) { rc = slm_err_set(err, SLM_ENOMEM, "path"); goto done; }
    if (file_exists(p[0]))
        rc = tokenizer_open_files(out, p[0], NULL, NULL, p[3], p[4], err);
    else if (file_exists(p[1]) && file_exists(p[2]))
        rc = tokenizer_open_files(out, NULL, p[1], p[2], p[3], p[4], err);
    else
        rc = slm_err_set(err, SLM_ENOTFOUND, "%s: no tokenizer.json, nor vocab.json with merges.txt", dir);
done:
    for (int i = 0; i < 5; i++) free(p[i]);
    return rc;
}

void tokenizer_free(struct tokenizer *t)
{
    if (!t) return;
    for (int32_t i = 0; i < t->n_tokens; i++) free(t->tokens[i]);
    free(t->tokens);
    free(t->token_len);
    tok_map_free(&t->vocab);
    tok_merges_free(&t->merges);
    for (size_t i = 0; i < t->n_norms; i++) { free(t->norms[i].a); free(t->norms[i].b); }
    free(t->norms);
    for (size_t i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    for (size_t i = 0; i < t->n_decs; i++) { free(t->decs[i].a); free(t->decs[i].b); }
    free(t->decs);
    free(t->prefix);
    free(t->suffix);
    free(t);
}

int tokenizer_vocab_size(const struct tokenizer *t)
{
    int32_t n = t->n_tokens;
    while (n > 0 && !t->tokens[n - 1]) n--;
    return n;
}

int tokenizer_bos_id(const struct tokenizer *t) { return t->bos_id; }
int tokenizer_eos_id(const struct tokenizer *t) { return t->eos_id; }
const char *tokenizer_kind(const struct tokenizer *t) { return t->kind; }

int tokenizer_copy_files(const char *from_dir, const char *to_dir, int *copied, struct slm_err *err)
{
    static const char *const files[] = { "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                         "vocab.json", "merges.txt", "tokenizer.model" };
    char src[4200], dst[4200];
    int n = 0;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(src, sizeof src, "%s/%s", from_dir, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", to_dir, files[i]);
        int rc = file_copy(src, dst, err);
        if (rc == -SLM_ENOTFOUND) { slm_err_clear(err); continue; }
        if (rc) return rc;
        n++;
    }
    if (copied) *copied = n;
    return 0;
}
