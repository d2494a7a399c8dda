/*
** core/safetensors.h: read (mmap) and write .safetensors files, and open a model folder that
** holds one file or shards listed in model.safetensors.index.json.
**
** Reader: safetensors_open() maps the file and validates EVERYTHING before handing out a tensor
** (header size cap, header is a JSON object, no duplicate keys, known dtypes, shapes whose
** element count x dtype size equals the byte range with overflow-checked arithmetic, offsets
** inside the data region, ranges sorted without overlap or hole and covering the data region).
** So no caller re-checks bounds. Tensor views are borrowed and live until safetensors_close().
*/
#ifndef SLM_SAFETENSORS_H
#define SLM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "err.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100u * 1024u * 1024u)   /* 100 MB, as the reference implementation */

struct st_tensor {
    const char *name;            /* borrowed */
    enum dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    const void *data;            /* borrowed, inside the mapping; may be unaligned */
    size_t nbytes;
};

struct safetensors;

/* Map and validate path. *out is the caller's (safetensors_close). */
int safetensors_open(struct safetensors **out, const char *path, struct slm_err *err);
/* Validate a file image in memory (fuzzers, tests). buf is borrowed: it must outlive *out. */
int safetensors_open_mem(struct safetensors **out, const void *buf, size_t len, struct slm_err *err);
void safetensors_close(struct safetensors *st);

size_t safetensors_count(const struct safetensors *st);
const struct st_tensor *safetensors_at(const struct safetensors *st, size_t i);  /* file order */
const struct st_tensor *safetensors_find(const struct safetensors *st, const char *name); /* NULL if absent */
/* "__metadata__" string value for key, or NULL. Borrowed. */
const char *safetensors_metadata(const struct safetensors *st, const char *key);

/* Read a float tensor (F32/F16/BF16/F64) converted to f32 into dst (numel floats). */
int st_tensor_to_f32(float *dst, const struct st_tensor *t, struct slm_err *err);

/* ---- writer ---- */
struct st_writer;

/* Start a file at path (written to path.tmp, renamed on finish). *out is the caller's: it is
** freed by st_writer_finish() or st_writer_abort(). */
int st_writer_open(struct st_writer **out, const char *path, struct slm_err *err);
/* Add a tensor. data is COPIED, so the caller may free it after the call. */
int st_writer_add(struct st_writer *w, const char *name, enum dtype dt, int ndim, const int64_t *shape,
                  const void *data, struct slm_err *err);
/* Add f32 data stored as dt (F32, F16, BF16 or F64), converting on the way. */
int st_writer_add_f32(struct st_writer *w, const char *name, enum dtype dt, int ndim, const int64_t *shape,
                      const float *data, struct slm_err *err);
int st_writer_set_metadata(struct st_writer *w, const char *key, const char *value, struct slm_err *err);
/* Write header + data, fsync, rename into place; frees w whatever the result. */
int st_writer_finish(struct st_writer *w, struct slm_err *err);
void st_writer_abort(struct st_writer *w);    /* removes the temp file, frees w; NULL ok */

/* ---- model folder: model.safetensors or sharded via model.safetensors.index.json ---- */
struct st_model;

/* Open dir/model.safetensors, or every shard named by dir/model.safetensors.index.json (shard
** names must be plain file names inside dir: no '/', no "..", no absolute path; every weight_map
** entry must exist in its shard). *out is the caller's (st_model_close). */
int st_model_open(struct st_model **out, const char *dir, struct slm_err *err);
void st_model_close(struct st_model *m);
const struct st_tensor *st_model_find(const struct st_model *m, const char *name);  /* NULL if absent */
size_t st_model_count(const struct st_model *m);
const struct st_tensor *st_model_at(const struct st_model *m, size_t i);
/* Total bytes of tensor data over all shards. */
uint64_t st_model_nbytes(const struct st_model *m);

#endif
