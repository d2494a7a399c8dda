/*
** core/jobspec.c: parse and validate a job spec (see jobspec.h and DESIGN.md).
** DESIGN: one walker per section. Every object is first checked against its list of known keys,
** then each field is read with a typed getter that checks the range and fills the default. The
** first problem wins and is reported as "/json/pointer: reason". Cross-field rules (what the
** reference implementations reject) run after all sections parsed, so their pointer names the
** field a user has to change. The validated document, defaults filled, is rebuilt from the struct
** (jobspec_to_json) so it is canonical whatever the input spelled out.
*/
#include "jobspec.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- defaults (ALGORITHMS.md §10: the values of the SLiM paper scripts) ---- */

#define JS_DEF_SPARSITY 0.5
#define JS_DEF_DAMP 0.01
#define JS_DEF_BLOCKSIZE 128
#define JS_DEF_BITS 4
#define JS_DEF_TILE 128
#define JS_DEF_RANK_RATIO 0.1
#define JS_DEF_SEQLEN 2048
#define JS_DEF_MIXING 2.1      /* JSQ: joint_pq_mixing_factor */
#define JS_MAX_MIXING 1000.0
#define JS_MAX_SEQLEN 131072
#define JS_MAX_NSAMPLES 65536
#define JS_MAX_TILE 65536
#define JS_MAX_NM 256

static const char *const js_method_names[] = { "slim", "slicegpt", "eval", NULL };
static const char *const js_prune_names[] = { "none", "magnitude", "wanda", "sparsegpt", NULL };
static const char *const js_quant_names[] = { "none", "absmax", "slim-quant", "optq", NULL };
static const char *const js_lowrank_names[] = { "none", "naive", "slim", "l2qer", NULL };
static const char *const js_device_names[] = { "auto", "cpu", "cuda", NULL };
static const char *const js_input_names[] = { "fp8", "int", NULL };
static const char *const js_precision_names[] = { "f32", "bf16", NULL };

/* ---- error reporting ---- */

struct jsctx {
    struct slm_err *err;
    char *path;
    size_t path_len;
};

__attribute__((format(printf, 3, 4)))
static int js_fail(struct jsctx *c, const char *ptr, const char *fmt, ...)
{
    char reason[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    if (c->path && c->path_len) snprintf(c->path, c->path_len, "%s", ptr);
    return slm_err_set(c->err, SLM_EINVAL, "%s: %s", ptr[0] ? ptr : "/", reason);
}

/* RFC 6901 pointer of base + "/" + key, with "~" -> "~0" and "/" -> "~1". */
static void js_ptr(char *out, size_t n, const char *base, const char *key)
{
    size_t o = (size_t)snprintf(out, n, "%s/", base);
    for (const char *k = key; *k && o + 3 < n; k++) {
        if (*k == '~') { out[o++] = '~'; out[o++] = '0'; }
        else if (*k == '/') { out[o++] = '~'; out[o++] = '1'; }
        else out[o++] = *k;
    }
    if (o < n) out[o] = 0;
}

/* ---- typed getters: absent -> default, present -> type and range checked ---- */

static int js_keys(struct jsctx *c, const json_t *obj, const char *base, const char *const *known)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        bool ok = false;
        for (int i = 0; known[i]; i++)
            if (!strcmp(known[i], key)) { ok = true; break; }
        if (!ok) {
            char p[256];
            js_ptr(p, sizeof p, base, key);
            return js_fail(c, p, "unknown field");
        }
    }
    return 0;
}

/* Fields that mean nothing in this configuration must be absent (obj may be NULL). */
static int js_absent(struct jsctx *c, const json_t *obj, const char *base, const char *const *keys, const char *why)
{
    for (int i = 0; obj && keys[i]; i++)
        if (json_object_get(obj, keys[i])) {
            char p[64];
            js_ptr(p, sizeof p, base, keys[i]);
            return js_fail(c, p, "%s", why);
        }
    return 0;
}

/* *out = the section object or NULL when absent; anything but an object is an error. */
static int js_section(struct jsctx *c, json_t **out, const json_t *doc, const char *key)
{
    char p[64];
    js_ptr(p, sizeof p, "", key);
    *out = json_object_get(doc, key);
    if (*out && !json_is_object(*out)) return js_fail(c, p, "must be an object");
    return 0;
}

static int js_bool(struct jsctx *c, bool *out, const json_t *obj, const char *base, const char *key, bool def)
{
    json_t *v = obj ? json_object_get(obj, key) : NULL;
    char p[256];
    *out = def;
    if (!v) return 0;
    js_ptr(p, sizeof p, base, key);
    if (!json_is_boolean(v)) return js_fail(c, p, "must be a boolean");
    *out = json_is_true(v);
    return 0;
}

