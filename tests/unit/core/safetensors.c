/*
** tests/unit/core/safetensors.c: the safetensors reader, writer and model folders.
** Round trips for every dtype (0-d and empty tensors too), f16/bf16/f64 conversion, the real
** tiny-opt fixture (read, and re-written byte for byte as the reference writer wrote it),
** sharded folders, and a table of hand-made malformed files and folders, each of which must give
** its specific error code and a message naming the problem.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../test_util.h"

#include "core/safetensors.h"

/* ---- helpers: temp folders, files, in-memory images ---- */

struct tmpdir { char path[64]; char files[16][128]; int n; };

static void tmp_make(struct tmpdir *t)
{
    memset(t, 0, sizeof *t);
    snprintf(t->path, sizeof t->path, "/tmp/slim-st-XXXXXX");
    assert_non_null(mkdtemp(t->path));
}

/* Full path of file name inside t, remembered for cleanup. */
static const char *tmp_file(struct tmpdir *t, const char *name)
{
    assert_true(t->n < 16);
    char full[sizeof t->files[0]];
    snprintf(full, sizeof full, "%s/%s", t->path, name);
    memcpy(t->files[t->n], full, sizeof full);
    return t->files[t->n++];
}

static void tmp_remove(struct tmpdir *t)
{
    for (int i = 0; i < t->n; i++) unlink(t->files[i]);
    assert_int_equal(rmdir(t->path), 0);
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static uint8_t *read_bytes(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(*n ? *n : 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, *n, f), *n);
    fclose(f);
    return p;
}

/* An image: 8-byte LE length field hl_field, the header text, data_len bytes of data. */
static uint8_t *image(uint64_t hl_field, const char *hdr, size_t data_len, size_t *len)
{
    size_t hl = strlen(hdr);
    *len = 8 + hl + data_len;
    uint8_t *p = calloc(1, *len);
    assert_non_null(p);
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(hl_field >> (8 * i));
    memcpy(p + 8, hdr, hl);
    for (size_t i = 0; i < data_len; i++) p[8 + hl + i] = (uint8_t)(i * 7 + 1);
    return p;
}

static void expect_bad_mem(const void *buf, size_t len, enum slm_rc code, const char *substr, const char *what)
{
    struct safetensors *st = NULL;
    struct slm_err err = SLM_ERR_INIT;
    int rc = safetensors_open_mem(&st, buf, len, &err);
    if (rc != -(int)code || !strstr(err.msg, substr))
        fail_msg("%s: got rc %d '%s', want %d with '%s'", what, rc, err.msg, -(int)code, substr);
    assert_null(st);
}

/* ---- malformed files ---- */

struct bad_case {
    const char *what;
    const char *hdr;
    size_t data_len;
    enum slm_rc code;
    const char *msg;
};

