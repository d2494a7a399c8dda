/*
** daemon/fetch.c: model and dataset downloads with libcurl (see fetch.h).
** DESIGN (RELIABILITY-AND-PERFORMANCE.md §1.5): redirects are followed by hand so every hop is
** checked (https + allow-hosts + not a private address, the latter after DNS through
** CURLOPT_PREREQFUNCTION) and the hub token goes to the hub host only. A transfer resumes a
** partial file with Range and accepts the body only as a 206 whose Content-Range starts at the
** offset (a 200 restarts from zero). A byte cap is enforced in the write callback (curl 7.88's
** CURLOPT_MAXFILESIZE does not stop streamed bodies) and a stall aborts through LOW_SPEED_*.
** sha256 is computed while receiving and checked against X-Linked-Etag when the hub sends one; a
** mismatch deletes the file. Finished files live in CACHE/blobs/<sha256>; CACHE/refs/<urlhash>
** remembers which blob a URL gave; CACHE/locks/<urlhash>.lock (flock) keeps two jobs from fetching
** the same file at once.
*/
#include "fetch.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

#define FETCH_MAX_REDIRECTS 5

static void hex32(char out[65], const unsigned char md[32])
{
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void sha256_str(char out[65], const char *s)
{
    unsigned char md[32];
    unsigned int n = 0;
    EVP_Digest(s, strlen(s), md, &n, EVP_sha256(), NULL);
    hex32(out, md);
}

/* ---- URL and address checks ---- */

/* Host (and port) of an http(s) URL: "host:port" without credentials. */
static int url_host(char *host, size_t n, int *port, const char *url)
{
    const char *p = strstr(url, "://");
    if (!p) return -1;
    bool https = !strncmp(url, "https://", 8);
    p += 3;
    size_t len = strcspn(p, "/?#");
    const char *at = memchr(p, '@', len);
    if (at) return -1;
    const char *colon = memchr(p, ':', len);
    size_t hl = colon ? (size_t)(colon - p) : len;
    if (!hl || hl >= n) return -1;
    memcpy(host, p, hl);
    host[hl] = 0;
    *port = colon ? atoi(colon + 1) : https ? 443 : 80; /* digits only: checked by curl when used */
    return 0;
}

static bool same_origin(const char *a, const char *b)
{
    char ha[256], hb[256];
    int pa, pb;
    if (url_host(ha, sizeof ha, &pa, a) || url_host(hb, sizeof hb, &pb, b)) return false;
    return !strcasecmp(ha, hb) && pa == pb && !strncmp(a, b, 5);
}

bool fetch_host_allowed(const char *allow, const char *host)
{
    size_t hn = strlen(host);
    for (const char *p = allow; p && *p;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n && p[0] == '.' && hn > n && !strncasecmp(host + hn - n, p, n)) return true;
        if (n && p[0] != '.' && hn == n && !strncasecmp(host, p, n)) return true;
        p = e ? e + 1 : NULL;
    }
    return false;
}

static bool ip_private(const char *ip)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, ip, &a4) == 1) {
        uint32_t x = ntohl(a4.s_addr);
        return (x >> 24) == 10 || (x >> 24) == 127 || (x >> 24) == 0 || (x >> 20) == (172u << 4 | 1) ||
               (x >> 16) == (192u << 8 | 168) || (x >> 16) == (169u << 8 | 254) || (x >> 22) == (100u << 2 | 1);
    }
    if (inet_pton(AF_INET6, ip, &a6) == 1) {
        const uint8_t *b = a6.s6_addr;
        static const uint8_t loop[16] = { [15] = 1 }, any[16] = { 0 };
        if (!memcmp(b, loop, 16) || !memcmp(b, any, 16)) return true;
        if ((b[0] & 0xfe) == 0xfc || (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)) return true;
        if (!memcmp(b, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12)) { /* v4-mapped */
            char v4[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, b + 12, v4, sizeof v4);
            return ip_private(v4);
        }
        return false;
    }
    return true;
}

/* ---- one transfer ---- */

struct xfer {
    const struct fetch_opts *o;
    FILE *f;
    EVP_MD_CTX *md;
    int64_t have;           /* bytes already in the file when the request started */
    int64_t got;            /* bytes written by this request */
    int64_t total;          /* expected size (Content-Length + have), 0 unknown */
    bool checked;           /* first body byte seen: status and Content-Range verified */
    bool restart;           /* server ignored the range: file truncated */
    bool capped, bad_range, trusted;
    char etag[80];          /* X-Linked-Etag (sha256) or ETag */
    char linked_etag[80];
    const char *file;       /* for progress */
    CURL *h;
};

