/* core/fileio.c: see fileio.h. */
#include "fileio.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int file_read_all(const char *path, size_t max, char **out, size_t *len, struct slm_err *err)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    int rc = 0;
    *out = NULL;
    *len = 0;
    if (!f) return slm_err_set(err, errno == ENOENT ? SLM_ENOTFOUND : SLM_EIO, "%s: %s", path, strerror(errno));
    if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode)) { rc = slm_err_set(err, SLM_EIO, "%s: not a regular file", path); goto done; }
    if ((uint64_t)st.st_size > max) {
        rc = slm_err_set(err, SLM_EFORMAT, "%s: %lld bytes is over the %zu byte limit", path, (long long)st.st_size, max);
        goto done;
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) { rc = slm_err_set(err, SLM_ENOMEM, "%s: %zu bytes", path, n); goto done; }
    if (fread(buf, 1, n, f) != n) { free(buf); rc = slm_err_set(err, SLM_EIO, "%s: read error", path); goto done; }
    buf[n] = 0;
    *out = buf;
    *len = n;
done:
    fclose(f);
    return rc;
}
