/* core/fileio.c: see fileio.h. */
#include "fileio.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

int file_copy(const char *src, const char *dst, struct slm_err *err)
{
    char tmp[4200], buf[1 << 16];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", dst) >= (int)sizeof tmp) return slm_err_set(err, SLM_EINVAL, "%s: path too long", dst);
    FILE *in = fopen(src, "rb"), *out = NULL;
    int rc = 0;
    if (!in) return slm_err_set(err, errno == ENOENT ? SLM_ENOTFOUND : SLM_EIO, "%s: %s", src, strerror(errno));
    if (!(out = fopen(tmp, "wb"))) { rc = slm_err_set(err, SLM_EIO, "%s: %s", tmp, strerror(errno)); goto done; }
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) { rc = slm_err_set(err, SLM_EIO, "%s: %s", tmp, strerror(errno)); goto done; }
    if (ferror(in)) { rc = slm_err_set(err, SLM_EIO, "%s: read error", src); goto done; }
    if (fflush(out) || fsync(fileno(out))) rc = slm_err_set(err, SLM_EIO, "%s: %s", tmp, strerror(errno));
done:
    fclose(in);
    if (out && fclose(out) && !rc) rc = slm_err_set(err, SLM_EIO, "%s: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, dst)) rc = slm_err_set(err, SLM_EIO, "%s: %s", dst, strerror(errno));
    if (rc && out) unlink(tmp);
    return rc;
}