static const struct bad_case bad_headers[] = {
    {"header not starting with '{'", " {}", 0, SLM_EFORMAT, "does not start with '{'"},
    {"array header", "[]", 0, SLM_EFORMAT, "does not start with '{'"},
    {"non-object (string) header", "\"abc\"", 0, SLM_EFORMAT, "does not start with '{'"},
    {"invalid JSON", "{\"a\":", 0, SLM_EFORMAT, "header JSON"},
    {"garbage after the object", "{} x", 0, SLM_EFORMAT, "header JSON"},
    {"invalid UTF-8", "{\"\xff\":1}", 0, SLM_EFORMAT, "header JSON"},
    {"NUL escape in a name", "{\"a\\u0000b\":{}}", 0, SLM_EFORMAT, "header JSON"},
    {"dim over int64", "{\"a\":{\"dtype\":\"U8\",\"shape\":[99999999999999999999],\"data_offsets\":[0,1]}}", 1,
     SLM_EFORMAT, "header JSON"},
    {"duplicate keys", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                       "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, SLM_EFORMAT, "duplicate"},
    {"unknown dtype", "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, SLM_EDTYPE,
     "tensor 'w': unknown dtype 'F8_E4M3'"},
    {"dtype not a string", "{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, SLM_EFORMAT,
     "tensor 'w': dtype missing"},
    {"negative dim", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, SLM_EFORMAT,
     "tensor 'w': dim 0 is negative"},
    {"non-integer dim", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1.5],\"data_offsets\":[0,4]}}", 4, SLM_EFORMAT,
     "tensor 'w': dim 1 is not an integer"},
    {"string dim", "{\"w\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4, SLM_EFORMAT,
     "dim 0 is not an integer"},
    {"shape not an array", "{\"w\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", 4, SLM_EFORMAT,
     "tensor 'w': shape missing"},
    {"too many dims", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
     SLM_EFORMAT, "9 dims is over the limit of 8"},
    {"shape product overflow", "{\"w\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,2],\"data_offsets\":[0,1]}}",
     1, SLM_EFORMAT, "tensor 'w': element count overflows"},
    {"numel x size overflow", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,1]}}", 1,
     SLM_EFORMAT, "tensor 'w': byte size"},
    {"offsets reversed", "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4, SLM_EFORMAT,
     "end 0 before begin 4"},
    {"offset past EOF", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1000],\"data_offsets\":[0,1000]}}", 8, SLM_EFORMAT,
     "past the data region (8 bytes)"},
    {"negative offset", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 1, SLM_EFORMAT,
     "not non-negative integers"},
    {"three offsets", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 1, SLM_EFORMAT,
     "not [begin, end]"},
    {"missing data_offsets", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, SLM_EFORMAT, "tensor 'w': data_offsets missing"},
    {"shape/size mismatch", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, SLM_EFORMAT,
     "4 bytes but shape x dtype needs 8"},
    {"overlapping ranges", "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
                           "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[4,12]}}", 12, SLM_EFORMAT,
     "tensor 'b' overlaps tensor 'a'"},
    {"empty tensor inside another", "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
                                    "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,4]}}", 8, SLM_EFORMAT,
     "tensor 'z' overlaps tensor 'a'"},
    {"hole between ranges", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                            "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]}}", 12, SLM_EFORMAT,
     "hole of 4 bytes before tensor 'b'"},
    {"hole at the start", "{\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}", 8, SLM_EFORMAT,
     "hole of 4 bytes before tensor 'b'"},
    {"trailing unused bytes", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 8, SLM_EFORMAT,
     "4 trailing bytes"},
    {"extra field in entry", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"foo\":1}}", 1, SLM_EFORMAT,
     "tensor 'w': unknown field 'foo'"},
    {"entry not an object", "{\"w\":[1,2]}", 0, SLM_EFORMAT, "tensor 'w': entry is not an object"},
    {"empty tensor name", "{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, SLM_EFORMAT, "empty name"},
    {"metadata not an object", "{\"__metadata__\":[\"a\"]}", 0, SLM_EFORMAT, "__metadata__ is not an object"},
    {"metadata value not a string", "{\"__metadata__\":{\"k\":1}}", 0, SLM_EFORMAT,
     "__metadata__ value of 'k' is not a string"},
};

static void test_core_safetensors__malformed_headers_give_specific_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_headers / sizeof bad_headers[0]; i++) {
        const struct bad_case *c = &bad_headers[i];
        size_t len;
        uint8_t *img = image(strlen(c->hdr), c->hdr, c->data_len, &len);
        expect_bad_mem(img, len, c->code, c->msg, c->what);
        free(img);
    }
}

static void test_core_safetensors__malformed_length_field(void **state)
{
    (void)state;
    size_t len;
    uint8_t *img = image(2, "{}", 0, &len);
    for (size_t n = 0; n < 8; n++) expect_bad_mem(img, n, SLM_EFORMAT, "shorter than the 8-byte header length", "truncated file");
    expect_bad_mem(img, 9, SLM_EFORMAT, "header length 2 exceeds file size 9", "file cut inside the header");
    free(img);
    img = image(100, "{}", 10, &len);
    expect_bad_mem(img, len, SLM_EFORMAT, "header length 100 exceeds file size 20", "header length past EOF");
    free(img);
    img = image(0, "{}", 0, &len);
    expect_bad_mem(img, len, SLM_EFORMAT, "header length is 0", "header length 0");
    free(img);
    img = image((uint64_t)ST_MAX_HEADER + 1, "{}", 0, &len);
    expect_bad_mem(img, len, SLM_EFORMAT, "exceeds the 104857600 byte cap", "header over the cap");
    free(img);
    img = image(UINT64_MAX, "{}", 0, &len);
    expect_bad_mem(img, len, SLM_EFORMAT, "byte cap", "header length 2^64-1");
    free(img);
}

