/* tests/unit/core/dtype.c: dtype names and float conversions against exact known values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "core/dtype.h"
#include "core/err.h"

static void test_core_dtype__names_round_trip(void **state)
{
    (void)state;
    for (int i = 0; i < DT_COUNT; i++) {
        enum dtype t;
        assert_int_equal(dtype_from_name(&t, dtype_traits((enum dtype)i)->name), 0);
        assert_int_equal(t, i);
    }
    enum dtype t;
    assert_int_equal(dtype_from_name(&t, "F8_E4M3"), -SLM_EDTYPE);
    assert_int_equal(dtype_traits(DT_BF16)->size, 2);
    assert_int_equal(dtype_traits(DT_I64)->size, 8);
}

static void test_core_dtype__bf16_rounds_to_nearest_even(void **state)
{
    (void)state;
    assert_int_equal(f32_to_bf16(1.0f), 0x3f80);
    /* 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties to even (1.0) */
    assert_int_equal(f32_to_bf16(1.0f + 1.0f / 256), 0x3f80);
    /* 1 + 3*2^-8 is halfway between 1.0078125 (odd) and 1.015625 (even): rounds up */
    assert_int_equal(f32_to_bf16(1.0f + 3.0f / 256), 0x3f82);
    assert_true(isnan(bf16_to_f32(f32_to_bf16(NAN))));
    assert_true(bf16_to_f32(f32_to_bf16(-2.5f)) == -2.5f);
}

static void test_core_dtype__f16_matches_ieee(void **state)
{
    (void)state;
    assert_int_equal(f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(f32_to_f16(70000.0f), 0x7c00);          /* overflow to inf */
    assert_int_equal(f32_to_f16(5.9604645e-08f), 0x0001);    /* smallest subnormal */
    assert_int_equal(f32_to_f16(6.103515625e-05f), 0x0400);  /* smallest normal */
    assert_true(f16_to_f32(0x0001) == 5.9604645e-08f);
    assert_true(f16_to_f32(0x3555) == 0.333251953125f);
    assert_true(isinf(f16_to_f32(0x7c00)));
    /* every f16 value survives f16 -> f32 -> f16 */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if (((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff)) continue; /* NaNs */
        assert_int_equal(f32_to_f16(f16_to_f32((uint16_t)h)), h);
    }
}

static void test_core_dtype__row_conversions(void **state)
{
    (void)state;
    float src[5] = { 0.0f, 1.5f, -3.25f, 1e-3f, 300.0f }, back[5];
    uint16_t half[5];
    double dbl[5];
    dtype_traits(DT_BF16)->from_f32(half, src, 5);
    dtype_traits(DT_BF16)->to_f32(back, half, 5);
    for (int i = 0; i < 5; i++) assert_true(fabsf(back[i] - src[i]) <= fabsf(src[i]) / 128);
    dtype_traits(DT_F64)->from_f32(dbl, src, 5);
    dtype_traits(DT_F64)->to_f32(back, dbl, 5);
    assert_memory_equal(back, src, sizeof src);
    assert_null(dtype_traits(DT_I32)->to_f32);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_dtype__names_round_trip),
        cmocka_unit_test(test_core_dtype__bf16_rounds_to_nearest_even),
        cmocka_unit_test(test_core_dtype__f16_matches_ieee),
        cmocka_unit_test(test_core_dtype__row_conversions),
    };
    return cmocka_run_group_tests_name("core/dtype", tests, NULL, NULL);
}
