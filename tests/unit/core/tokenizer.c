/* tests/unit/core/tokenizer.c: tokenizers without node: GPT-2 ids from the reference, a hand-made
** SentencePiece-style tokenizer.json (byte fallback, added tokens, BOS), malformed files, Unicode
** classes. The parity test (tests/tokenizer/parity.sh) covers real LLaMA-2/LLaMA-3 files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../test_util.h"

#include "core/err.h"
#include "core/tokenizer.h"
#include "core/tokenizer_impl.h"
#include "core/unicode.h"

/* ---- helpers ---- */

static char *data_path(const char *rel)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", test_data_dir(), rel);
    return buf;
}

struct tmpdir { char path[64]; char files[8][128]; int n; };

static void tmp_make(struct tmpdir *d)
{
    strcpy(d->path, "/tmp/slm-tok-XXXXXX");
    assert_non_null(mkdtemp(d->path));
    d->n = 0;
}

static void tmp_write(struct tmpdir *d, const char *name, const char *text)
{
    assert_true(d->n < 8);
    char path[sizeof d->files[0]];
    snprintf(path, sizeof path, "%s/%s", d->path, name);
    memcpy(d->files[d->n], path, sizeof path);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    d->n++;
}

static void tmp_remove(struct tmpdir *d)
{
    for (int i = 0; i < d->n; i++) unlink(d->files[i]);
    rmdir(d->path);
}

static void assert_ids(struct tokenizer *t, const char *text, bool special, const int32_t *want, size_t nwant)
{
    struct slm_err err = SLM_ERR_INIT;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tokenizer_encode(t, text, strlen(text), special, &ids, &n, &err);
    if (rc) fail_msg("encode \"%s\": %s", text, err.msg);
    if (n != nwant) fail_msg("encode \"%s\": %zu ids, want %zu", text, n, nwant);
    for (size_t i = 0; i < n; i++)
        if (ids[i] != want[i]) fail_msg("encode \"%s\": id %zu is %d, want %d", text, i, ids[i], want[i]);
    free(ids);
}

static void assert_decodes(struct tokenizer *t, const int32_t *ids, size_t n, const char *want)
{
    struct slm_err err = SLM_ERR_INIT;
    char *text = NULL;
    int rc = tokenizer_decode(t, ids, n, &text, &err);
    if (rc) fail_msg("decode: %s", err.msg);
    assert_string_equal(text, want);
    free(text);
}

#define IDS(...) (const int32_t[]){__VA_ARGS__}, sizeof((const int32_t[]){__VA_ARGS__}) / sizeof(int32_t)

/* ---- GPT-2: vocab.json + merges.txt ---- */

/* Expected ids were produced once by the reference implementation (@lenml/tokenizers 3.7.2, the
** transformers.js port, with GPT-2's vocab.json/merges.txt) and are hard-coded here so this test
** runs without node. */
static void test_core_tokenizer__gpt2_matches_reference_ids(void **state)
{
    (void)state;
    struct slm_err err = SLM_ERR_INIT;
    struct tokenizer *t;
    if (tokenizer_open(&t, data_path("tokenizers/gpt2"), &err)) fail_msg("%s", err.msg);
    assert_string_equal(tokenizer_kind(t), "bpe-bytelevel");
    assert_int_equal(tokenizer_vocab_size(t), 50257);
    assert_int_equal(tokenizer_eos_id(t), 50256);
    assert_ids(t, "Hello world, it's a test!", true, IDS(15496, 995, 11, 340, 338, 257, 1332, 0));
    assert_ids(t, "  multiple   spaces\n\nnew", false, IDS(220, 3294, 220, 220, 9029, 198, 198, 3605));
    assert_ids(t, "na\xc3\xafve caf\xc3\xa9 \xf0\x9f\x98\x80 \xe4\xbd\xa0\xe5\xa5\xbd", false,
               IDS(2616, 38776, 40304, 30325, 222, 220, 19526, 254, 25001, 121));
    assert_ids(t, "x<|endoftext|>y", false, IDS(87, 50256, 88));
    assert_ids(t, "I'VE 12345 \t tabs", false, IDS(40, 6, 6089, 17031, 2231, 220, 197, 22524));
    assert_ids(t, "", true, NULL, 0);
    assert_decodes(t, IDS(15496, 995, 11, 340, 338, 257, 1332, 0), "Hello world, it's a test!");
    /* the first two bytes of a three-byte character are one U+FFFD (maximal subpart, as Rust's
    ** from_utf8_lossy and TextDecoder), a stray continuation byte is another */
    assert_decodes(t, IDS(19526), "\xef\xbf\xbd");
    assert_decodes(t, IDS(19526, 254), "\xe4\xbd\xa0");
    assert_decodes(t, IDS(254, 19526), "\xef\xbf\xbd\xef\xbf\xbd");
    tokenizer_free(t);
}