/* A real file cut short: the error names the file. */
static void test_core_safetensors__truncated_file_on_disk(void **state)
{
    (void)state;
    struct tmpdir td;
    struct slm_err err = SLM_ERR_INIT;
    struct st_writer *w;
    tmp_make(&td);
    const char *path = tmp_file(&td, "cut.safetensors");
    float v[16] = { 0 };
    int64_t shape[1] = { 16 };
    assert_int_equal(st_writer_open(&w, path, &err), 0);
    assert_int_equal(st_writer_add_f32(w, "v", DT_F32, 1, shape, v, &err), 0);
    assert_int_equal(st_writer_finish(w, &err), 0);
    assert_int_equal(truncate(path, 70), 0);
    struct safetensors *st = NULL;
    assert_int_equal(safetensors_open(&st, path, &err), -SLM_EFORMAT);
    assert_non_null(strstr(err.msg, "cut.safetensors: tensor 'v': data_offsets end 64 past the data region"));
    assert_null(st);
    slm_err_clear(&err);
    assert_int_equal(safetensors_open(&st, tmp_file(&td, "absent.safetensors"), &err), -SLM_ENOTFOUND);
    tmp_remove(&td);
}

/* ---- round trips ---- */

static void test_core_safetensors__round_trip_every_dtype(void **state)
{
    (void)state;
    struct tmpdir td;
    struct slm_err err = SLM_ERR_INIT;
    struct st_writer *w;
    uint8_t src[8 * 2 * 3 * 5];
    for (size_t i = 0; i < sizeof src; i++) src[i] = (uint8_t)(i * 37 + 11);
    tmp_make(&td);
    const char *path = tmp_file(&td, "all.safetensors");
    int64_t shape[3] = { 2, 3, 5 };
    char name[32];
    assert_int_equal(st_writer_open(&w, path, &err), 0);
    /* insertion order deliberately not the file order the writer picks */
    for (int d = 0; d < DT_COUNT; d++) {
        snprintf(name, sizeof name, "t_%s", dtype_traits((enum dtype)d)->name);
        assert_int_equal(st_writer_add(w, name, (enum dtype)d, 3, shape, src, &err), 0);
    }
    int64_t empty[2] = { 3, 0 };
    float one = 4.5f;
    assert_int_equal(st_writer_add(w, "scalar", DT_F32, 0, NULL, &one, &err), 0);
    assert_int_equal(st_writer_add(w, "empty", DT_BF16, 2, empty, NULL, &err), 0);
    assert_int_equal(st_writer_add(w, "empty1", DT_U8, 1, empty + 1, NULL, &err), 0);
    assert_int_equal(st_writer_set_metadata(w, "format", "pt", &err), 0);
    assert_int_equal(st_writer_set_metadata(w, "note", "h\xc3\xa9llo", &err), 0);
    assert_int_equal(st_writer_finish(w, &err), 0);
    assert_int_equal(access(td.files[0], F_OK), 0);
    char tmpname[160];
    snprintf(tmpname, sizeof tmpname, "%s.tmp", path);
    assert_int_equal(access(tmpname, F_OK), -1);   /* renamed into place */

    struct safetensors *st;
    assert_int_equal(safetensors_open(&st, path, &err), 0);
    assert_int_equal(safetensors_count(st), DT_COUNT + 3);
    for (int d = 0; d < DT_COUNT; d++) {
        snprintf(name, sizeof name, "t_%s", dtype_traits((enum dtype)d)->name);
        const struct st_tensor *t = safetensors_find(st, name);
        assert_non_null(t);
        assert_string_equal(t->name, name);
        assert_int_equal(t->dtype, d);
        assert_int_equal(t->ndim, 3);
        assert_int_equal(t->shape[0], 2);
        assert_int_equal(t->shape[2], 5);
        assert_int_equal(t->numel, 30);
        assert_int_equal(t->nbytes, 30 * dtype_traits((enum dtype)d)->size);
        assert_memory_equal(t->data, src, t->nbytes);
        /* the reference order puts wider types first: every tensor is aligned in the mapping */
        assert_int_equal((uintptr_t)t->data % dtype_traits((enum dtype)d)->size, 0);
    }
    const struct st_tensor *s = safetensors_find(st, "scalar"), *e = safetensors_find(st, "empty");
    assert_non_null(s);
    assert_int_equal(s->ndim, 0);
    assert_int_equal(s->numel, 1);
    float got;
    assert_int_equal(st_tensor_to_f32(&got, s, &err), 0);
    assert_true(got == 4.5f);
    assert_non_null(e);
    assert_int_equal(e->ndim, 2);
    assert_int_equal(e->numel, 0);
    assert_int_equal(e->nbytes, 0);
    assert_int_equal(st_tensor_to_f32(NULL, e, &err), 0);
    assert_int_equal(safetensors_find(st, "empty1")->numel, 0);
    assert_null(safetensors_find(st, "t_F8"));
    assert_null(safetensors_find(st, "__metadata__"));
    assert_string_equal(safetensors_metadata(st, "format"), "pt");
    assert_string_equal(safetensors_metadata(st, "note"), "h\xc3\xa9llo");
    assert_null(safetensors_metadata(st, "absent"));
    /* safetensors_at walks file order: offsets increase */
    for (size_t i = 1; i < safetensors_count(st); i++)
        assert_true((const uint8_t *)safetensors_at(st, i)->data >=
                    (const uint8_t *)safetensors_at(st, i - 1)->data + safetensors_at(st, i - 1)->nbytes);
    assert_null(safetensors_at(st, safetensors_count(st)));
    assert_int_equal(st_tensor_to_f32(&got, safetensors_find(st, "t_I32"), &err), -SLM_EDTYPE);
    assert_non_null(strstr(err.msg, "tensor 't_I32': I32 does not convert to float"));
    safetensors_close(st);
    tmp_remove(&td);
}

