/*
** daemon/config.h: slimd's configuration, one option table (redis static_configs[] style).
** Precedence: built-in default < config file < environment (SLIMD_<NAME>, '-' -> '_', upper case)
** < command-line flags (--name value). Every source goes through the same typed setter, which checks
** bounds and names the source on error ("slimd.conf:12: workers: must be <= 64").
** Ownership: struct slimd_config owns its strings; config_free() releases them.
*/
#ifndef SLIMD_CONFIG_H
#define SLIMD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "core/err.h"

struct slimd_config {
    char *listen;               /* host:port */
    char *data_dir;             /* jobs/, cache/, default database */
    char *db;                   /* SQLite file; default DATA_DIR/slimd.db */
    char *config_file;
    int workers;                /* 0 = one per GPU, else one CPU worker */
    char *device;               /* auto | cpu | cuda */
    int max_attempts;
    int retry_backoff_ms;       /* first retry delay; doubles per attempt */
    int64_t max_body_bytes;
    int connection_limit;
    int per_ip_connection_limit;
    int connection_timeout_s;
    char *api_tokens_file;      /* lines "SCOPE SHA256HEX"; empty = no auth */
    char *hub_endpoint;
    char *hub_token;            /* sensitive */
    char *allow_hosts;          /* comma-separated host suffixes for https:// sources */
    char *file_source_root;     /* file:// and absolute-path sources must lie below it; empty = refused */
    char *dataset_dir;          /* named datasets: DIR/NAME.txt */
    char *dataset_mirror;       /* optional URL prefix: MIRROR/NAME.txt */
    int download_stall_s;
    int64_t max_download_bytes;
    int cancel_grace_ms;
    int drain_timeout_s;
    int job_timeout_s;          /* wall clock of one attempt; then stopped and failed */
    int queue_limit;            /* queued jobs before 503 */
    char *log_level;
};

/* Defaults, then the file named by --config / SLIMD_CONFIG (if any), then the environment, then
** argv flags (argv[0] skipped; "--check-config" and other action flags listed in actions are left
** for the caller and reported through *action). */
int config_load(struct slimd_config *out, int argc, char **argv, const char **action, struct slm_err *err);
void config_free(struct slimd_config *c);

/* Set one option by name from text (the common path of file, env and flags). */
int config_set(struct slimd_config *c, const char *name, const char *value, const char *where, struct slm_err *err);

/* Effective configuration without sensitive values (new reference). */
json_t *config_to_json(const struct slimd_config *c);

/* Names of every option, NULL-terminated (the unit test checks deploy/slimd.conf documents each). */
const char *const *config_option_names(void);

/* Split "host:port" (port may be 0). */
int config_listen_addr(char *host, size_t hostlen, int *port, const char *listen, struct slm_err *err);

#endif
