/* cli/slim_cmds.h: subcommands of `slim` that live in their own files. */
#ifndef SLIM_CMDS_H
#define SLIM_CMDS_H
#include "kernels/kbackend.h"

/* slim compress MODEL_DIR SPEC.json OUT_DIR [--device D] [--data-dir DIR]; returns the exit status */
int slim_cmd_compress(int argc, char **argv);
/* Open the backend and log what it is (CPU: the OpenBLAS build and core type). */
int slim_open_backend(struct kbackend **kb, const char *device, struct slm_err *err);
#endif