static void test_core_safetensors__half_precision_conversions(void **state)
{
    (void)state;
    struct tmpdir td;
    struct slm_err err = SLM_ERR_INIT;
    struct st_writer *w;
    /* exactly representable in bf16 and f16 */
    const float v[6] = { 1.0f, -2.5f, 0.0f, 0.15625f, 96.0f, -0.375f };
    const uint16_t bf16_bits[3] = { 0x3f80, 0xc020, 0x4049 };   /* 1, -2.5, 3.140625 */
    const uint16_t f16_bits[3] = { 0x3c00, 0x3555, 0x7bff };    /* 1, 0.333251953125, 65504 */
    int64_t s6[2] = { 2, 3 }, s3[1] = { 3 };
    tmp_make(&td);
    const char *path = tmp_file(&td, "half.safetensors");
    assert_int_equal(st_writer_open(&w, path, &err), 0);
    assert_int_equal(st_writer_add_f32(w, "bf", DT_BF16, 2, s6, v, &err), 0);
    assert_int_equal(st_writer_add_f32(w, "hf", DT_F16, 2, s6, v, &err), 0);
    assert_int_equal(st_writer_add_f32(w, "df", DT_F64, 2, s6, v, &err), 0);
    assert_int_equal(st_writer_add(w, "bf_bits", DT_BF16, 1, s3, bf16_bits, &err), 0);
    assert_int_equal(st_writer_add(w, "hf_bits", DT_F16, 1, s3, f16_bits, &err), 0);
    assert_int_equal(st_writer_add_f32(w, "bad", DT_I32, 1, s3, v, &err), -SLM_EDTYPE);
    assert_non_null(strstr(err.msg, "cannot store floats as I32"));
    slm_err_clear(&err);
    assert_int_equal(st_writer_finish(w, &err), 0);

    struct safetensors *st;
    float out[6];
    assert_int_equal(safetensors_open(&st, path, &err), 0);
    const char *names[3] = { "bf", "hf", "df" };
    for (int k = 0; k < 3; k++) {
        memset(out, 0xff, sizeof out);
        assert_int_equal(st_tensor_to_f32(out, safetensors_find(st, names[k]), &err), 0);
        for (int i = 0; i < 6; i++) assert_true(out[i] == v[i]);
    }
    assert_int_equal(st_tensor_to_f32(out, safetensors_find(st, "bf_bits"), &err), 0);
    assert_true(out[0] == 1.0f && out[1] == -2.5f && out[2] == 3.140625f);
    assert_int_equal(st_tensor_to_f32(out, safetensors_find(st, "hf_bits"), &err), 0);
    assert_true(out[0] == 1.0f && out[1] == 0.333251953125f && out[2] == 65504.0f);

    /* the same image at an odd address: conversions must not assume alignment */
    size_t len;
    uint8_t *img = read_bytes(path, &len), *odd = malloc(len + 1);
    assert_non_null(odd);
    memcpy(odd + 1, img, len);
    struct safetensors *mem;
    assert_int_equal(safetensors_open_mem(&mem, odd + 1, len, &err), 0);
    for (int k = 0; k < 3; k++) {
        assert_int_equal(st_tensor_to_f32(out, safetensors_find(mem, names[k]), &err), 0);
        for (int i = 0; i < 6; i++) assert_true(out[i] == v[i]);
    }
    safetensors_close(mem);
    free(odd);
    free(img);
    safetensors_close(st);
    tmp_remove(&td);
}