static void test_core_tokenizer__gpt2_config_adds_bos(void **state)
{
    (void)state;
    struct slm_err err = SLM_ERR_INIT;
    struct tokenizer *t;
    struct tmpdir d;
    tmp_make(&d);
    /* OPT's layout: GPT-2 files plus tokenizer_config.json asking for a BOS token */
    tmp_write(&d, "tokenizer_config.json",
              "{\"add_bos_token\": true, \"bos_token\": {\"content\": \"<|endoftext|>\", \"__type\": \"AddedToken\"},"
              " \"model_max_length\": 1000000000000000019884624838656}");
    char vocab[4096], merges[4096];
    snprintf(vocab, sizeof vocab, "%s", data_path("tokenizers/gpt2/vocab.json"));
    snprintf(merges, sizeof merges, "%s", data_path("tokenizers/gpt2/merges.txt"));
    int rc = tokenizer_open_files(&t, NULL, vocab, merges, d.files[0], NULL, &err);
    tmp_remove(&d);
    if (rc) fail_msg("%s", err.msg);
    assert_int_equal(tokenizer_bos_id(t), 50256);
    assert_ids(t, "Hello", true, IDS(50256, 15496));
    assert_ids(t, "Hello", false, IDS(15496));
    tokenizer_free(t);
}

/* ---- a hand-made SentencePiece-style tokenizer.json ---- */

