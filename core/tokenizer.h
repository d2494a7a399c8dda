/*
** core/tokenizer.h: tokenizers read from a model folder, as transformers would build them.
**   byte-level BPE (GPT-2, OPT, Phi-2): vocab.json + merges.txt, or tokenizer.json (model.type BPE,
**     ByteLevel pre-tokenizer)
**   SentencePiece-style BPE with byte fallback (LLaMA-2): tokenizer.json
**   tiktoken-style BPE (LLaMA-3): tokenizer.json with the split regex pre-tokenizer
** BOS/EOS as transformers adds them for these models (tokenizer_config.json add_bos_token, the
** post_processor of tokenizer.json, OPT's "</s>" prefix, none for Phi-2).
** Ownership: struct tokenizer owns its tables; ids returned by tokenizer_encode are the caller's.
*/
#ifndef SLM_TOKENIZER_H
#define SLM_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct tokenizer;

/* Open the tokenizer files in dir. -SLM_ENOTFOUND if none is there. *out: tokenizer_free(). */
int tokenizer_open(struct tokenizer **out, const char *dir, struct slm_err *err);
void tokenizer_free(struct tokenizer *t);
/* Copy the tokenizer files of from_dir that exist (tokenizer.json, tokenizer_config.json,
** special_tokens_map.json, vocab.json, merges.txt, tokenizer.model) into to_dir, so a compressed
** model folder is as usable as its source. *copied (may be NULL) gets how many were copied. */
int tokenizer_copy_files(const char *from_dir, const char *to_dir, int *copied, struct slm_err *err);

/* Open from explicit files: tokenizer_json, or vocab_json + merges_txt (GPT-2 layout; the other of the
** two forms NULL). config_json (tokenizer_config.json) and special_map_json (special_tokens_map.json)
** are optional and may be NULL or name absent files. *out: tokenizer_free(). */
int tokenizer_open_files(struct tokenizer **out, const char *tokenizer_json, const char *vocab_json,
                         const char *merges_txt, const char *config_json, const char *special_map_json,
                         struct slm_err *err);

/* Encode len bytes of UTF-8 text. add_special: add BOS/EOS as the model's tokenizer does by
** default. *ids is malloc'd (free()). */
int tokenizer_encode(struct tokenizer *t, const char *text, size_t len, bool add_special,
                     int32_t **ids, size_t *n, struct slm_err *err);
/* Decode ids to UTF-8 text (malloc'd, NUL-terminated). */
int tokenizer_decode(struct tokenizer *t, const int32_t *ids, size_t n, char **text, struct slm_err *err);

int tokenizer_vocab_size(const struct tokenizer *t);
int tokenizer_bos_id(const struct tokenizer *t);   /* -1 if none */
int tokenizer_eos_id(const struct tokenizer *t);   /* -1 if none */
const char *tokenizer_kind(const struct tokenizer *t); /* "bpe-bytelevel", "bpe-sentencepiece", "bpe-tiktoken" */

#endif
