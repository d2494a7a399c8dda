/* tests/unit/core/stories_tokenizer.c: the stories260K tokenizer.json (tools/llama2c_tok_to_json.py
** from Karpathy's tok512.bin) encodes the TinyStories sample to exactly the ids llama2.c's own
** tokenizer produced (tinystories-ids.json: each story as BOS 1 + pieces, stories being the text
** between "<|endoftext|>" lines with surrounding whitespace trimmed), and decodes them back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../test_util.h"

#include "core/err.h"
#include "core/fileio.h"
#include "core/tokenizer.h"

#define SEPARATOR "<|endoftext|>"

static const char *data_path(const char *rel)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", test_data_dir(), rel);
    return buf;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

struct story { const char *s; size_t len; };

/* Stories of the sample: the text between separators, whitespace trimmed, empty ones dropped. */
static size_t split_stories(const char *text, size_t len, struct story *out, size_t max)
{
    size_t n = 0;
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *sep = memmem(p, (size_t)(end - p), SEPARATOR, strlen(SEPARATOR));
        const char *e = sep ? sep : end, *a = p;
        while (a < e && is_space(*a)) a++;
        while (e > a && is_space(e[-1])) e--;
        if (e > a) {
            assert_true(n < max);
            out[n++] = (struct story){a, (size_t)(e - a)};
        }
        p = sep ? sep + strlen(SEPARATOR) : end;
    }
    return n;
}

struct fixture { struct tokenizer *t; char *text; size_t len; json_t *ids; };

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    struct slm_err err = SLM_ERR_INIT;
    json_error_t je;
    if (!f) return -1;
    *state = f;
    if (tokenizer_open(&f->t, data_path("stories260K"), &err)) { fprintf(stderr, "%s\n", err.msg); return -1; }
    if (file_read_all(data_path("stories260K/tinystories-sample.txt"), 1 << 20, &f->text, &f->len, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    json_t *root = json_load_file(data_path("stories260K/tinystories-ids.json"), 0, &je);
    if (!root) { fprintf(stderr, "tinystories-ids.json: %s\n", je.text); return -1; }
    f->ids = json_incref(json_object_get(root, "ids"));
    json_decref(root);
    return json_is_array(f->ids) ? 0 : -1;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (!f) return 0;
    tokenizer_free(f->t);
    free(f->text);
    json_decref(f->ids);
    free(f);
    return 0;
}

static void test_core_stories_tokenizer__opens_as_llama2_sentencepiece(void **state)
{
    struct fixture *f = *state;
    assert_string_equal(tokenizer_kind(f->t), "bpe-sentencepiece");
    assert_int_equal(tokenizer_vocab_size(f->t), 512);
    assert_int_equal(tokenizer_bos_id(f->t), 1);
    assert_int_equal(tokenizer_eos_id(f->t), 2);
}

static void test_core_stories_tokenizer__encodes_sample_as_llama2c(void **state)
{
    struct fixture *f = *state;
    struct story st[64];
    size_t ns = split_stories(f->text, f->len, st, 64), at = 0, total = json_array_size(f->ids);
    assert_int_equal(ns, 5);
    for (size_t k = 0; k < ns; k++) {
        struct slm_err err = SLM_ERR_INIT;
        int32_t *ids = NULL;
        size_t n = 0;
        if (tokenizer_encode(f->t, st[k].s, st[k].len, true, &ids, &n, &err)) fail_msg("story %zu: %s", k, err.msg);
        assert_true(n > 1);
        assert_int_equal(ids[0], 1);
        for (size_t i = 0; i < n; i++) {
            if (at + i >= total) fail_msg("story %zu: %zu ids run past the %zu reference ids", k, n, total);
            json_int_t want = json_integer_value(json_array_get(f->ids, at + i));
            if (ids[i] != want) fail_msg("story %zu: id %zu is %d, llama2.c has %lld", k, i, ids[i], (long long)want);
        }
        /* the reference's next story starts right after this one */
        if (at + n < total) assert_int_equal(json_integer_value(json_array_get(f->ids, at + n)), 1);
        at += n;
        free(ids);
    }
    assert_int_equal(at, total);
}

static void test_core_stories_tokenizer__decodes_ids_back_to_text(void **state)
{
    struct fixture *f = *state;
    struct story st[64];
    size_t ns = split_stories(f->text, f->len, st, 64), total = json_array_size(f->ids);
    int32_t *all = malloc(total * sizeof *all);
    assert_non_null(all);
    for (size_t i = 0; i < total; i++) all[i] = (int32_t)json_integer_value(json_array_get(f->ids, i));
    size_t k = 0;
    for (size_t a = 0; a < total; k++) {
        size_t b = a + 1;
        while (b < total && all[b] != 1) b++;
        assert_true(k < ns);
        struct slm_err err = SLM_ERR_INIT;
        char *text = NULL;
        /* BOS and the dummy-prefix space disappear, as transformers' decode(skip_special_tokens) */
        if (tokenizer_decode(f->t, all + a + 1, b - a - 1, &text, &err)) fail_msg("story %zu: %s", k, err.msg);
        if (strlen(text) != st[k].len || memcmp(text, st[k].s, st[k].len) != 0)
            fail_msg("story %zu decodes to \"%.60s...\"", k, text);
        free(text);
        a = b;
    }
    assert_int_equal(k, ns);
    free(all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_stories_tokenizer__opens_as_llama2_sentencepiece),
        cmocka_unit_test(test_core_stories_tokenizer__encodes_sample_as_llama2c),
        cmocka_unit_test(test_core_stories_tokenizer__decodes_ids_back_to_text),
    };
    return cmocka_run_group_tests_name("core/stories_tokenizer", tests, setup, teardown);
}