static void header_value(char *out, size_t n, const char *line, size_t len)
{
    const char *colon = memchr(line, ':', len);
    if (!colon) return;
    const char *v = colon + 1, *e = line + len;
    while (v < e && (*v == ' ' || *v == '"' || *v == '\t')) v++;
    while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == '"' || e[-1] == ' ')) e--;
    if (e - v >= 2 && v[0] == 'W' && v[1] == '/') v += 2;
    while (v < e && *v == '"') v++;
    snprintf(out, n, "%.*s", (int)(e - v), v);
}

static size_t on_header(char *b, size_t size, size_t n, void *ud)
{
    struct xfer *x = ud;
    size_t len = size * n;
    if (len >= 5 && !strncmp(b, "HTTP/", 5)) { x->etag[0] = 0; x->linked_etag[0] = 0; }
    else if (len > 14 && !strncasecmp(b, "X-Linked-Etag:", 14)) header_value(x->linked_etag, sizeof x->linked_etag, b, len);
    else if (len > 5 && !strncasecmp(b, "ETag:", 5)) header_value(x->etag, sizeof x->etag, b, len);
    return len;
}

static size_t on_write(char *b, size_t size, size_t n, void *ud)
{
    struct xfer *x = ud;
    size_t len = size * n;
    if (!x->checked) {
        long code = 0;
        curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 300) return len; /* error or redirect body: discarded */
        x->checked = true;
        if (x->have > 0 && code == 200) { /* range ignored: start over */
            if (ftruncate(fileno(x->f), 0) || fseek(x->f, 0, SEEK_SET)) return 0;
            EVP_DigestInit_ex(x->md, EVP_sha256(), NULL);
            x->have = 0;
            x->restart = true;
        } else if (x->have > 0 && code == 206) {
            struct curl_header *ch = NULL;
            unsigned long long start;
            if (curl_easy_header(x->h, "Content-Range", 0, CURLH_HEADER, -1, &ch) != CURLHE_OK ||
                sscanf(ch->value, "bytes %llu-", &start) != 1 || (int64_t)start != x->have) {
                x->bad_range = true;
                return 0;
            }
        }
        curl_off_t cl = -1;
        curl_easy_getinfo(x->h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
        x->total = cl >= 0 ? x->have + cl : 0;
    }
    if (x->have + x->got + (int64_t)len > x->o->max_bytes) { x->capped = true; return 0; }
    if (fwrite(b, 1, len, x->f) != len) return 0;
    EVP_DigestUpdate(x->md, b, len);
    x->got += (int64_t)len;
    return len;
}

static int on_xferinfo(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ult, curl_off_t uln)
{
    struct xfer *x = ud;
    (void)dltotal, (void)dlnow, (void)ult, (void)uln;
    if (x->o->cancel && *x->o->cancel) return 1;
    if (x->o->progress && x->checked && x->o->progress(x->have + x->got, x->total, x->file, x->o->payload)) return 1;
    return 0;
}

/* Refuse a connection to a private address unless this hop goes to the configured hub. */
static int on_prereq(void *ud, char *ip, char *lip, int rport, int lport)
{
    struct xfer *x = ud;
    (void)lip, (void)rport, (void)lport;
    return !x->trusted && ip_private(ip) ? CURL_PREREQFUNC_ABORT : CURL_PREREQFUNC_OK;
}

/* Seed the digest with what a partial file already holds. */
static int hash_prefix(EVP_MD_CTX *md, FILE *f, int64_t *have)
{
    unsigned char buf[1 << 16];
    size_t r;
    *have = 0;
    rewind(f);
    while ((r = fread(buf, 1, sizeof buf, f)) > 0) { EVP_DigestUpdate(md, buf, r); *have += (int64_t)r; }
    return ferror(f) ? -1 : 0;
}