/* ids: <unk> 0, <s> 1, </s> 2, <0x00>..<0xFF> 3..258, "▁" 259, a 260, b 261, ▁a 262, ab 263, ▁ab 264 */
static char *sp_json(const char *merges, const char *model_extra)
{
    static char buf[32768];
    int n = snprintf(buf, sizeof buf,
        "{\"added_tokens\": ["
        "{\"id\": 0, \"content\": \"<unk>\", \"special\": true},"
        "{\"id\": 1, \"content\": \"<s>\", \"special\": true},"
        "{\"id\": 2, \"content\": \"</s>\", \"special\": true}],"
        "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": ["
        "{\"type\": \"Prepend\", \"prepend\": \"\xe2\x96\x81\"},"
        "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\xe2\x96\x81\"}]},"
        "\"pre_tokenizer\": null,"
        "\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": ["
        "{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}],"
        "\"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [1], \"tokens\": [\"<s>\"]}}},"
        "\"decoder\": {\"type\": \"Sequence\", \"decoders\": ["
        "{\"type\": \"Replace\", \"pattern\": {\"String\": \"\xe2\x96\x81\"}, \"content\": \" \"},"
        "{\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"},"
        "{\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]},"
        "\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true, \"byte_fallback\": true%s,"
        "\"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2, ", model_extra);
    for (int b = 0; b < 256; b++) n += snprintf(buf + n, sizeof buf - (size_t)n, "\"<0x%02X>\": %d, ", b, 3 + b);
    snprintf(buf + n, sizeof buf - (size_t)n,
             "\"\xe2\x96\x81\": 259, \"a\": 260, \"b\": 261, \"\xe2\x96\x81" "a\": 262, \"ab\": 263,"
             " \"\xe2\x96\x81" "ab\": 264}, \"merges\": %s}}", merges);
    return buf;
}

static int open_json_text(struct tokenizer **t, const char *text, struct slm_err *err)
{
    struct tmpdir d;
    tmp_make(&d);
    tmp_write(&d, "tokenizer.json", text);
    int rc = tokenizer_open(t, d.path, err);
    tmp_remove(&d);
    return rc;
}

static void test_core_tokenizer__sentencepiece_byte_fallback(void **state)
{
    (void)state;
    struct slm_err err = SLM_ERR_INIT;
    struct tokenizer *t;
    /* string merges and the newer [a, b] form must read the same */
    const char *forms[] = {"[\"\xe2\x96\x81 a\", \"a b\", \"\xe2\x96\x81" "a b\"]",
                           "[[\"\xe2\x96\x81\", \"a\"], [\"a\", \"b\"], [\"\xe2\x96\x81" "a\", \"b\"]]"};
    for (int f = 0; f < 2; f++) {
        if (open_json_text(&t, sp_json(forms[f], ""), &err)) fail_msg("%s", err.msg);
        assert_string_equal(tokenizer_kind(t), "bpe-sentencepiece");
        assert_int_equal(tokenizer_bos_id(t), 1);
        /* "▁ab▁é": ▁+a (rank 0) then ▁a+b (rank 2); é is not in the vocabulary -> its bytes C3 A9 */
        assert_ids(t, "ab \xc3\xa9", true, IDS(1, 264, 259, 3 + 0xC3, 3 + 0xA9));
        /* "▁ba": no merge applies to ▁ b, b a */
        assert_ids(t, "ba", false, IDS(259, 261, 260));
        /* Strip removes the leading space only when the text starts with one: not after "<s>" */
        assert_decodes(t, IDS(1, 264, 259, 3 + 0xC3, 3 + 0xA9), "<s> ab \xc3\xa9");
        assert_decodes(t, IDS(264, 259, 3 + 0xC3, 3 + 0xA9), "ab \xc3\xa9");
        assert_decodes(t, IDS(264, 3 + 0xC3), "ab\xef\xbf\xbd");   /* a lone byte is U+FFFD */
        tokenizer_free(t);
    }
}

static void test_core_tokenizer__long_word_merges_in_n_log_n(void **state)
{
    (void)state;
    struct slm_err err = SLM_ERR_INIT;
    struct tokenizer *t;
    if (open_json_text(&t, sp_json("[\"\xe2\x96\x81 a\", \"a b\", \"\xe2\x96\x81" "a b\"]", ""), &err))
        fail_msg("%s", err.msg);
    /* no pre-tokenizer: 400,000 characters are one word (a quadratic merge loop would take minutes) */
    enum { PAIRS = 200000 };
    char *text = malloc(2 * PAIRS + 1);
    assert_non_null(text);
    for (int i = 0; i < PAIRS; i++) { text[2 * i] = 'a'; text[2 * i + 1] = 'b'; }
    text[2 * PAIRS] = '\0';
    int32_t *ids = NULL;
    size_t n = 0;
    if (tokenizer_encode(t, text, 2 * PAIRS, false, &ids, &n, &err)) fail_msg("%s", err.msg);
    /* "▁abab...": ▁+a (rank 0) first, then a+b (rank 1) everywhere else, then ▁a+b (rank 2) */
    assert_int_equal(n, PAIRS);
    assert_int_equal(ids[0], 264);
    for (size_t i = 1; i < n; i++) if (ids[i] != 263) fail_msg("id %zu is %d", i, ids[i]);
    char *back = NULL;
    if (tokenizer_decode(t, ids, n, &back, &err)) fail_msg("%s", err.msg);
    assert_string_equal(back, text);
    free(back);
    free(ids);
    free(text);
    tokenizer_free(t);
}

static void test_core_tokenizer__added_tokens_split_first(void **state)
{
    (void)state;
    struct slm_err err = SLM_ERR_INIT;
    struct tokenizer *t;
    if (open_json_text(&t, sp_json("[\"\xe2\x96\x81 a\", \"a b\", \"\xe2\x96\x81" "a b\"]", ""), &err))
        fail_msg("%s", err.msg);
    /* sections "a", "</s>", "b": each is normalized alone, so "b" gets its own ▁ */
    assert_ids(t, "a</s>b", true, IDS(1, 262, 2, 259, 261));
    assert_ids(t, "<s><s>", false, IDS(1, 1));
    assert_ids(t, "</s", false, IDS(259, 3 + '<', 3 + '/', 3 + 's'));   /* not a match: bytes */
    int32_t bad = 9999;
    char *text = NULL;
    assert_int_equal(tokenizer_decode(t, &bad, 1, &text, &err), -SLM_EINVAL);
    assert_null(text);
    tokenizer_free(t);
}

static void test_core_tokenizer__unknown_without_byte_fallback_fuses(void **state)
{
    (void)state;
    struct slm_err err = SLM_ERR_INIT;
    struct tokenizer *t;
    char *j = sp_json("[]", "");
    /* same tokenizer with byte_fallback off: unknown characters become one fused <unk> */
    char *p = strstr(j, "\"byte_fallback\": true");
    assert_non_null(p);
    memcpy(p, "\"byte_fallback\":false", strlen("\"byte_fallback\":false"));
    if (open_json_text(&t, j, &err)) fail_msg("%s", err.msg);
    assert_ids(t, "a\xc3\xa9\xc3\xa8", false, IDS(259, 260, 0));
    tokenizer_free(t);
}

/* ---- errors ---- */

static void expect_open_error(const char *text, int want_rc, const char *want_in_msg)
{
    struct slm_err err = SLM_ERR_INIT;
    struct tokenizer *t = (struct tokenizer *)&err;   /* must be reset to NULL */
    int rc = open_json_text(&t, text, &err);
    if (rc != want_rc) fail_msg("rc %d, want %d (%s)", rc, want_rc, err.msg);
    assert_null(t);
    if (!strstr(err.msg, want_in_msg)) fail_msg("message \"%s\" lacks \"%s\"", err.msg, want_in_msg);
    assert_null(strchr(err.msg, '\n'));
}

static void test_core_tokenizer__malformed_files_are_clear_errors(void **state)
{
    (void)state;
    expect_open_error("{not json", -SLM_EFORMAT, "line 1");
    expect_open_error("[1, 2]", -SLM_EFORMAT, "not a JSON object");
    expect_open_error("{\"added_tokens\": []}", -SLM_EFORMAT, "no \"model\" object");
    expect_open_error("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", -SLM_EUNSUPPORTED, "WordPiece");
    expect_open_error("{\"model\": {\"type\": \"BPE\", \"vocab\": [], \"merges\": []}}", -SLM_EFORMAT, "vocab");
    expect_open_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}}", -SLM_EFORMAT,
                      "integer id");
    /* merges naming tokens that do not exist, or shaped wrong */
    expect_open_error(sp_json("[\"a c\"]", ""), -SLM_EFORMAT, "\"c\" is not in the vocabulary");
    expect_open_error(sp_json("[\"b a\"]", ""), -SLM_EFORMAT, "\"ba\" is not in the vocabulary");
    expect_open_error(sp_json("[\"ab\"]", ""), -SLM_EFORMAT, "not two tokens");
    expect_open_error(sp_json("[42]", ""), -SLM_EFORMAT, "merge 0");
    expect_open_error(sp_json("[[\"a\"]]", ""), -SLM_EFORMAT, "merge 0");
    /* things we cannot honour are refused, not ignored */
    expect_open_error(sp_json("[]", ", \"continuing_subword_prefix\": \"##\""), -SLM_EUNSUPPORTED,
                      "continuing_subword_prefix");
    expect_open_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []},"
                      " \"normalizer\": {\"type\": \"NFKC\"}}", -SLM_EUNSUPPORTED, "NFKC");
    expect_open_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []},"
                      " \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\d+\"},"
                      " \"behavior\": \"Isolated\"}}", -SLM_EUNSUPPORTED, "Split regex");
    expect_open_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []},"
                      " \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", -SLM_EFORMAT, "byte 0x00");
    expect_open_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}}",
                      -SLM_EFORMAT, "token id 0");
}