static void test_core_safetensors__writer_rejects_bad_tensors(void **state)
{
    (void)state;
    struct tmpdir td;
    struct slm_err err = SLM_ERR_INIT;
    struct st_writer *w;
    uint8_t b[4] = { 0 };
    int64_t s1[1] = { 4 }, neg[1] = { -1 }, big[2] = { INT64_MAX, 2 }, nine[9] = { 1, 1, 1, 1, 1, 1, 1, 1, 1 };
    tmp_make(&td);
    const char *path = tmp_file(&td, "w.safetensors");
    assert_int_equal(st_writer_open(&w, path, &err), 0);
    assert_int_equal(st_writer_add(w, "a", DT_U8, 1, s1, b, &err), 0);
    assert_int_equal(st_writer_add(w, "a", DT_U8, 1, s1, b, &err), -SLM_ECONFLICT);
    assert_non_null(strstr(err.msg, "'a' added twice"));
    slm_err_clear(&err);
    assert_int_equal(st_writer_add(w, "n", DT_U8, 1, neg, b, &err), -SLM_EINVAL);
    assert_non_null(strstr(err.msg, "dim 0 is negative"));
    slm_err_clear(&err);
    assert_int_equal(st_writer_add(w, "o", DT_U8, 2, big, b, &err), -SLM_EINVAL);
    assert_non_null(strstr(err.msg, "overflows"));
    slm_err_clear(&err);
    assert_int_equal(st_writer_add(w, "d", DT_U8, 9, nine, b, &err), -SLM_EINVAL);
    slm_err_clear(&err);
    assert_int_equal(st_writer_add(w, "__metadata__", DT_U8, 1, s1, b, &err), -SLM_EINVAL);
    slm_err_clear(&err);
    assert_int_equal(st_writer_add(w, "bad\xff", DT_U8, 1, s1, b, &err), -SLM_EINVAL);
    assert_non_null(strstr(err.msg, "UTF-8"));
    slm_err_clear(&err);
    assert_int_equal(st_writer_set_metadata(w, "k", "\xff", &err), -SLM_EINVAL);
    slm_err_clear(&err);
    assert_int_equal(st_writer_add(w, "nodata", DT_U8, 1, s1, NULL, &err), -SLM_EINVAL);
    assert_non_null(strstr(err.msg, "no data for 4 bytes"));
    slm_err_clear(&err);
    assert_int_equal(st_writer_add(w, "nodata", DT_U8, 1, s1, b, &err), 0);   /* the failed add left nothing behind */
    st_writer_abort(w);
    assert_int_equal(access(path, F_OK), -1);
    st_writer_abort(NULL);
    /* a folder that does not exist: finish fails with the path and frees the writer */
    assert_int_equal(st_writer_open(&w, "/nonexistent-slim-dir/x.safetensors", &err), 0);
    assert_int_equal(st_writer_add(w, "a", DT_U8, 1, s1, b, &err), 0);
    assert_int_equal(st_writer_finish(w, &err), -SLM_EIO);
    assert_non_null(strstr(err.msg, "/nonexistent-slim-dir/x.safetensors.tmp"));
    tmp_remove(&td);
}