int fetch_url(const struct fetch_opts *o, const char *url, const char *path, const char *want_sha256,
              const char *auth_header, int64_t *bytes_received, struct slm_err *err)
{
    char cur[4096], part[PATH_MAX + 8], errbuf[CURL_ERROR_SIZE] = "";
    struct xfer x = { .o = o, .file = strrchr(url, '/') ? strrchr(url, '/') + 1 : url };
    int rc = 0;
    CURL *h = NULL;
    struct curl_slist *hdrs = NULL;
    *bytes_received = 0;
    snprintf(cur, sizeof cur, "%s", url);
    snprintf(part, sizeof part, "%s.part", path);
    if (!(x.f = fopen(part, "a+b"))) return slm_err_set(err, SLM_EIO, "%s: %s", part, strerror(errno));
    if (!(x.md = EVP_MD_CTX_new()) || !EVP_DigestInit_ex(x.md, EVP_sha256(), NULL)) { rc = slm_err_set(err, SLM_ENOMEM, "sha256 context"); goto done; }
    if (hash_prefix(x.md, x.f, &x.have)) { rc = slm_err_set(err, SLM_EIO, "%s: read error", part); goto done; }
    if (!(h = curl_easy_init())) { rc = slm_err_set(err, SLM_ENOMEM, "curl: init"); goto done; }
    x.h = h;
    char want[80] = "";
    if (want_sha256) snprintf(want, sizeof want, "%s", want_sha256);
    for (int hop = 0;; hop++) {
        char host[256];
        int port;
        if (hop > FETCH_MAX_REDIRECTS) { rc = slm_err_set(err, SLM_EIO, "%s: too many redirects", url); goto done; }
        if (url_host(host, sizeof host, &port, cur)) { rc = slm_err_set(err, SLM_EINVAL, "bad URL '%s'", cur); goto done; }
        x.trusted = (o->hub_endpoint && o->hub_endpoint[0] && same_origin(cur, o->hub_endpoint)) ||
                    (o->dataset_mirror && o->dataset_mirror[0] && same_origin(cur, o->dataset_mirror));
        if (!x.trusted && (strncmp(cur, "https://", 8) || !fetch_host_allowed(o->allow_hosts ? o->allow_hosts : "", host))) {
            rc = slm_err_set(err, SLM_EINVAL, "refusing to fetch from %s (https and allow-hosts only)", host);
            goto done;
        }
        curl_easy_reset(h);
        curl_slist_free_all(hdrs);
        hdrs = curl_slist_append(NULL, "Accept-Encoding: identity");
        if (auth_header && x.trusted && same_origin(cur, url)) hdrs = curl_slist_append(hdrs, auth_header);
        curl_easy_setopt(h, CURLOPT_URL, cur);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, x.trusted ? "http,https" : "https");
        curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 15L);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (long)(o->stall_s > 0 ? o->stall_s : 60));
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, &x);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &x);
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_xferinfo);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, &x);
        curl_easy_setopt(h, CURLOPT_PREREQFUNCTION, on_prereq);
        curl_easy_setopt(h, CURLOPT_PREREQDATA, &x);
        curl_easy_setopt(h, CURLOPT_USERAGENT, "slimd/0.1");
        if (x.have > 0) curl_easy_setopt(h, CURLOPT_RESUME_FROM_LARGE, (curl_off_t)x.have);
        errbuf[0] = 0;
        x.checked = false;
        CURLcode cc = curl_easy_perform(h);
        long code = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        if (!want[0] && x.linked_etag[0]) snprintf(want, sizeof want, "%s", x.linked_etag);
        *bytes_received += x.got;
        if (x.capped) { rc = slm_err_set(err, SLM_EINVAL, "%s: larger than max-download-bytes", x.file); unlink(part); goto done; }
        if (x.bad_range) { rc = slm_err_set(err, SLM_EIO, "%s: Content-Range does not start at %lld", x.file, (long long)x.have); goto done; }
        if (cc == CURLE_ABORTED_BY_CALLBACK && o->cancel && *o->cancel) { rc = slm_err_set(err, SLM_ECANCELLED, "cancelled"); goto done; }
        if (cc == CURLE_OPERATION_TIMEDOUT) { rc = slm_err_set(err, SLM_EIO, "%s: stalled (no progress for %d s)", x.file, o->stall_s); goto done; }
        if (cc != CURLE_OK && !(cc == CURLE_RANGE_ERROR && code == 416)) {
            rc = slm_err_set(err, SLM_EIO, "%s: %s", x.file, errbuf[0] ? errbuf : curl_easy_strerror(cc));
            goto done;
        }
        if (code >= 300 && code < 400) {
            char *loc = NULL;
            curl_easy_getinfo(h, CURLINFO_REDIRECT_URL, &loc);
            if (!loc) { rc = slm_err_set(err, SLM_EIO, "%s: redirect without Location", x.file); goto done; }
            snprintf(cur, sizeof cur, "%s", loc);
            continue;
        }
        if (code == 416 && x.have > 0) { /* stale partial file: start over once */
            if (ftruncate(fileno(x.f), 0)) { rc = slm_err_set(err, SLM_EIO, "%s: truncate", part); goto done; }
            EVP_DigestInit_ex(x.md, EVP_sha256(), NULL);
            x.have = 0;
            snprintf(cur, sizeof cur, "%s", url);
            continue;
        }
        if (code == 404) { rc = slm_err_set(err, SLM_ENOTFOUND, "%s: not found (HTTP 404)", x.file); goto done; }
        if (code == 401 || code == 403) { rc = slm_err_set(err, SLM_EINVAL, "%s: access denied (HTTP %ld)", x.file, code); goto done; }
        if (code < 200 || code >= 300) { rc = slm_err_set(err, SLM_EIO, "%s: HTTP %ld from %s", x.file, code, host); goto done; }
        break;
    }
    if (fflush(x.f) || fsync(fileno(x.f))) { rc = slm_err_set(err, SLM_EIO, "%s: %s", part, strerror(errno)); goto done; }
    unsigned char md[32];
    unsigned int mdn = 0;
    char got[65];
    EVP_DigestFinal_ex(x.md, md, &mdn);
    hex32(got, md);
    if (strlen(want) == 64 && strcasecmp(want, got)) {
        unlink(part);
        rc = slm_err_set(err, SLM_EIO, "%s: sha256 mismatch (expected %.12s..., got %.12s...)", x.file, want, got);
        goto done;
    }
    if (rename(part, path)) rc = slm_err_set(err, SLM_EIO, "%s: %s", path, strerror(errno));