static void test_core_tokenizer__folder_without_files_is_notfound(void **state)
{
    (void)state;
    struct slm_err err = SLM_ERR_INIT;
    struct tokenizer *t = NULL;
    struct tmpdir d;
    tmp_make(&d);
    tmp_write(&d, "vocab.json", "{}");   /* vocab.json alone is not a tokenizer */
    assert_int_equal(tokenizer_open(&t, d.path, &err), -SLM_ENOTFOUND);
    assert_null(t);
    assert_non_null(strstr(err.msg, d.path));
    tmp_remove(&d);
}

/* ---- Unicode classes ---- */

static void test_core_tokenizer__unicode_classes(void **state)
{
    (void)state;
    assert_true(unicode_is_letter('a') && unicode_is_letter(0xE9) && unicode_is_letter(0x4F60));
    assert_true(unicode_is_letter(0x05D0) && unicode_is_letter(0x0628));   /* Hebrew, Arabic */
    assert_false(unicode_is_letter(0x0301));   /* combining acute: Mn */
    assert_false(unicode_is_letter('1') || unicode_is_letter(' ') || unicode_is_letter(0x1F600));
    assert_true(unicode_is_number('7') && unicode_is_number(0x0663) && unicode_is_number(0x216B) &&
                unicode_is_number(0xBD));   /* Arabic-Indic 3, Roman XII (Nl), 1/2 (No) */
    assert_false(unicode_is_number('x'));
    assert_true(unicode_is_space('\t') && unicode_is_space(0x3000) && unicode_is_space(0xA0));
    assert_false(unicode_is_space(0x200B) || unicode_is_space('_'));
    uint32_t cp;
    assert_int_equal(utf8_decode((const unsigned char *)"\xf0\x9f\x98\x80", 4, &cp), 4);
    assert_int_equal(cp, 0x1F600);
    assert_int_equal(utf8_decode((const unsigned char *)"\xe4\xbd", 2, &cp), 1);   /* truncated */
    assert_int_equal(cp, 0xFFFD);
    assert_int_equal(utf8_decode((const unsigned char *)"\xc0\x80", 2, &cp), 1);   /* overlong */
    assert_int_equal(cp, 0xFFFD);
}

