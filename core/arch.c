/* core/arch.c: model_type -> adapter. Adding an architecture = one arch_*.c + one row here. */
#include <string.h>

#include "arch.h"

static const struct { const char *model_type; const struct arch_ops *ops; } arch_table[] = {
    { "opt", &arch_opt },
    { "llama", &arch_llama },
    { "mistral", &arch_llama },
    { "qwen2", &arch_llama },
    { "phi", &arch_phi },
};

const struct arch_ops *arch_for_model_type(const char *model_type)
{
    for (size_t i = 0; i < sizeof arch_table / sizeof arch_table[0]; i++)
        if (strcmp(arch_table[i].model_type, model_type) == 0) return arch_table[i].ops;
    return NULL;
}

const char *arch_supported_list(void) { return "opt, llama, mistral, qwen2, phi"; }