done:
    if (x.f) fclose(x.f);
    EVP_MD_CTX_free(x.md);
    curl_slist_free_all(hdrs);
    if (h) curl_easy_cleanup(h);
    return rc;
}

/* ---- cache ---- */

static int mkdir_in(const char *base, const char *sub, char *out, size_t n, struct slm_err *err)
{
    snprintf(out, n, "%s/%s", base, sub);
    for (char *p = out + 1; *p; p++)
        if (*p == '/') { *p = 0; if (mkdir(out, 0750) && errno != EEXIST) goto fail; *p = '/'; }
    if (mkdir(out, 0750) && errno != EEXIST) goto fail;
    return 0;
fail:
    return slm_err_set(err, SLM_EIO, "mkdir %s: %s", out, strerror(errno));
}

/* Fetch url into the cache (once, under a lock) and link it as snap/name. */
static int cached(const struct fetch_opts *o, const char *snap, const char *name, const char *url, const char *auth,
                  struct slm_err *err)
{
    char key[65], dir[PATH_MAX], lock[PATH_MAX + 80], ref[PATH_MAX + 80], tmp[PATH_MAX + 80], blob[PATH_MAX + 160], link[PATH_MAX + 300];
    int rc, lfd = -1;
    sha256_str(key, url);
    if ((rc = mkdir_in(o->cache_dir, "locks", dir, sizeof dir, err))) return rc;
    snprintf(lock, sizeof lock, "%s/%s.lock", dir, key);
    if ((lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0640)) < 0) return slm_err_set(err, SLM_EIO, "%s: %s", lock, strerror(errno));
    while (flock(lfd, LOCK_EX | LOCK_NB)) { /* another job is fetching it: wait, stay cancellable */
        if (o->cancel && *o->cancel) { close(lfd); return slm_err_set(err, SLM_ECANCELLED, "cancelled"); }
        struct timespec ts = { 0, 100 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    if ((rc = mkdir_in(o->cache_dir, "refs", dir, sizeof dir, err))) goto done;
    snprintf(ref, sizeof ref, "%s/%s", dir, key);
    if ((rc = mkdir_in(o->cache_dir, "blobs", dir, sizeof dir, err))) goto done;
    char sha[80] = "";
    FILE *rf = fopen(ref, "r");
    if (rf) { if (!fgets(sha, sizeof sha, rf)) sha[0] = 0; fclose(rf); }
    sha[strcspn(sha, "\n")] = 0;
    snprintf(blob, sizeof blob, "%s/%s", dir, sha);
    if (strlen(sha) != 64 || access(blob, R_OK)) {
        snprintf(tmp, sizeof tmp, "%s/%s.download", dir, key);
        int64_t n;
        if ((rc = fetch_url(o, url, tmp, NULL, auth, &n, err))) goto done;
        FILE *f = fopen(tmp, "rb");
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        unsigned char d[32];
        unsigned int dn;
        int64_t have;
        if (!f || !md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL) || hash_prefix(md, f, &have) || !EVP_DigestFinal_ex(md, d, &dn)) {
            if (f) fclose(f);
            EVP_MD_CTX_free(md);
            rc = slm_err_set(err, SLM_EIO, "%s: cannot hash", tmp);
            goto done;
        }
        fclose(f);
        EVP_MD_CTX_free(md);
        hex32(sha, d);
        snprintf(blob, sizeof blob, "%s/%s", dir, sha);
        if (rename(tmp, blob)) { rc = slm_err_set(err, SLM_EIO, "%s: %s", blob, strerror(errno)); goto done; }
        char reftmp[PATH_MAX + 100];
        snprintf(reftmp, sizeof reftmp, "%s.tmp", ref);
        FILE *w = fopen(reftmp, "w");
        if (!w || fprintf(w, "%s\n", sha) < 0 || fflush(w) || fsync(fileno(w))) {
            if (w) fclose(w);
            rc = slm_err_set(err, SLM_EIO, "%s: cannot write", reftmp);
            goto done;
        }
        fclose(w);
        if (rename(reftmp, ref)) { rc = slm_err_set(err, SLM_EIO, "%s: %s", ref, strerror(errno)); goto done; }
    }
    snprintf(link, sizeof link, "%s/%s", snap, name);
    unlink(link);
    if (symlink(blob, link)) rc = slm_err_set(err, SLM_EIO, "%s: %s", link, strerror(errno));
done:
    if (lfd >= 0) close(lfd); /* releases the flock */
    return rc;
}