static void test_core_tokenizer__gpt2_byte_map_round_trips(void **state)
{
    (void)state;
    /* GPT-2's bytes_to_unicode: printable bytes stand for themselves, the 68 others take 256.. */
    assert_int_equal(tok_byte_to_cp('A'), 'A');
    assert_int_equal(tok_byte_to_cp(' '), 0x120);    /* the familiar "Ġ" */
    assert_int_equal(tok_byte_to_cp('\n'), 0x10A);   /* "Ċ" */
    assert_int_equal(tok_byte_to_cp(0x00), 0x100);
    assert_int_equal(tok_byte_to_cp(0x7F), 0x121);
    assert_int_equal(tok_byte_to_cp(0xAD), 0x143);
    for (unsigned b = 0; b < 256; b++) assert_int_equal(tok_cp_to_byte(tok_byte_to_cp((unsigned char)b)), b);
    assert_int_equal(tok_cp_to_byte(0x144), -1);
    assert_int_equal(tok_cp_to_byte(0xAD), -1);       /* a byte that is not its own code point */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_tokenizer__gpt2_matches_reference_ids),
        cmocka_unit_test(test_core_tokenizer__gpt2_config_adds_bos),
        cmocka_unit_test(test_core_tokenizer__sentencepiece_byte_fallback),
        cmocka_unit_test(test_core_tokenizer__long_word_merges_in_n_log_n),
        cmocka_unit_test(test_core_tokenizer__added_tokens_split_first),
        cmocka_unit_test(test_core_tokenizer__unknown_without_byte_fallback_fuses),
        cmocka_unit_test(test_core_tokenizer__malformed_files_are_clear_errors),
        cmocka_unit_test(test_core_tokenizer__folder_without_files_is_notfound),
        cmocka_unit_test(test_core_tokenizer__unicode_classes),
        cmocka_unit_test(test_core_tokenizer__gpt2_byte_map_round_trips),
    };
    return cmocka_run_group_tests_name("core/tokenizer", tests, NULL, NULL);
}