/* ---- the real fixture ---- */

static void test_core_safetensors__reads_tiny_opt_and_rewrites_it_identically(void **state)
{
    (void)state;
    char path[512];
    struct slm_err err = SLM_ERR_INIT;
    snprintf(path, sizeof path, "%s/tiny-opt/model.safetensors", test_data_dir());
    struct safetensors *st;
    assert_int_equal(safetensors_open(&st, path, &err), 0);
    assert_int_equal(safetensors_count(st), 36);
    assert_string_equal(safetensors_metadata(st, "format"), "pt");
    const struct st_tensor *t = safetensors_find(st, "model.decoder.embed_positions.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, DT_F32);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 130);   /* max_position_embeddings 128 + OPT's offset 2 */
    assert_int_equal(t->shape[1], 64);
    t = safetensors_find(st, "model.decoder.embed_tokens.weight");
    assert_int_equal(t->shape[0], 512);
    assert_int_equal(t->shape[1], 64);
    t = safetensors_find(st, "model.decoder.layers.1.fc2.weight");
    assert_int_equal(t->shape[0], 64);
    assert_int_equal(t->shape[1], 256);
    assert_int_equal(safetensors_find(st, "model.decoder.layers.0.fc1.bias")->shape[0], 256);
    assert_null(safetensors_find(st, "lm_head.weight"));   /* tied */
    assert_string_equal(safetensors_at(st, 0)->name, "model.decoder.embed_positions.weight");
    float *f = malloc(sizeof(float) * 130 * 64);
    assert_non_null(f);
    assert_int_equal(st_tensor_to_f32(f, safetensors_at(st, 0), &err), 0);
    double ss = 0;
    for (int i = 0; i < 130 * 64; i++) {
        assert_true(isfinite(f[i]));
        ss += (double)f[i] * f[i];
    }
    assert_true(ss > 0);
    free(f);

    /* the same tensors through our writer give the file transformers wrote, byte for byte */
    struct tmpdir td;
    struct st_writer *w;
    tmp_make(&td);
    const char *out = tmp_file(&td, "model.safetensors");
    assert_int_equal(st_writer_open(&w, out, &err), 0);
    assert_int_equal(st_writer_set_metadata(w, "format", "pt", &err), 0);
    for (size_t i = safetensors_count(st); i-- > 0;) {   /* reversed: the writer restores the order */
        t = safetensors_at(st, i);
        assert_int_equal(st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err), 0);
    }
    assert_int_equal(st_writer_finish(w, &err), 0);
    size_t la, lb;
    uint8_t *a = read_bytes(path, &la), *b = read_bytes(out, &lb);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
    free(a);
    free(b);
    safetensors_close(st);

    struct st_model *m;
    snprintf(path, sizeof path, "%s/tiny-opt", test_data_dir());
    assert_int_equal(st_model_open(&m, path, &err), 0);
    assert_int_equal(st_model_count(m), 36);
    assert_int_equal(st_model_nbytes(m), 568592 - 8 - 3848);
    st_model_close(m);
    tmp_remove(&td);
}

/* ---- sharded folders ---- */

static void write_shard(const char *path, const char *const *names, size_t n, float base)
{
    struct st_writer *w;
    struct slm_err err = SLM_ERR_INIT;
    float v[6];
    int64_t shape[2] = { 2, 3 };
    assert_int_equal(st_writer_open(&w, path, &err), 0);
    for (size_t i = 0; i < n; i++) {
        for (int k = 0; k < 6; k++) v[k] = base + (float)(10 * i + k);
        assert_int_equal(st_writer_add_f32(w, names[i], DT_BF16, 2, shape, v, &err), 0);
    }
    assert_int_equal(st_writer_finish(w, &err), 0);
}

static void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

static const char *const shard1[] = { "model.layers.0.w", "model.embed" };
static const char *const shard2[] = { "lm_head.weight" };

