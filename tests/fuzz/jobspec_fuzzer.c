/* tests/fuzz/jobspec_fuzzer.c: jobspec_parse() on any JSON document the bytes decode to. */
#include <stdlib.h>

#include "core/jobspec.h"
#include "fuzz_target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t je;
    json_t *doc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
    if (!doc) return 0;
    struct jobspec s;
    struct slm_err err = SLM_ERR_INIT;
    char path[128];
    if (jobspec_parse(&s, doc, path, sizeof path, &err) == 0) jobspec_free(&s);   /* freed by parse on failure */
    else if (err.msg[0] == 0) abort();                                           /* every error says why */
    json_decref(doc);
    return 0;
}
