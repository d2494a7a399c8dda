/*
** tests/unit/test_util.h: what several unit tests share. Define TEST_RNG_SEED before including to
** get that file's own deterministic xorshift stream (urand uniform in [0, 1), nrand normal).
** test_backend_name(): the backend under test, "cpu" unless SLIM_TEST_DEVICE names another.
** test_data_dir(): the test models and fixtures, SLIM_TEST_DATA or tests/data (meson runs the
** tests from the repository root).
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

#endif
