/* tests/fuzz/config_fuzzer.c: config.json parsing (model_config_parse) must never crash or leak,
** whatever the bytes; when it accepts a config, the derived figures must be sane. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct model_config c;
    struct slm_err err = SLM_ERR_INIT;
    if (model_config_parse(&c, (const char *)data, size, &err) == 0) {
        if (c.hidden < 1 || c.n_heads < 1 || c.n_kv_heads < 1 || c.n_heads % c.n_kv_heads || c.head_dim < 1 ||
            c.rot_dim < 0 || c.rot_dim > c.head_dim || c.vocab < 1 || c.n_layers < 1 || c.ffn < 1)
            abort();
        (void)model_config_param_count(&c);
    }
    return 0;
}