static bool shard_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 13 || n > 200 || strcmp(s + n - 12, ".safetensors") || s[0] == '.') return false;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-') return false;
    return true;
}

int fetch_model(char *out, size_t out_len, const struct fetch_opts *o, const char *source, const char *revision,
                struct slm_err *err)
{
    char base[2048], snapkey[65], snap[PATH_MAX], auth[600] = "";
    int rc;
    if (!strncmp(source, "file://", 7) || source[0] == '/') {
        const char *path = source[0] == '/' ? source : source + 7;
        char root[PATH_MAX], real[PATH_MAX];
        struct stat st;
        if (!o->file_source_root || !o->file_source_root[0] || !realpath(o->file_source_root, root))
            return slm_err_set(err, SLM_EINVAL, "local model sources are disabled (file-source-root)");
        if (!realpath(path, real) || stat(real, &st) || !S_ISDIR(st.st_mode))
            return slm_err_set(err, SLM_ENOTFOUND, "model folder %s not found", path);
        size_t rn = strlen(root);
        if (strncmp(real, root, rn) || (real[rn] != '/' && real[rn] != 0))
            return slm_err_set(err, SLM_EINVAL, "model folder %s is outside file-source-root", path);
        snprintf(out, out_len, "%s", real);
        return 0;
    }
    if (!strncmp(source, "hf://", 5)) {
        char id[256], rev[160];
        snprintf(id, sizeof id, "%s", source + 5);
        char *at = strchr(id, '@');
        snprintf(rev, sizeof rev, "%s", at ? at + 1 : revision && revision[0] ? revision : "main");
        if (at) *at = 0;
        const char *ep = o->hub_endpoint && o->hub_endpoint[0] ? o->hub_endpoint : "https://huggingface.co";
        size_t el = strlen(ep);
        snprintf(base, sizeof base, "%.*s/%s/resolve/%s", (int)(el && ep[el - 1] == '/' ? el - 1 : el), ep, id, rev);
        if (o->hub_token && o->hub_token[0]) snprintf(auth, sizeof auth, "Authorization: Bearer %s", o->hub_token);
    } else if (!strncmp(source, "https://", 8)) {
        size_t n = strlen(source);
        snprintf(base, sizeof base, "%.*s", (int)(n && source[n - 1] == '/' ? n - 1 : n), source);
    } else
        return slm_err_set(err, SLM_EINVAL, "unsupported model source '%s'", source);