/* A folder with two shards, plus the index text given. */
static void make_sharded(struct tmpdir *td, const char *index)
{
    tmp_make(td);
    write_shard(tmp_file(td, "model-00001-of-00002.safetensors"), shard1, 2, 0);
    write_shard(tmp_file(td, "model-00002-of-00002.safetensors"), shard2, 1, 100);
    write_text(tmp_file(td, "model.safetensors.index.json"), index);
}

#define GOOD_INDEX                                                                   \
    "{\"metadata\":{\"total_size\":36},\"weight_map\":{"                             \
    "\"model.embed\":\"model-00001-of-00002.safetensors\","                          \
    "\"model.layers.0.w\":\"model-00001-of-00002.safetensors\","                     \
    "\"lm_head.weight\":\"model-00002-of-00002.safetensors\"}}"

static void test_core_safetensors__sharded_folder_round_trip(void **state)
{
    (void)state;
    struct tmpdir td;
    struct slm_err err = SLM_ERR_INIT;
    struct st_model *m;
    make_sharded(&td, GOOD_INDEX);
    assert_int_equal(st_model_open(&m, td.path, &err), 0);
    assert_int_equal(st_model_count(m), 3);
    assert_int_equal(st_model_nbytes(m), 3 * 6 * 2);
    float out[6];
    const struct st_tensor *t = st_model_find(m, "lm_head.weight");
    assert_non_null(t);
    assert_int_equal(st_tensor_to_f32(out, t, &err), 0);
    assert_true(out[0] == 100.0f && out[5] == 105.0f);
    t = st_model_find(m, "model.layers.0.w");
    assert_non_null(t);
    assert_int_equal(st_tensor_to_f32(out, t, &err), 0);
    assert_true(out[0] == 0.0f && out[5] == 5.0f);
    assert_non_null(st_model_find(m, "model.embed"));
    assert_null(st_model_find(m, "model.layers.1.w"));
    /* iteration is by name */
    assert_string_equal(st_model_at(m, 0)->name, "lm_head.weight");
    assert_string_equal(st_model_at(m, 2)->name, "model.layers.0.w");
    assert_null(st_model_at(m, 3));
    st_model_close(m);
    tmp_remove(&td);
}

/* Lookups stay right with thousands of tensors (hash on write, sorted index on read). */
static void test_core_safetensors__many_tensors(void **state)
{
    (void)state;
    struct tmpdir td;
    struct slm_err err = SLM_ERR_INIT;
    struct st_writer *w;
    enum { N = 3000 };
    char name[48];
    int64_t s1[1] = { 1 };
    tmp_make(&td);
    const char *path = tmp_file(&td, "model.safetensors");
    assert_int_equal(st_writer_open(&w, path, &err), 0);
    for (int32_t i = 0; i < N; i++) {
        snprintf(name, sizeof name, "model.layers.%d.weight", (int)((i * 7919) % N));
        int32_t v = (i * 7919) % N;
        assert_int_equal(st_writer_add(w, name, DT_I32, 1, s1, &v, &err), 0);
    }
    assert_int_equal(st_writer_finish(w, &err), 0);
    struct st_model *m;
    assert_int_equal(st_model_open(&m, td.path, &err), 0);
    assert_int_equal(st_model_count(m), N);
    for (int32_t i = 0; i < N; i++) {
        snprintf(name, sizeof name, "model.layers.%d.weight", (int)i);
        const struct st_tensor *t = st_model_find(m, name);
        assert_non_null(t);
        int32_t v;
        memcpy(&v, t->data, 4);
        assert_int_equal(v, i);
    }
    st_model_close(m);
    tmp_remove(&td);
}

/* ---- malformed folders ---- */

static void expect_bad_folder(const char *index, enum slm_rc code, const char *substr, const char *what)
{
    struct tmpdir td;
    struct slm_err err = SLM_ERR_INIT;
    struct st_model *m = NULL;
    make_sharded(&td, index);
    int rc = st_model_open(&m, td.path, &err);
    if (rc != -(int)code || !strstr(err.msg, substr))
        fail_msg("%s: got rc %d '%s', want %d with '%s'", what, rc, err.msg, -(int)code, substr);
    assert_null(m);
    tmp_remove(&td);
}

#define WM(entries) "{\"weight_map\":{" entries "}}"
#define S1 "\"model-00001-of-00002.safetensors\""
#define S2 "\"model-00002-of-00002.safetensors\""

