/*
** core/memreport.c: memory report (see memreport.h).
*/
#include "memreport.h"

double memreport_theoretical(int n, int d, int ffn, int vocab, double sparsity, int wbits, double r, int abits)
{
    double a = (double)ffn / d, dd = (double)d * d;
    double dense = n * (4 + 2 * a) * dd + (double)d * vocab;
    double comp = n * (4 + 2 * a) * dd * (1 - sparsity) * (wbits / 16.0)
                + (r > 0 ? n * (8 * r + 2 * r * (1 + a)) * dd * (abits / 16.0) : 0)
                + (double)d * vocab;
    return comp / dense;
}

json_t *memreport_json(const struct memreport *mr, double theoretical)
{
    uint64_t stored = 0;
    for (int i = 0; i < MEM_COUNT; i++) stored += mr->bytes[i];
    return json_pack("{s:I,s:I,s:f,s:{s:I,s:I,s:I,s:I,s:I},s:f}",
                     "dense_bytes", (json_int_t)mr->dense_bytes, "stored_bytes", (json_int_t)stored,
                     "ratio", mr->dense_bytes ? (double)stored / (double)mr->dense_bytes : 0.0,
                     "breakdown", "weights", (json_int_t)mr->bytes[MEM_WEIGHTS], "scales", (json_int_t)mr->bytes[MEM_SCALES],
                     "sparsity_metadata", (json_int_t)mr->bytes[MEM_SPARSITY], "adapters", (json_int_t)mr->bytes[MEM_ADAPTERS],
                     "uncompressed", (json_int_t)mr->bytes[MEM_UNCOMPRESSED],
                     "theoretical_ratio", theoretical);
}