    sha256_str(snapkey, base);
    char sub[128];
    snprintf(sub, sizeof sub, "snapshots/%.32s", snapkey);
    if ((rc = mkdir_in(o->cache_dir, sub, snap, sizeof snap, err))) return rc;
    char url[2300];
    const char *a = auth[0] ? auth : NULL;
    snprintf(url, sizeof url, "%s/config.json", base);
    if ((rc = cached(o, snap, "config.json", url, a, err))) return rc;
    snprintf(url, sizeof url, "%s/model.safetensors.index.json", base);
    struct slm_err probe = SLM_ERR_INIT;
    rc = cached(o, snap, "model.safetensors.index.json", url, a, &probe);
    if (rc == SLM_FAIL(SLM_ENOTFOUND)) {
        snprintf(url, sizeof url, "%s/model.safetensors", base);
        if ((rc = cached(o, snap, "model.safetensors", url, a, err))) return rc;
    } else if (rc) {
        return slm_err_set(err, probe.rc, "%s", probe.msg);
    } else {
        char idx[PATH_MAX + 40];
        json_error_t je;
        snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", snap);
        json_t *doc = json_load_file(idx, JSON_REJECT_DUPLICATES, &je), *wm = json_object_get(doc, "weight_map");
        if (!json_is_object(wm)) { json_decref(doc); return slm_err_set(err, SLM_EFORMAT, "model.safetensors.index.json: no weight_map"); }
        const char *k;
        json_t *v;
        json_object_foreach(wm, k, v) {
            const char *shard = json_string_value(v);
            if (!shard || !shard_name_ok(shard)) { json_decref(doc); return slm_err_set(err, SLM_EFORMAT, "index: bad shard name for %s", k); }
            char lp[PATH_MAX + 300];
            snprintf(lp, sizeof lp, "%s/%s", snap, shard);
            struct stat st;
            if (!lstat(lp, &st) && !access(lp, R_OK)) continue; /* this shard already linked in this call */
            snprintf(url, sizeof url, "%s/%s", base, shard);
            if ((rc = cached(o, snap, shard, url, a, err))) { json_decref(doc); return rc; }
        }
        json_decref(doc);
    }
    static const char *const optional[] = { "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                                            "merges.txt", "special_tokens_map.json", NULL };
    for (int i = 0; optional[i]; i++) {
        struct slm_err e2 = SLM_ERR_INIT;
        snprintf(url, sizeof url, "%s/%s", base, optional[i]);
        rc = cached(o, snap, optional[i], url, a, &e2);
        if (rc && rc != SLM_FAIL(SLM_ENOTFOUND)) return slm_err_set(err, e2.rc, "%s", e2.msg);
    }
    snprintf(out, out_len, "%s", snap);
    return 0;
}

int fetch_datasets(char *out, size_t out_len, const struct fetch_opts *o, const char *dataset_dir,
                   const char *const *names, int nnames, struct slm_err *err)
{
    char snap[PATH_MAX], local[PATH_MAX + 300], url[2300], file[300];
    int rc;
    if (!o->dataset_mirror || !o->dataset_mirror[0]) {
        snprintf(out, out_len, "%s", dataset_dir ? dataset_dir : "");
        return 0;
    }
    if ((rc = mkdir_in(o->cache_dir, "datasets", snap, sizeof snap, err))) return rc;
    size_t ml = strlen(o->dataset_mirror);
    for (int i = 0; i < nnames; i++) {
        if (!names[i] || !names[i][0] || strchr(names[i], '/') || names[i][0] == '.')
            return slm_err_set(err, SLM_EINVAL, "dataset name '%s'", names[i] ? names[i] : "");
        snprintf(file, sizeof file, "%s.txt", names[i]);
        snprintf(local, sizeof local, "%s/%s", dataset_dir ? dataset_dir : "", file);
        if (dataset_dir && dataset_dir[0] && access(local, R_OK) == 0) {
            char link[PATH_MAX + 300], tmp[PATH_MAX + 340];
            snprintf(link, sizeof link, "%s/%s", snap, file);
            snprintf(tmp, sizeof tmp, "%s.%d.tmp", link, (int)getpid());
            unlink(tmp);
            if (symlink(local, tmp) || rename(tmp, link)) return slm_err_set(err, SLM_EIO, "%s: %s", link, strerror(errno));
            continue;
        }
        snprintf(url, sizeof url, "%.*s/%s", (int)(ml && o->dataset_mirror[ml - 1] == '/' ? ml - 1 : ml), o->dataset_mirror, file);
        if ((rc = cached(o, snap, file, url, NULL, err))) return rc;
    }
    snprintf(out, out_len, "%s", snap);
    return 0;
}
