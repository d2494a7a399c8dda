/*
** core/arch.h: architecture adapters (internal to core/). Each arch_*.c file describes one
** family: how its config.json reads, what its tensors are called and how its blocks are wired.
** The forward pass (model.c) is generic over these descriptions, so a new architecture is a file.
*/
#ifndef SLM_ARCH_H
#define SLM_ARCH_H

#include <jansson.h>

#include "model.h"

struct arch_names {
    const char *lin[LIN_COUNT];     /* tensor prefixes inside the block ("self_attn.q_proj"); NULL = absent */
    const char *norm1, *norm2;      /* norm prefixes inside the block; NULL = absent */
};

struct arch_ops {
    const char *name;               /* "opt", "llama", "phi" */
    enum arch_id id;
    /* Fill the architecture's fields of c from the parsed config (common fields are already in). */
    int (*parse_config)(struct model_config *c, const json_t *root, struct slm_err *err);
    /* Prefix of block b's tensors, e.g. "model.layers.3." */
    void (*block_prefix)(char *buf, size_t n, int b);
    const struct arch_names *names;
    /* global tensors (NULL = absent) */
    const char *embed, *pos_embed, *final_norm, *head, *project_in, *project_out;
    enum norm_kind norm;
    /* block wiring for this config */
    enum block_kind (*block_kind)(const struct model_config *c);
};

extern const struct arch_ops arch_opt, arch_llama, arch_phi;

/* The adapter for a config.json model_type, or NULL. */
const struct arch_ops *arch_for_model_type(const char *model_type);
/* "opt, llama, mistral, qwen2, phi": for error messages. */
const char *arch_supported_list(void);

/* Shared config helpers (config.c). Missing keys leave *out unchanged; wrong types are errors. */
int cfg_int(const json_t *root, const char *key, int *out, struct slm_err *err);
int cfg_float(const json_t *root, const char *key, float *out, struct slm_err *err);
int cfg_bool(const json_t *root, const char *key, bool *out, struct slm_err *err);
int cfg_act(const json_t *root, const char *key, enum kact *out, struct slm_err *err);
/* rope_theta / rope_scaling / rope_parameters in either transformers 4 or 5 layout */
int cfg_rope(struct model_config *c, const json_t *root, struct slm_err *err);

#endif