static int js_int(struct jsctx *c, int *out, const json_t *obj, const char *base, const char *key,
                  int def, long long lo, long long hi)
{
    json_t *v = obj ? json_object_get(obj, key) : NULL;
    char p[256];
    *out = def;
    if (!v) return 0;
    js_ptr(p, sizeof p, base, key);
    if (!json_is_integer(v)) return js_fail(c, p, "must be an integer");
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return js_fail(c, p, "must be in [%lld, %lld]", lo, hi);
    *out = (int)x;
    return 0;
}

/* Number in [lo, hi) when hi_open, else [lo, hi]; lo_open excludes lo. */
static int js_num(struct jsctx *c, double *out, bool *present, const json_t *obj, const char *base,
                  const char *key, double def, double lo, bool lo_open, double hi, bool hi_open)
{
    json_t *v = obj ? json_object_get(obj, key) : NULL;
    char p[256];
    *out = def;
    if (present) *present = v != NULL;
    if (!v) return 0;
    js_ptr(p, sizeof p, base, key);
    if (!json_is_number(v)) return js_fail(c, p, "must be a number");
    double x = json_number_value(v);
    if (!isfinite(x) || (lo_open ? x <= lo : x < lo) || (hi_open ? x >= hi : x > hi))
        return js_fail(c, p, "must be in %c%g, %g%c", lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']');
    *out = x;
    return 0;
}

/* Enumerated string; *out = index in names, def when absent (def < 0: required). */
static int js_enum(struct jsctx *c, int *out, const json_t *obj, const char *base, const char *key,
                   const char *const *names, int def)
{
    json_t *v = obj ? json_object_get(obj, key) : NULL;
    char p[256];
    js_ptr(p, sizeof p, base, key);
    *out = def;
    if (!v) return def < 0 ? js_fail(c, p, "required") : 0;
    if (!json_is_string(v)) return js_fail(c, p, "must be a string");
    for (int i = 0; names[i]; i++)
        if (!strcmp(names[i], json_string_value(v))) { *out = i; return 0; }
    char list[160] = "";
    for (int i = 0; names[i]; i++) {
        size_t o = strlen(list);
        snprintf(list + o, sizeof list - o, "%s\"%s\"", i ? ", " : "", names[i]);
    }
    return js_fail(c, p, "must be one of %s", list);
}

