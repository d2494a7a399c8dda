/*
** core/checkpoint.h: the compressed checkpoint (a folder), its streaming writer and its loader.
**   model-shared.safetensors       tensors outside the blocks (embeddings, final norm, head)
**   model-block-NNNNN.safetensors  block NNNNN: its tensors outside the linear encodings (norms,
**                                  biases), copied as stored in the source unless the compression
**                                  rewrote them in memory (JSQ's smoothed norms; bf16 emulation's
**                                  rounding: then BF16 or F32 from memory), plus per compressed
**                                  linear P the entries below
**   model-adapters.safetensors     adapters quantized after the whole model (§4.6), when any
**   model.safetensors.index.json   tensor -> shard, as Hugging Face's sharded folders
**   Per compressed linear P:
**                      P.q      packed codes (int4: two per byte, low nibble first, code + 8;
**                               int8: as is); for N:M only the kept codes
**                      P.idx    N:M positions of the kept entries, ceil(log2 M) bits each
**                      P.v      unquantized values (kept values for N:M, else dense), F32 or BF16
**                      P.scale  quantization scales (grid of quant_params), P.colscale (AWQ-like)
**                      P.lora_left / P.lora_right  adapters (F32), or .q + .scale when quantized
**   config.json        the model's config
**   slim_config.json   {"format", "tool", "spec", "figures", "memory", "layers": {P: encoding}};
**                      written last: its presence marks a complete checkpoint (checkpoint_is)
** Loading dequantizes with the same float arithmetic as the quantizers, so a reloaded model gives
** exactly the logits of the in-memory compressed model.
** The writer takes one block at a time (compress_opts.on_block = checkpoint_writer_block), so
** compression can drop each block once written; it holds at most one shard in memory.
*/
#ifndef SLM_CHECKPOINT_H
#define SLM_CHECKPOINT_H

#include <jansson.h>

#include "compress.h"
#include "err.h"
#include "model.h"

#define CHECKPOINT_FORMAT "slim-ckpt-1"

struct checkpoint_writer;

/* Start a checkpoint of m (opened from a model folder, compressed with o) in dir (created; a
** checkpoint already there stops being one until finish). Writes the shared shard now. m is
** borrowed until finish/abort. *out: checkpoint_writer_finish() or checkpoint_writer_abort(). */
int checkpoint_writer_open(struct checkpoint_writer **out, const char *dir, struct model *m,
                           const struct compress_opts *o, struct slm_err *err);
/* Write loaded block b, compressed as lin describes (codes kept by compress_model), as its shard.
** Adapters still awaiting quantization (§4.6) are left for finish. */
int checkpoint_writer_add_block(struct checkpoint_writer *w, int b, const struct compressed_linear lin[LIN_COUNT],
                                struct slm_err *err);
/* checkpoint_writer_add_block as a compress_block_cb (payload: the writer). */
int checkpoint_writer_block(struct model *m, int b, const struct compressed_linear lin[LIN_COUNT], void *payload,
                            struct slm_err *err);
/* Write the adapters left pending (quantized by now: from res's host copies or the loaded blocks),
** the index, config.json and, last, slim_config.json with spec_raw and figures (borrowed, may be
** NULL). *memory (new reference, may be NULL) gets the memory report (memreport.h). Frees w
** whatever the result; on failure the shards written are removed. */
int checkpoint_writer_finish(struct checkpoint_writer *w, const struct compress_result *res, const json_t *spec_raw,
                             const json_t *figures, json_t **memory, struct slm_err *err);
/* Remove what was written and free w; NULL ok. */
void checkpoint_writer_abort(struct checkpoint_writer *w);

/* The writer in one call: m with every block loaded and compressed as res describes (res from
** compress_model with keep_codes). Arguments as the writer's. */
int checkpoint_save(struct model *m, const struct compress_result *res, const struct compress_opts *o,
                    const char *dir, const json_t *spec_raw, const json_t *figures, json_t **memory,
                    struct slm_err *err);

/* Open a checkpoint folder as a model on kb (flags as model_open). *out: model_free(). */
int checkpoint_open(struct model **out, const char *dir, struct kbackend *kb, int flags, struct slm_err *err);

/* True when dir holds a slim_config.json of this format. */
bool checkpoint_is(const char *dir);

#endif
