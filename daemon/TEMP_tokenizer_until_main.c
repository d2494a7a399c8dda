/*
** daemon/TEMP_tokenizer_until_main.c: TEMPORARY. core/job.c calls the tokenizer, which another
** helper is writing; until it is on main these definitions let slimd link. Every call fails with
** SLM_EUNSUPPORTED, so a job that needs perplexity fails cleanly. DELETE this file (and its line in
** daemon/meson.build) when `git merge main` brings core/tokenizer.c.
*/
#include "core/tokenizer.h"

int tokenizer_open(struct tokenizer **out, const char *dir, struct slm_err *err)
{
    *out = NULL;
    return slm_err_set(err, SLM_EUNSUPPORTED, "tokenizer for %s: not available in this build yet", dir);
}

void tokenizer_free(struct tokenizer *t)
{
    (void)t;
}

int tokenizer_encode(struct tokenizer *t, const char *text, size_t len, bool add_special, int32_t **ids, size_t *n,
                     struct slm_err *err)
{
    (void)t, (void)text, (void)len, (void)add_special;
    *ids = NULL;
    *n = 0;
    return slm_err_set(err, SLM_EUNSUPPORTED, "tokenizer: not available in this build yet");
}
