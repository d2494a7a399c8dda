/*
** tests/unit/test_util.h: what several unit tests share. Define TEST_RNG_SEED before including to
** get that file's own deterministic xorshift stream (urand uniform in [0, 1), nrand normal).
** test_backend_name(): the backend under test, "cpu" unless SLIM_TEST_DEVICE names another.
** test_data_dir(): the test models and fixtures, SLIM_TEST_DATA or tests/data (meson runs the
** tests from the repository root).
** test_dev_copy() / test_dev_back() (with kernels/kbackend.h and cmocka included first): host arrays
** into and out of backend memory, for tests that hand core/ "backend" pointers. On "cpu" a host
** array would do; on cpu-discrete or a GPU it is a bug the backend rightly refuses.
*/
#ifndef SLIM_TEST_UTIL_H
#define SLIM_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef TEST_RNG_SEED
static uint64_t rng = TEST_RNG_SEED;
static inline double urand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}
static inline float nrand(void) { return (float)(sqrt(-2 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand())); }
#endif

static inline const char *test_backend_name(void)
{
    const char *d = getenv("SLIM_TEST_DEVICE");
    return d ? d : "cpu";
}

static inline const char *test_data_dir(void)
{
    const char *d = getenv("SLIM_TEST_DATA");
    return d ? d : "tests/data";
}

#if defined(SLM_KBACKEND_H) && defined(assert_int_equal)
/* A backend buffer holding a copy of host h [nbytes] (h NULL: left as allocated); the caller's,
** for test_dev_back or kb_release. */
static inline void *test_dev_copy(struct kbackend *kb, const void *h, size_t nbytes)
{
    struct slm_err err = SLM_ERR_INIT;
    void *d = NULL;
    assert_int_equal(kb_alloc(kb, &d, nbytes ? nbytes : 1, &err), 0);
    if (h && nbytes) assert_int_equal(kb_upload(kb, d, h, nbytes, &err), 0);
    return d;
}

/* Host h [nbytes] <- backend d, which is released. */
static inline void test_dev_back(struct kbackend *kb, void *h, void *d, size_t nbytes)
{
    struct slm_err err = SLM_ERR_INIT;
    if (nbytes) assert_int_equal(kb_download(kb, h, d, nbytes, &err), 0);
    kb_release(kb, d);
}
#endif

#endif