static void test_core_safetensors__malformed_folders_give_specific_errors(void **state)
{
    (void)state;
    expect_bad_folder(WM("\"model.embed\":\"../x.safetensors\""), SLM_EFORMAT,
                      "shard of tensor 'model.embed' is not a plain file name", "index with ../x shard");
    expect_bad_folder(WM("\"model.embed\":\"..\""), SLM_EFORMAT, "not a plain file name", "shard '..'");
    expect_bad_folder(WM("\"model.embed\":\"/etc/passwd\""), SLM_EFORMAT, "not a plain file name", "absolute shard path");
    expect_bad_folder(WM("\"model.embed\":\"\""), SLM_EFORMAT, "not a plain file name", "empty shard name");
    expect_bad_folder(WM("\"model.embed\":\"sub\\\\x.safetensors\""), SLM_EFORMAT, "not a plain file name", "backslash");
    expect_bad_folder(WM("\"model.embed\":7"), SLM_EFORMAT, "not a plain file name", "shard name not a string");
    expect_bad_folder(WM("\"model.embed\":\"model-00003-of-00003.safetensors\""), SLM_ENOTFOUND,
                      "model-00003-of-00003.safetensors: No such file", "shard missing");
    expect_bad_folder(WM("\"model.embed\":" S2), SLM_EFORMAT,
                      "tensor 'model.embed' is not in its shard model-00002-of-00002.safetensors", "tensor in the wrong shard");
    expect_bad_folder(WM("\"model.nothere\":" S1), SLM_EFORMAT, "tensor 'model.nothere' is not in its shard",
                      "tensor missing from shard");
    expect_bad_folder("{\"weight_map\":[]}", SLM_EFORMAT, "weight_map missing or not an object", "weight_map an array");
    expect_bad_folder("{\"metadata\":{}}", SLM_EFORMAT, "weight_map missing", "weight_map missing");
    expect_bad_folder(WM(""), SLM_EFORMAT, "weight_map lists no tensor", "weight_map empty");
    expect_bad_folder("{\"weight_map\":", SLM_EFORMAT, "model.safetensors.index.json:", "index not JSON");
    expect_bad_folder(WM("\"model.embed\":" S1 ",\"model.embed\":" S1), SLM_EFORMAT, "duplicate", "duplicate key in index");

    /* the same tensor in two shards */
    struct tmpdir td;
    struct slm_err err = SLM_ERR_INIT;
    struct st_model *m = NULL;
    tmp_make(&td);
    write_shard(tmp_file(&td, "a.safetensors"), shard1, 2, 0);
    write_shard(tmp_file(&td, "b.safetensors"), shard1, 1, 0);
    write_text(tmp_file(&td, "model.safetensors.index.json"),
               WM("\"model.embed\":\"a.safetensors\",\"model.layers.0.w\":\"b.safetensors\""));
    assert_int_equal(st_model_open(&m, td.path, &err), -SLM_EFORMAT);
    assert_non_null(strstr(err.msg, "tensor 'model.layers.0.w' appears in two shards"));
    assert_null(m);
    tmp_remove(&td);

    /* a folder with neither file */
    slm_err_clear(&err);
    tmp_make(&td);
    assert_int_equal(st_model_open(&m, td.path, &err), -SLM_ENOTFOUND);
    assert_non_null(strstr(err.msg, "model.safetensors: No such file"));
    tmp_remove(&td);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_safetensors__malformed_headers_give_specific_errors),
        cmocka_unit_test(test_core_safetensors__malformed_length_field),
        cmocka_unit_test(test_core_safetensors__truncated_file_on_disk),
        cmocka_unit_test(test_core_safetensors__round_trip_every_dtype),
        cmocka_unit_test(test_core_safetensors__half_precision_conversions),
        cmocka_unit_test(test_core_safetensors__writer_rejects_bad_tensors),
        cmocka_unit_test(test_core_safetensors__reads_tiny_opt_and_rewrites_it_identically),
        cmocka_unit_test(test_core_safetensors__sharded_folder_round_trip),
        cmocka_unit_test(test_core_safetensors__many_tensors),
        cmocka_unit_test(test_core_safetensors__malformed_folders_give_specific_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
