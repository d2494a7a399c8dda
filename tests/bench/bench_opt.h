/*
** tests/bench/bench_opt.h: an OPT-125M-shaped model with random weights for the benchmarks
** (written once into a folder, then opened like any checkpoint).
*/
#ifndef SLM_BENCH_OPT_H
#define SLM_BENCH_OPT_H

#include "core/err.h"

/* Uniform random in [-0.02, 0.02). */
float frand(void);

/* Write config.json + model.safetensors of an OPT-125M-shaped model (layers blocks) into dir. */
int make_opt125m(const char *dir, int layers, struct slm_err *err);

#endif
