/* core/dtype.c: dtype traits table and float conversions. See dtype.h. */
#include "dtype.h"
#include "err.h"

#include <math.h>
#include <string.h>

float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                          /* RNE */
    return (uint16_t)(u >> 16);
}

float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, u;
    if (exp == 0) {
        if (mant == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do { e++; mant <<= 1; } while (!(mant & 0x400u));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;               /* NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00u;              /* overflow -> inf (incl. rounding) */
    if (a < 0x38800000u) {                                    /* subnormal or zero in f16 */
        if (a < 0x33000000u) return sign;                     /* below half the smallest subnormal */
        uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;                             /* value = m * 2^(e-150) = r * 2^-24 */
        uint32_t half = 1u << (shift - 1), rest = m & ((1u << shift) - 1);
        uint32_t r = m >> shift;
        if (rest > half || (rest == half && (r & 1u))) r++;
        return sign | (uint16_t)r;
    }
    uint32_t r = a - 0x38000000u;                             /* rebias 127 -> 15 */
    uint32_t lsb = (r >> 13) & 1u;
    r += 0xfffu + lsb;
    return sign | (uint16_t)(r >> 13);
}

static void f32_to_f32_row(float *d, const void *s, size_t n) { memcpy(d, s, n * 4); }
static void f32_from_f32_row(void *d, const float *s, size_t n) { memcpy(d, s, n * 4); }
static void f16_to_f32_row(float *d, const void *s, size_t n)
{
    const uint16_t *h = s;
    for (size_t i = 0; i < n; i++) d[i] = f16_to_f32(h[i]);
}
static void f16_from_f32_row(void *d, const float *s, size_t n)
{
    uint16_t *h = d;
    for (size_t i = 0; i < n; i++) h[i] = f32_to_f16(s[i]);
}
static void bf16_to_f32_row(float *d, const void *s, size_t n)
{
    const uint16_t *h = s;
    for (size_t i = 0; i < n; i++) d[i] = bf16_to_f32(h[i]);
}
static void bf16_from_f32_row(void *d, const float *s, size_t n)
{
    uint16_t *h = d;
    for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(s[i]);
}
static void f64_to_f32_row(float *d, const void *s, size_t n)
{
    const double *x = s;
    for (size_t i = 0; i < n; i++) d[i] = (float)x[i];
}
static void f64_from_f32_row(void *d, const float *s, size_t n)
{
    double *x = d;
    for (size_t i = 0; i < n; i++) x[i] = s[i];
}

static const struct dtype_traits traits[DT_COUNT] = {
    [DT_F32] = { "F32", 4, f32_to_f32_row, f32_from_f32_row },
    [DT_F16] = { "F16", 2, f16_to_f32_row, f16_from_f32_row },
    [DT_BF16] = { "BF16", 2, bf16_to_f32_row, bf16_from_f32_row },
    [DT_F64] = { "F64", 8, f64_to_f32_row, f64_from_f32_row },
    [DT_I8] = { "I8", 1, NULL, NULL },
    [DT_U8] = { "U8", 1, NULL, NULL },
    [DT_I16] = { "I16", 2, NULL, NULL },
    [DT_I32] = { "I32", 4, NULL, NULL },
    [DT_I64] = { "I64", 8, NULL, NULL },
    [DT_BOOL] = { "BOOL", 1, NULL, NULL },
};

const struct dtype_traits *dtype_traits(enum dtype t) { return &traits[t]; }

int dtype_from_name(enum dtype *out, const char *name)
{
    for (int i = 0; i < DT_COUNT; i++)
        if (strcmp(traits[i].name, name) == 0) { *out = (enum dtype)i; return 0; }
    return -SLM_EDTYPE;
}
