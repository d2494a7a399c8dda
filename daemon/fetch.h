/*
** daemon/fetch.h: get a model (or dataset) onto local disk for a job child.
** hf://ORG/NAME[@REV] resolves against hub-endpoint as URL/ORG/NAME/resolve/REV/FILE (config.json,
** then model.safetensors or the shards of model.safetensors.index.json, plus tokenizer files when
** present); https:// sources must be on allow-hosts; file:// and absolute paths must lie under
** file-source-root. Downloads land in a content-addressed cache (CACHE/blobs/<sha256>) shared by
** jobs, with one lock file per blob so two jobs never fetch the same file at once, and a snapshot
** folder (CACHE/snapshots/<ORG>--<NAME>/<REV>/) of links the core reads like a local model.
** Ownership: plain out-buffers; nothing to free.
*/
#ifndef SLIMD_FETCH_H
#define SLIMD_FETCH_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

struct fetch_opts {
    const char *cache_dir;
    const char *hub_endpoint;
    const char *hub_token;          /* "" = none; sent only to the hub-endpoint host */
    const char *allow_hosts;
    const char *file_source_root;
    const char *dataset_mirror;     /* trusted like the hub (configured by the admin), no token */
    int stall_s;
    int64_t max_bytes;              /* cap over the whole model */
    /* progress: bytes received so far of total (0 = unknown); non-zero return cancels */
    int (*progress)(int64_t done, int64_t total, const char *file, void *payload);
    void *payload;
    volatile sig_atomic_t *cancel;
};

/* Local folder holding source's files, in out (PATH_MAX). */
int fetch_model(char *out, size_t out_len, const struct fetch_opts *o, const char *source, const char *revision,
                struct slm_err *err);

/* Folder holding NAME.txt for every name (datasets for calibration and evaluation), in out.
** Without dataset_mirror that is dataset_dir itself; with it, CACHE/datasets/ holds a link to
** dataset_dir/NAME.txt where that exists, else NAME.txt downloaded from MIRROR/NAME.txt. */
int fetch_datasets(char *out, size_t out_len, const struct fetch_opts *o, const char *dataset_dir,
                   const char *const *names, int nnames, struct slm_err *err);

/* Download url to path (resume, stall timeout, byte cap, optional sha256 check). Exposed for tests.
** auth_header may be NULL; it is sent to url's host only, never to a redirect target elsewhere. */
int fetch_url(const struct fetch_opts *o, const char *url, const char *path, const char *want_sha256,
              const char *auth_header, int64_t *bytes_received, struct slm_err *err);

/* True when host matches an entry of the comma-separated allow list: "name" exactly, or ".suffix"
** as a proper suffix (".hf.co" allows "cdn.hf.co", not "hf.co"), case-insensitively. */
bool fetch_host_allowed(const char *allow, const char *host);

#endif
