/*
** core/unicode.h: the little Unicode the tokenizers need: UTF-8 decoding and the character
** classes \p{L}, \p{N} and \s (White_Space) of the pre-tokenizer regexes. The L/N tables are
** generated (core/unicode_tables.c, tools/gen_unicode_tables.py); White_Space is a fixed list.
*/
#ifndef SLM_UNICODE_H
#define SLM_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct unicode_range { uint32_t lo, hi; };

extern const struct unicode_range unicode_letters[];
extern const size_t unicode_letters_count;
extern const struct unicode_range unicode_numbers[];
extern const size_t unicode_numbers_count;

bool unicode_is_letter(uint32_t cp);
bool unicode_is_number(uint32_t cp);
bool unicode_is_space(uint32_t cp);   /* Unicode White_Space, as Rust's regex \s */

/* Decode one code point from s[0..len). Returns its byte length (>= 1). An invalid or truncated
** sequence yields U+FFFD with length 1, so callers always make progress. */
size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *cp);
/* Encode cp into out (4 bytes room); returns the byte length. */
size_t utf8_encode(uint32_t cp, char *out);

#endif
