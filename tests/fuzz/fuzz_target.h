/*
** tests/fuzz/fuzz_target.h: what every fuzz target defines. A target is one file
** tests/fuzz/NAME_fuzzer.c; it is linked either with libFuzzer (clang, run-fuzzers.sh) or with
** standalone_driver.c (any compiler, the 'fuzz-replay' meson suite over corpora/NAME/).
** A target must never crash, leak or trip a sanitizer on any input; broken invariants abort().
*/
#ifndef SLM_FUZZ_TARGET_H
#define SLM_FUZZ_TARGET_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
