/*
** core/memreport.h: what a compressed model costs, measured (bytes as stored, by category) and as
** the SLiM paper's theoretical formula (ALGORITHMS.md §5.2), side by side.
*/
#ifndef SLM_MEMREPORT_H
#define SLM_MEMREPORT_H

#include <jansson.h>
#include <stdint.h>

enum mem_cat { MEM_WEIGHTS = 0, MEM_SCALES, MEM_SPARSITY, MEM_ADAPTERS, MEM_UNCOMPRESSED, MEM_COUNT };

struct memreport {
    uint64_t dense_bytes;          /* the source model as stored */
    uint64_t bytes[MEM_COUNT];     /* the compressed checkpoint's tensors by category */
};

/* §5.2 (a): compressed / dense of the paper's formula; n layers, hidden d, ffn = a d, vocab V,
** sparsity, weight bits, adapter rank ratio r (0 = none) and adapter bits. */
double memreport_theoretical(int n, int d, int ffn, int vocab, double sparsity, int wbits, double r, int abits);

/* {"dense_bytes", "stored_bytes", "ratio", "breakdown": {...}, "theoretical_ratio"} (new reference). */
json_t *memreport_json(const struct memreport *mr, double theoretical);

#endif
