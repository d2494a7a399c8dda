/* core/fileio.h: whole-file reads with a size cap (configs, specs, texts, id files). */
#ifndef SLM_FILEIO_H
#define SLM_FILEIO_H

#include <stddef.h>

#include "err.h"

/* Read all of path into a NUL-terminated malloc'd buffer (*out, caller frees); *len excludes the
** NUL. Files larger than max bytes are -SLM_EFORMAT; a missing file is -SLM_ENOTFOUND. */
int file_read_all(const char *path, size_t max, char **out, size_t *len, struct slm_err *err);

/* Copy src to dst through dst.tmp, fsync'd and renamed: a reader sees the old dst or the whole
** copy. A missing src is -SLM_ENOTFOUND. */
int file_copy(const char *src, const char *dst, struct slm_err *err);

#endif
