/* tests/fuzz/config_fuzzer.c: model_config_parse() (config.json) on arbitrary bytes. */
#include "core/model.h"
#include "fuzz_target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct model_config c;
    struct slm_err err = SLM_ERR_INIT;
    (void)model_config_parse(&c, (const char *)data, size, &err);
    return 0;
}
