/*
** core/dtype.h: tensor element types of safetensors and their conversions to and from f32.
** One traits table (ggml style): every size and conversion comes from dtype_traits().
*/
#ifndef SLM_DTYPE_H
#define SLM_DTYPE_H

#include <stddef.h>
#include <stdint.h>

enum dtype {
    DT_F32 = 0, DT_F16, DT_BF16, DT_F64, DT_I8, DT_U8, DT_I16, DT_I32, DT_I64, DT_BOOL,
    DT_COUNT
};

struct dtype_traits {
    const char *name;   /* safetensors spelling: "F32", "BF16", ... */
    size_t size;        /* bytes per element */
    /* Convert n elements; NULL for integer/bool types that do not convert to float. */
    void (*to_f32)(float *dst, const void *src, size_t n);
    void (*from_f32)(void *dst, const float *src, size_t n);
};

/* Traits of t; t must be < DT_COUNT. */
const struct dtype_traits *dtype_traits(enum dtype t);

/* Parse a safetensors dtype name. Returns 0, or -SLM_EDTYPE for an unknown name. */
int dtype_from_name(enum dtype *out, const char *name);

/* Scalar conversions. f32->bf16/f16 round to nearest even, NaN stays NaN. */
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

/* Round a float to the nearest bf16 value and back (bf16 emulation in f32 code). */
static inline float bf16_round(float f) { return bf16_to_f32(f32_to_bf16(f)); }

#endif
