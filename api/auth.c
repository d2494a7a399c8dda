/*
** api/auth.c: bearer tokens. Only sha256(token) is stored (lower-case hex), with a scope; a presented
** token is hashed and compared against EVERY entry with CRYPTO_memcmp, so timing reveals neither
** which entry matched nor how much of it.
*/
#include "api.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

struct auth_entry { unsigned char hash[32]; enum api_scope scope; };
struct auth { struct auth_entry *e; size_t n; };

void auth_sha256_hex(char hex[65], const void *data, size_t len)
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

static int unhex(unsigned char out[32], const char *s)
{
    if (strlen(s) != 64) return -1;
    for (int i = 0; i < 32; i++) {
        unsigned v = 0;
        for (int k = 0; k < 2; k++) {
            char c = s[2 * i + k];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
            else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
            else return -1;
        }
        out[i] = (unsigned char)v;
    }
    return 0;
}

int auth_load(struct auth **out, const char *path, struct slm_err *err)
{
    struct auth *a = NULL;
    struct stat st;
    int rc = 0, ln = 0;
    FILE *f = NULL;
    *out = NULL;
    if (stat(path, &st)) return slm_err_set(err, SLM_EIO, "api-tokens-file %s: %s", path, strerror(errno));
    if (st.st_mode & 077) return slm_err_set(err, SLM_EINVAL, "api-tokens-file %s: readable by others (chmod 600)", path);
    if (!(f = fopen(path, "r"))) return slm_err_set(err, SLM_EIO, "api-tokens-file %s: %s", path, strerror(errno));
    if (!(a = calloc(1, sizeof *a))) { rc = slm_err_set(err, SLM_ENOMEM, "auth: out of memory"); goto done; }
    char line[512], scope[32], hex[128];
    while (fgets(line, sizeof line, f)) {
        ln++;
        if (line[0] == '#' || line[strspn(line, " \t\r\n")] == 0) continue;
        struct auth_entry e;
        if (sscanf(line, "%31s %127s", scope, hex) != 2 || unhex(e.hash, hex)) {
            rc = slm_err_set(err, SLM_EINVAL, "%s:%d: expected 'read|submit SHA256HEX'", path, ln);
            goto done;
        }
        if (!strcmp(scope, "read")) e.scope = SCOPE_READ;
        else if (!strcmp(scope, "submit")) e.scope = SCOPE_SUBMIT;
        else { rc = slm_err_set(err, SLM_EINVAL, "%s:%d: scope must be read or submit", path, ln); goto done; }
        struct auth_entry *ne = realloc(a->e, (a->n + 1) * sizeof *ne);
        if (!ne) { rc = slm_err_set(err, SLM_ENOMEM, "auth: out of memory"); goto done; }
        a->e = ne;
        a->e[a->n++] = e;
    }
    if (a->n == 0) { rc = slm_err_set(err, SLM_EINVAL, "api-tokens-file %s: no tokens", path); goto done; }
    *out = a;
    a = NULL;
done:
    if (f) fclose(f);
    auth_free(a);
    return rc;
}

void auth_free(struct auth *a)
{
    if (!a) return;
    free(a->e);
    free(a);
}

int auth_check(const struct auth *a, const char *hdr, enum api_scope need)
{
    if (!a || need == SCOPE_NONE) return 0;
    if (!hdr || strncasecmp(hdr, "Bearer ", 7) || !hdr[7]) return 401;
    const char *tok = hdr + 7;
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(tok, strlen(tok), md, &mdlen, EVP_sha256(), NULL);
    int found = -1;
    for (size_t i = 0; i < a->n; i++) {
        int eq = CRYPTO_memcmp(md, a->e[i].hash, 32) == 0;
        if (eq) found = (int)a->e[i].scope;   /* keep scanning: no early exit */
    }
    if (found < 0) return 401;
    return found >= (int)need ? 0 : 403;
}
