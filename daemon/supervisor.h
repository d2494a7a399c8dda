/*
** daemon/supervisor.h: the worker pool. Each slot runs at most one job in a child process
** (fork + exec of slimd --job-child), reads its progress lines and writes them to the store.
** A child that dies without reporting spends its attempt (requeued while attempts remain);
** cancel = SIGUSR1 (cooperative), then SIGKILL after cancel-grace-ms; shutdown = stop claiming,
** wait drain-timeout-s, then stop the rest and requeue them without spending an attempt.
** Runs on the main thread; ownership: struct supervisor is opaque (supervisor_new/free).
*/
#ifndef SLIMD_SUPERVISOR_H
#define SLIMD_SUPERVISOR_H

#include <signal.h>

#include "api/api.h"

struct supervisor;

/* nslots workers; devices[i] is slot i's device ("cpu", "cuda:0", ...); wake_fd is the read end
** of the pipe the API writes to after a submit or cancel. */
int supervisor_new(struct supervisor **out, struct api_ctx *ctx, int nslots, const char *const *devices,
                   int wake_fd, struct slm_err *err);
void supervisor_free(struct supervisor *s);

/* Loop until *stop is set and the drain is over. Returns 0. */
int supervisor_run(struct supervisor *s, volatile sig_atomic_t *stop);

#endif