/* A dataset or file-ish name: non-empty, [A-Za-z0-9._-], no leading dot (never a path). */
static bool js_name_ok(const char *s)
{
    if (!s[0] || s[0] == '.' || strlen(s) > 64) return false;
    for (const char *q = s; *q; q++) {
        char ch = *q;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

/* Copy of a string field; def (may be NULL) when absent. */
static int js_str(struct jsctx *c, char **out, const json_t *obj, const char *base, const char *key,
                  const char *def, bool name)
{
    json_t *v = obj ? json_object_get(obj, key) : NULL;
    char p[256];
    const char *s = def;
    js_ptr(p, sizeof p, base, key);
    if (v) {
        if (!json_is_string(v)) return js_fail(c, p, "must be a string");
        s = json_string_value(v);
        if (!s[0]) return js_fail(c, p, "must not be empty");
        if (strlen(s) > 4096) return js_fail(c, p, "too long (4096 bytes at most)");
        if (name && !js_name_ok(s)) return js_fail(c, p, "must be a name of [A-Za-z0-9._-], 64 bytes at most");
    }
    *out = NULL;
    if (!s) return 0;
    if (!(*out = strdup(s))) return slm_err_set(c->err, SLM_ENOMEM, "job spec: out of memory");
    return 0;
}

/* ---- sections ---- */

static int js_model(struct jsctx *c, struct jobspec *s, const json_t *doc)
{
    static const char *const known[] = { "source", "revision", NULL };
    json_t *o;
    int rc;
    if ((rc = js_section(c, &o, doc, "model"))) return rc;
    if (!o) return js_fail(c, "/model", "required");
    if ((rc = js_keys(c, o, "/model", known))) return rc;
    if (!json_object_get(o, "source")) return js_fail(c, "/model/source", "required");
    if ((rc = js_str(c, &s->model.source, o, "/model", "source", NULL, false))) return rc;
    const char *src = s->model.source;
    if (strncmp(src, "hf://", 5) && strncmp(src, "file://", 7) && strncmp(src, "https://", 8) &&
        strncmp(src, "http://", 7) && src[0] != '/')
        return js_fail(c, "/model/source", "must be hf://ORG/NAME, file://PATH, https://URL or an absolute path");
    if (!strncmp(src, "hf://", 5) && !strchr(src + 5, '/'))
        return js_fail(c, "/model/source", "hf:// sources name ORG/NAME");
    return js_str(c, &s->model.revision, o, "/model", "revision", "main", false);
}

/* "unstructured" -> 0:0, "N:M" with 0 < N < M <= JS_MAX_NM. */
static int js_pattern(struct jsctx *c, struct jobspec *s, const json_t *o)
{
    json_t *v = o ? json_object_get(o, "pattern") : NULL;
    s->pruning.n = s->pruning.m = 0;
    if (!v) return 0;
    if (!json_is_string(v)) return js_fail(c, "/pruning/pattern", "must be a string");
    const char *t = json_string_value(v);
    if (!strcmp(t, "unstructured")) return 0;
    int n, m, used = 0;
    if (sscanf(t, "%d:%d%n", &n, &m, &used) != 2 || t[used] || n <= 0 || m <= n || m > JS_MAX_NM)
        return js_fail(c, "/pruning/pattern", "must be \"unstructured\" or \"N:M\" with 0 < N < M <= %d", JS_MAX_NM);
    s->pruning.n = n;
    s->pruning.m = m;
    return 0;
}

static int js_pruning(struct jsctx *c, struct jobspec *s, const json_t *o)
{
    static const char *const known[] = { "method", "sparsity", "pattern", "shift_zero_metrics",
                                         "damp", "blocksize", NULL };
    int rc, meth;
    bool has_sp;
    if (o && (rc = js_keys(c, o, "/pruning", known))) return rc;
    if ((rc = js_enum(c, &meth, o, "/pruning", "method", js_prune_names, o ? -1 : JS_PRUNE_NONE))) return rc;
    s->pruning.method = (enum js_prune)meth;
    if ((rc = js_pattern(c, s, o))) return rc;
    double def = meth == JS_PRUNE_NONE ? 0.0
               : s->pruning.m ? (double)(s->pruning.m - s->pruning.n) / s->pruning.m : JS_DEF_SPARSITY;
    if ((rc = js_num(c, &s->pruning.sparsity, &has_sp, o, "/pruning", "sparsity", def, 0, false, 1, true))) return rc;
    if ((rc = js_bool(c, &s->pruning.shift_zero_metrics, o, "/pruning", "shift_zero_metrics", true))) return rc;
    if ((rc = js_num(c, &s->pruning.damp, NULL, o, "/pruning", "damp", JS_DEF_DAMP, 0, false, 1, false))) return rc;
    if ((rc = js_int(c, &s->pruning.blocksize, o, "/pruning", "blocksize", JS_DEF_BLOCKSIZE, 1, 1 << 20))) return rc;

    if (meth == JS_PRUNE_NONE) {
        if (s->pruning.sparsity != 0) return js_fail(c, "/pruning/sparsity", "must be 0 when method is \"none\"");
        if (s->pruning.m) return js_fail(c, "/pruning/pattern", "needs a pruning method");
        return 0;
    }
    if (s->pruning.sparsity <= 0) return js_fail(c, "/pruning/sparsity", "must be > 0 when pruning");
    if (s->pruning.m) {
        /* the reference asserts sparsity_ratio == prune_n / prune_m with prune_n = M - N */
        double want = (double)(s->pruning.m - s->pruning.n) / s->pruning.m;
        if (fabs(s->pruning.sparsity - want) > 1e-9)
            return js_fail(c, "/pruning/sparsity", "must be %g for pattern %d:%d", want, s->pruning.n, s->pruning.m);
    }
    return 0;
}

static int js_quantization(struct jsctx *c, struct jobspec *s, const json_t *o)
{
    static const char *const known[] = { "method", "bits", "group_size", "column_wise_grouping",
                                         "scale_important_weights", "joint", "mixing_factor", "input", "input_bits",
                                         "input_group_size", NULL };
    int rc, meth, in = -1;
    if (o && (rc = js_keys(c, o, "/quantization", known))) return rc;
    if ((rc = js_enum(c, &meth, o, "/quantization", "method", js_quant_names, o ? -1 : JS_QUANT_NONE))) return rc;
    s->quantization.method = (enum js_quant)meth;
    if ((rc = js_int(c, &s->quantization.bits, o, "/quantization", "bits", JS_DEF_BITS, 2, 8))) return rc;
    /* group AbsMax is the paper's AbsMax setting (tile 128); SLiM-Quant and OPTQ are per tensor */
    int gdef = meth == JS_QUANT_ABSMAX ? JS_DEF_TILE : 0;
    if ((rc = js_int(c, &s->quantization.group_size, o, "/quantization", "group_size", gdef, -1, JS_MAX_TILE))) return rc;
    if ((rc = js_bool(c, &s->quantization.column_wise_grouping, o, "/quantization", "column_wise_grouping", false))) return rc;
    if ((rc = js_bool(c, &s->quantization.scale_important_weights, o, "/quantization", "scale_important_weights", false))) return rc;
    if ((rc = js_bool(c, &s->quantization.joint, o, "/quantization", "joint", false))) return rc;
    bool has_mix;
    if ((rc = js_num(c, &s->quantization.mixing_factor, &has_mix, o, "/quantization", "mixing_factor", JS_DEF_MIXING,
                     0, false, JS_MAX_MIXING, false)))
        return rc;
    if (has_mix && !s->quantization.joint) return js_fail(c, "/quantization/mixing_factor", "needs \"joint\": true");
    json_t *iv = o ? json_object_get(o, "input") : NULL;
    if (iv && !json_is_null(iv) && (rc = js_enum(c, &in, o, "/quantization", "input", js_input_names, -1))) return rc;
    if (in >= 0 && !(s->quantization.input = strdup(js_input_names[in])))
        return slm_err_set(c->err, SLM_ENOMEM, "job spec: out of memory");
    if ((rc = js_int(c, &s->quantization.input_bits, o, "/quantization", "input_bits", 8, 2, 8))) return rc;
    if ((rc = js_int(c, &s->quantization.input_group_size, o, "/quantization", "input_group_size", -1, -1, 1 << 20))) return rc;
    if (s->quantization.input_group_size == 0)
        return js_fail(c, "/quantization/input_group_size", "must be -1 (per token) or > 0");
    if (in == 0 && s->quantization.input_bits != 8)
        return js_fail(c, "/quantization/input_bits", "must be 8 for \"fp8\"");
    if (in < 0 && o && (json_object_get(o, "input_bits") || json_object_get(o, "input_group_size")))
        return js_fail(c, json_object_get(o, "input_bits") ? "/quantization/input_bits" : "/quantization/input_group_size",
                       "needs \"input\"");

    if (meth == JS_QUANT_NONE) {
        static const char *const only[] = { "bits", "group_size", "column_wise_grouping", "scale_important_weights", "joint",
                                            "mixing_factor", NULL };
        return js_absent(c, o, "/quantization", only, "needs a weight quantization method");
    }
    if (meth == JS_QUANT_SLIM && s->quantization.group_size != 0)
        return js_fail(c, "/quantization/group_size", "must be 0: SLiM-Quant is per tensor (tiling + slim-quant is not implemented in the reference)");
    if (meth == JS_QUANT_OPTQ && s->quantization.column_wise_grouping)
        return js_fail(c, "/quantization/column_wise_grouping", "not supported with optq");
    if (s->quantization.column_wise_grouping && s->quantization.group_size <= 0 && meth != JS_QUANT_SLIM)
        return js_fail(c, "/quantization/column_wise_grouping", "needs group_size > 0");
    return 0;
}

static int js_lowrank(struct jsctx *c, struct jobspec *s, const json_t *o)
{
    static const char *const known[] = { "method", "rank_ratio", "quantize", "tile", "separate",
                                         "prune", "pad", NULL };
    int rc, meth;
    if (o && (rc = js_keys(c, o, "/lowrank", known))) return rc;
    if ((rc = js_enum(c, &meth, o, "/lowrank", "method", js_lowrank_names, o ? -1 : JS_LOWRANK_NONE))) return rc;
    s->lowrank.method = (enum js_lowrank)meth;
    if ((rc = js_num(c, &s->lowrank.rank_ratio, NULL, o, "/lowrank", "rank_ratio",
                     meth == JS_LOWRANK_NONE ? 0.0 : JS_DEF_RANK_RATIO, 0, meth != JS_LOWRANK_NONE, 1, false))) return rc;
    if ((rc = js_bool(c, &s->lowrank.quantize, o, "/lowrank", "quantize", false))) return rc;
    if ((rc = js_int(c, &s->lowrank.tile, o, "/lowrank", "tile", JS_DEF_TILE, 1, JS_MAX_TILE))) return rc;
    if ((rc = js_bool(c, &s->lowrank.separate, o, "/lowrank", "separate", true))) return rc;
    if ((rc = js_bool(c, &s->lowrank.prune, o, "/lowrank", "prune", false))) return rc;
    if ((rc = js_bool(c, &s->lowrank.pad, o, "/lowrank", "pad", true))) return rc;
    if (meth == JS_LOWRANK_NONE) {
        static const char *const only[] = { "rank_ratio", "quantize", "tile", "separate", "prune", "pad", NULL };
        return js_absent(c, o, "/lowrank", only, "needs a low-rank method");
    }
    return 0;
}

static int js_slicegpt(struct jsctx *c, struct jobspec *s, const json_t *o)
{
    static const char *const known[] = { "sparsity", "round_to", "reference_compat", NULL };
    int rc;
    if ((rc = js_keys(c, o, "/slicegpt", known))) return rc;
    if (!json_object_get(o, "sparsity")) return js_fail(c, "/slicegpt/sparsity", "required");
    if ((rc = js_num(c, &s->slicegpt.sparsity, NULL, o, "/slicegpt", "sparsity", 0, 0, false, 1, true))) return rc;
    if ((rc = js_int(c, &s->slicegpt.round_to, o, "/slicegpt", "round_to", 8, 1, 4096))) return rc;
    return js_bool(c, &s->slicegpt.reference_compat, o, "/slicegpt", "reference_compat", false);
}

static int js_calibration(struct jsctx *c, struct jobspec *s, const json_t *o)
{
    static const char *const known[] = { "dataset", "nsamples", "seqlen", "seed", NULL };
    bool sg = s->method == JS_METHOD_SLICEGPT;   /* SliceGPT's own defaults: wikitext2, seed 42 */
    int rc;
    if (o && (rc = js_keys(c, o, "/calibration", known))) return rc;
    if ((rc = js_str(c, &s->calibration.dataset, o, "/calibration", "dataset", sg ? "wikitext2" : "c4", true))) return rc;
    if ((rc = js_int(c, &s->calibration.nsamples, o, "/calibration", "nsamples", 128, 1, JS_MAX_NSAMPLES))) return rc;
    if ((rc = js_int(c, &s->calibration.seqlen, o, "/calibration", "seqlen", JS_DEF_SEQLEN, 2, JS_MAX_SEQLEN))) return rc;
    return js_int(c, &s->calibration.seed, o, "/calibration", "seed", sg ? 42 : 0, 0, INT_MAX);
}

static int js_eval(struct jsctx *c, struct jobspec *s, const json_t *o)
{
    static const char *const known[] = { "perplexity", "seqlen", "baseline", "batch", NULL };
    int rc;
    if (o && (rc = js_keys(c, o, "/eval", known))) return rc;
    json_t *pv = o ? json_object_get(o, "perplexity") : NULL;
    if (pv && !json_is_array(pv)) return js_fail(c, "/eval/perplexity", "must be an array of dataset names");
    size_t n = pv ? json_array_size(pv) : 1;
    if (n > JOBSPEC_MAX_EVAL) return js_fail(c, "/eval/perplexity", "16 datasets at most");
    s->eval.perplexity = calloc(n ? n : 1, sizeof *s->eval.perplexity);
    if (!s->eval.perplexity) return slm_err_set(c->err, SLM_ENOMEM, "job spec: out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *e = pv ? json_array_get(pv, i) : NULL;
        char p[64];
        snprintf(p, sizeof p, "/eval/perplexity/%zu", i);
        if (e && (!json_is_string(e) || !js_name_ok(json_string_value(e))))
            return js_fail(c, p, "must be a dataset name of [A-Za-z0-9._-]");
        const char *name = e ? json_string_value(e) : "wikitext2";
        for (size_t k = 0; k < i; k++)
            if (!strcmp(s->eval.perplexity[k], name)) return js_fail(c, p, "duplicate dataset");
        if (!(s->eval.perplexity[i] = strdup(name))) return slm_err_set(c->err, SLM_ENOMEM, "job spec: out of memory");
        s->eval.n_perplexity = (int)i + 1;
    }
    if ((rc = js_int(c, &s->eval.seqlen, o, "/eval", "seqlen", JS_DEF_SEQLEN, 2, JS_MAX_SEQLEN))) return rc;
    if ((rc = js_bool(c, &s->eval.baseline, o, "/eval", "baseline", true))) return rc;
    return js_int(c, &s->eval.batch, o, "/eval", "batch", 1, 1, 1024);
}

/* ---- combinations the reference implementations reject ---- */

static int js_combinations(struct jsctx *c, const struct jobspec *s)
{
    enum js_prune pm = s->pruning.method;
    enum js_quant qm = s->quantization.method;
    enum js_lowrank lm = s->lowrank.method;

    if (pm == JS_PRUNE_SPARSEGPT && (qm == JS_QUANT_ABSMAX || qm == JS_QUANT_SLIM) && !s->quantization.joint)
        return js_fail(c, "/quantization/method", "with sparsegpt pruning the weights are quantized inside the OBS loop: use \"optq\"");
    if (qm == JS_QUANT_OPTQ && pm != JS_PRUNE_NONE && pm != JS_PRUNE_SPARSEGPT)
        return js_fail(c, "/quantization/method", "optq runs inside the OBS loop: pruning must be \"sparsegpt\" or \"none\"");
    if (s->quantization.scale_important_weights) {
        if (qm != JS_QUANT_ABSMAX && qm != JS_QUANT_SLIM)
            return js_fail(c, "/quantization/scale_important_weights", "needs absmax or slim-quant");
        if (pm == JS_PRUNE_MAGNITUDE || pm == JS_PRUNE_SPARSEGPT)
            return js_fail(c, "/quantization/scale_important_weights", "not implemented with %s pruning", js_prune_names[pm]);
    }
    if (s->quantization.joint) {
        if (qm != JS_QUANT_ABSMAX || s->quantization.group_size <= 0)
            return js_fail(c, "/quantization/joint", "JSQ needs group absmax (method \"absmax\", group_size > 0)");
        if (pm != JS_PRUNE_WANDA)
            return js_fail(c, "/quantization/joint", "JSQ needs wanda pruning");
        /* the reference's joint_pq() call shifts its positional arguments: the flag lands in
        ** pad_lora and JSQ never scales important weights */
        if (s->quantization.scale_important_weights)
            return js_fail(c, "/quantization/scale_important_weights", "not applied by JSQ in the reference");
    }
    if (lm == JS_LOWRANK_NONE) return 0;
    if (pm == JS_PRUNE_MAGNITUDE || pm == JS_PRUNE_SPARSEGPT)
        return js_fail(c, "/lowrank/method", "adapters are not supported with %s pruning", js_prune_names[pm]);
    if (pm == JS_PRUNE_NONE && qm == JS_QUANT_NONE)
        return js_fail(c, "/lowrank/method", "adapters need pruning or quantization (no error to correct)");
    if (lm == JS_LOWRANK_L2QER && (qm == JS_QUANT_NONE || pm != JS_PRUNE_NONE))
        return js_fail(c, "/lowrank/method", "l2qer corrects quantization error only: needs quantization and no pruning");
    if (qm == JS_QUANT_OPTQ)
        return js_fail(c, "/lowrank/method", "adapters are not supported with optq");
    if (s->quantization.joint)
        return js_fail(c, "/lowrank/method", "adapters are not supported with JSQ");
    if (s->lowrank.quantize && qm == JS_QUANT_NONE)
        return js_fail(c, "/lowrank/quantize", "quantized adapters need weight quantization");
    if (s->lowrank.prune) {
        if (s->pruning.n != 2 || s->pruning.m != 4)
            return js_fail(c, "/lowrank/prune", "prune_lora needs pattern \"2:4\"");
        if (!s->lowrank.separate)
            return js_fail(c, "/lowrank/prune", "prune_lora needs separate adapters");
    }
    if (s->lowrank.quantize && !s->lowrank.separate)
        return js_fail(c, "/lowrank/quantize", "merged adapters are not quantized separately; set separate");
    if (s->lowrank.quantize && s->lowrank.tile < 2)
        return js_fail(c, "/lowrank/tile", "quantized adapters need tile >= 2 (groups of tile values)");
    return 0;
}

/* ---- canonical document ---- */

static int js_set(json_t *o, const char *k, json_t *v)
{
    return v ? json_object_set_new(o, k, v) : -1;
}

static json_t *jobspec_to_json(const struct jobspec *s)
{
    json_t *d = json_object(), *o;
    int bad = !d;
    if (bad) return NULL;
    bad |= js_set(d, "version", json_integer(s->version));
    bad |= js_set(d, "model", json_pack("{s:s,s:s}", "source", s->model.source, "revision", s->model.revision));
    bad |= js_set(d, "method", json_string(js_method_names[s->method]));
    if (s->method == JS_METHOD_SLIM) {
        /* sections whose method is "none" carry only the method: their other fields would be
        ** rejected ("needs a ... method") when the canonical document is parsed again */
        char pat[32] = "unstructured";
        if (s->pruning.m) snprintf(pat, sizeof pat, "%d:%d", s->pruning.n, s->pruning.m);
        if (s->pruning.method == JS_PRUNE_NONE) o = json_pack("{s:s}", "method", "none");
        else o = json_pack("{s:s,s:f,s:s,s:b,s:f,s:i}", "method", js_prune_names[s->pruning.method],
                           "sparsity", s->pruning.sparsity, "pattern", pat, "shift_zero_metrics",
                           s->pruning.shift_zero_metrics, "damp", s->pruning.damp, "blocksize", s->pruning.blocksize);
        bad |= js_set(d, "pruning", o);
        if (s->quantization.method == JS_QUANT_NONE) o = json_pack("{s:s}", "method", "none");
        else o = json_pack("{s:s,s:i,s:i,s:b,s:b,s:b}", "method", js_quant_names[s->quantization.method],
                           "bits", s->quantization.bits, "group_size", s->quantization.group_size,
                           "column_wise_grouping", s->quantization.column_wise_grouping,
                           "scale_important_weights", s->quantization.scale_important_weights,
                           "joint", s->quantization.joint);
        if (o && s->quantization.joint) bad |= js_set(o, "mixing_factor", json_real(s->quantization.mixing_factor));
        if (o && s->quantization.input) {
            bad |= js_set(o, "input", json_string(s->quantization.input));
            bad |= js_set(o, "input_bits", json_integer(s->quantization.input_bits));
            bad |= js_set(o, "input_group_size", json_integer(s->quantization.input_group_size));
        }
        bad |= js_set(d, "quantization", o);
        if (s->lowrank.method == JS_LOWRANK_NONE) o = json_pack("{s:s}", "method", "none");
        else o = json_pack("{s:s,s:f,s:b,s:i,s:b,s:b,s:b}", "method", js_lowrank_names[s->lowrank.method],
                           "rank_ratio", s->lowrank.rank_ratio, "quantize", s->lowrank.quantize, "tile", s->lowrank.tile,
                           "separate", s->lowrank.separate, "prune", s->lowrank.prune, "pad", s->lowrank.pad);
        bad |= js_set(d, "lowrank", o);
    }
    if (s->method == JS_METHOD_SLICEGPT)
        bad |= js_set(d, "slicegpt", json_pack("{s:f,s:i,s:b}", "sparsity", s->slicegpt.sparsity,
                      "round_to", s->slicegpt.round_to, "reference_compat", s->slicegpt.reference_compat));
    if (s->method != JS_METHOD_EVAL)
        bad |= js_set(d, "calibration", json_pack("{s:s,s:i,s:i,s:i}", "dataset", s->calibration.dataset,
                      "nsamples", s->calibration.nsamples, "seqlen", s->calibration.seqlen, "seed", s->calibration.seed));
    o = json_array();
    for (int i = 0; o && i < s->eval.n_perplexity; i++) bad |= json_array_append_new(o, json_string(s->eval.perplexity[i]));
    bad |= js_set(d, "eval", o ? json_pack("{s:o,s:i,s:b,s:i}", "perplexity", o, "seqlen", s->eval.seqlen,
                                           "baseline", s->eval.baseline, "batch", s->eval.batch) : NULL);
    bad |= js_set(d, "device", json_string(js_device_names[s->device]));
    bad |= js_set(d, "precision", json_string(js_precision_names[s->precision]));
    if (bad) { json_decref(d); return NULL; }
    return d;
}

/* ---- entry points ---- */

int jobspec_parse(struct jobspec *out, const json_t *doc, char *path, size_t path_len, struct slm_err *err)
{
    static const char *const known[] = { "version", "model", "method", "pruning", "quantization", "lowrank",
                                         "slicegpt", "calibration", "eval", "device", "precision", NULL };
    struct jsctx c = { err, path, path_len };
    json_t *pr, *qu, *lr, *sg, *ca, *ev;
    int rc, v;
    memset(out, 0, sizeof *out);
    if (path && path_len) path[0] = 0;
    if (!doc || !json_is_object(doc)) { rc = js_fail(&c, "", "the job spec must be a JSON object"); goto done; }
    if ((rc = js_keys(&c, doc, "", known))) goto done;
    if ((rc = js_int(&c, &out->version, doc, "", "version", JOBSPEC_VERSION, JOBSPEC_VERSION, JOBSPEC_VERSION))) goto done;
    if ((rc = js_enum(&c, &v, doc, "", "method", js_method_names, JS_METHOD_SLIM))) goto done;
    out->method = (enum js_method)v;
    if ((rc = js_enum(&c, &v, doc, "", "device", js_device_names, JS_DEVICE_AUTO))) goto done;
    out->device = (enum js_device)v;
    if ((rc = js_enum(&c, &v, doc, "", "precision", js_precision_names, JS_PRECISION_F32))) goto done;
    out->precision = (enum js_precision)v;
    if (out->precision == JS_PRECISION_BF16 && out->method != JS_METHOD_SLIM) {
        rc = js_fail(&c, "/precision", "\"bf16\" emulates the SLiM reference: only with method \"slim\"");
        goto done;
    }
    if ((rc = js_model(&c, out, doc))) goto done;
    if ((rc = js_section(&c, &pr, doc, "pruning")) || (rc = js_section(&c, &qu, doc, "quantization")) ||
        (rc = js_section(&c, &lr, doc, "lowrank")) || (rc = js_section(&c, &sg, doc, "slicegpt")) ||
        (rc = js_section(&c, &ca, doc, "calibration")) || (rc = js_section(&c, &ev, doc, "eval")))
        goto done;

    if (out->method != JS_METHOD_SLIM) {
        const char *which = out->method == JS_METHOD_SLICEGPT ? "slicegpt" : "eval";
        if (pr) { rc = js_fail(&c, "/pruning", "not allowed with method \"%s\"", which); goto done; }
        if (qu) { rc = js_fail(&c, "/quantization", "not allowed with method \"%s\"", which); goto done; }
        if (lr) { rc = js_fail(&c, "/lowrank", "not allowed with method \"%s\"", which); goto done; }
    }
    if (out->method != JS_METHOD_SLICEGPT && sg) {
        rc = js_fail(&c, "/slicegpt", "only with method \"slicegpt\"");
        goto done;
    }
    if (out->method == JS_METHOD_EVAL && ca) { rc = js_fail(&c, "/calibration", "not allowed with method \"eval\""); goto done; }
    if (out->method == JS_METHOD_SLICEGPT && !sg) { rc = js_fail(&c, "/slicegpt", "required with method \"slicegpt\""); goto done; }

    if ((rc = js_pruning(&c, out, pr)) || (rc = js_quantization(&c, out, qu)) || (rc = js_lowrank(&c, out, lr)))
        goto done;
    if (sg && (rc = js_slicegpt(&c, out, sg))) goto done;
    if (out->method != JS_METHOD_EVAL && (rc = js_calibration(&c, out, ca))) goto done;
    if ((rc = js_eval(&c, out, ev))) goto done;
    if ((rc = js_combinations(&c, out))) goto done;
    if (!(out->raw = jobspec_to_json(out))) rc = slm_err_set(err, SLM_ENOMEM, "job spec: out of memory");
done:
    if (rc) jobspec_free(out);
    return rc;
}

void jobspec_free(struct jobspec *s)
{
    if (!s) return;
    free(s->model.source);
    free(s->model.revision);
    free(s->quantization.input);
    free(s->calibration.dataset);
    for (int i = 0; i < s->eval.n_perplexity; i++) free(s->eval.perplexity[i]);
    free(s->eval.perplexity);
    json_decref(s->raw);
    memset(s, 0, sizeof *s);
}

static json_t *js_names(const char *const *names)
{
    json_t *a = json_array();
    for (int i = 0; a && names[i]; i++)
        if (json_array_append_new(a, json_string(names[i]))) { json_decref(a); return NULL; }
    return a;
}

json_t *jobspec_capabilities(void)
{
    return json_pack("{s:i,s:o,s:o,s:o,s:{s:o,s:[s,s],s:{s:f,s:b,s:f,s:i}},"
                     "s:{s:o,s:[i,i],s:o,s:{s:i,s:i,s:f}},"
                     "s:{s:o,s:{s:f,s:i,s:b,s:b,s:b}},"
                     "s:{s:{s:i,s:b}},"
                     "s:{s:{s:s,s:i,s:i,s:i},s:{s:i,s:i}},"
                     "s:{s:{s:[s],s:i,s:b,s:i}}}",
        "version", JOBSPEC_VERSION,
        "methods", js_names(js_method_names),
        "devices", js_names(js_device_names),
        "precisions", js_names(js_precision_names),
        "pruning", "methods", js_names(js_prune_names), "patterns", "unstructured", "N:M",
            "defaults", "sparsity", JS_DEF_SPARSITY, "shift_zero_metrics", 1, "damp", JS_DEF_DAMP,
            "blocksize", JS_DEF_BLOCKSIZE,
        "quantization", "methods", js_names(js_quant_names), "bits", 2, 8, "input", js_names(js_input_names),
            "defaults", "bits", JS_DEF_BITS, "group_size_absmax", JS_DEF_TILE, "mixing_factor", JS_DEF_MIXING,
        "lowrank", "methods", js_names(js_lowrank_names),
            "defaults", "rank_ratio", JS_DEF_RANK_RATIO, "tile", JS_DEF_TILE, "separate", 1, "pad", 1, "quantize", 0,
        "slicegpt", "defaults", "round_to", 8, "reference_compat", 0,
        "calibration", "defaults", "dataset", "c4", "nsamples", 128, "seqlen", JS_DEF_SEQLEN, "seed", 0,
            "limits", "nsamples", JS_MAX_NSAMPLES, "seqlen", JS_MAX_SEQLEN,
        "eval", "defaults", "perplexity", "wikitext2", "seqlen", JS_DEF_SEQLEN, "baseline", 1, "batch", 1);
}
