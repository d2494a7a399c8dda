/*
** core/checkpoint.h: the compressed checkpoint (a folder) and its loader.
**   model.safetensors  every tensor the compression did not touch, copied as stored in the
**                      source (embeddings, norms, biases, head; block norms that the compression
**                      rewrote, JSQ's smoothing, as F32 from memory), plus per compressed linear P:
**                      P.q      packed codes (int4: two per byte, low nibble first, code + 8;
**                               int8: as is); for N:M only the kept codes
**                      P.idx    N:M positions of the kept entries, ceil(log2 M) bits each
**                      P.v      unquantized values (kept values for N:M, else dense), F32 or BF16
**                      P.scale  quantization scales (grid of quant_params), P.colscale (AWQ-like)
**                      P.lora_left / P.lora_right  adapters (F32), or .q + .scale when quantized
**   config.json        the model's config
**   slim_config.json   {"format", "tool", "spec", "figures", "memory", "layers": {P: encoding}}
** Loading dequantizes with the same float arithmetic as the quantizers, so a reloaded model gives
** exactly the logits of the in-memory compressed model.
*/
#ifndef SLM_CHECKPOINT_H
#define SLM_CHECKPOINT_H

#include <jansson.h>

#include "compress.h"
#include "err.h"
#include "model.h"

#define CHECKPOINT_FORMAT "slim-ckpt-1"

/* Write m (every block loaded and compressed as res describes; res from compress_model with
** keep_codes) into dir (created). spec_raw and figures (borrowed, may be NULL) go into
** slim_config.json. *memory (new reference, may be NULL) gets the memory report (memreport.h). */
int checkpoint_save(struct model *m, const struct compress_result *res, const struct compress_opts *o,
                    const char *dir, const json_t *spec_raw, const json_t *figures, json_t **memory,
                    struct slm_err *err);

/* Open a checkpoint folder as a model on kb (flags as model_open). *out: model_free(). */
int checkpoint_open(struct model **out, const char *dir, struct kbackend *kb, int flags, struct slm_err *err);

/* True when dir holds a slim_config.json of this format. */
bool checkpoint_is(const char *dir);

#endif
