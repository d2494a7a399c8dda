/*
** tests/fuzz/safetensors_fuzzer.c: safetensors_open_mem() on arbitrary bytes. An accepted file
** must honour the reader's promise: every tensor lies inside the buffer, ranges tile the data
** region in file order, lookups by name find each tensor, and float tensors convert.
*/
#include <stdlib.h>
#include <string.h>

#include "core/safetensors.h"
#include "fuzz_target.h"

static void check(int ok)
{
    if (!ok) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a private copy, so reads past the end are caught exactly by ASan */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    struct safetensors *st = NULL;
    struct slm_err err = SLM_ERR_INIT;
    if (safetensors_open_mem(&st, buf, size, &err)) {
        check(st == NULL && err.rc != SLM_OK && err.msg[0] != 0);
        free(buf);
        return 0;
    }
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | buf[i];
    const uint8_t *end = buf + size, *at = buf + 8 + hl;   /* the data region starts after the header */
    for (size_t i = 0; i < safetensors_count(st); i++) {
        const struct st_tensor *t = safetensors_at(st, i);
        const uint8_t *p = t->data;
        check(p >= buf + 8 && t->nbytes <= (size_t)(end - p));
        check(p == at);   /* tiling: each begins where the previous ended */
        at = p + t->nbytes;
        check(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS && t->numel >= 0);
        check(t->nbytes == (size_t)t->numel * dtype_traits(t->dtype)->size);
        check(safetensors_find(st, t->name) == t);
        if (dtype_traits(t->dtype)->to_f32 && t->numel <= (1 << 16)) {
            float *f = malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
            if (f) check(st_tensor_to_f32(f, t, &err) == 0);
            free(f);
        }
    }
    check(at == end);
    (void)safetensors_metadata(st, "format");
    safetensors_close(st);
    free(buf);
    return 0;
}
