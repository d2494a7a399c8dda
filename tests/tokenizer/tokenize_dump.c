/*
** tests/tokenizer/tokenize_dump.c: encode text with core/tokenizer and print ids, for the parity test
** against the reference implementation and for timing.
**   tokenize-dump DIR < lines.jsonl   each input line a JSON string; prints one JSON object a line:
**                                     {"ids": [...with BOS/EOS...], "text": decode(ids without them)}
**   tokenize-dump DIR --file F        encodes F as one text (no specials); prints the count and time
** Exit status: 0, 1 on a tokenizer error (message on stderr), 2 on usage or input errors.
*/
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "core/tokenizer.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int time_file(struct tokenizer *t, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return 2; }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc(len > 0 ? (size_t)len : 1);
    if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) { fclose(f); free(buf); fprintf(stderr, "%s: read error\n", path); return 2; }
    fclose(f);
    struct slm_err err = SLM_ERR_INIT;
    int32_t *ids;
    size_t n;
    double t0 = now_s();
    int rc = tokenizer_encode(t, buf, (size_t)len, false, &ids, &n, &err);
    double t1 = now_s();
    free(buf);
    if (rc) { fprintf(stderr, "encode: %s\n", err.msg); return 1; }
    printf("%s: %ld bytes -> %zu tokens in %.3f s (%.2f MB/s)\n", path, len, n, t1 - t0, len / 1e6 / (t1 - t0));
    free(ids);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: %s DIR [--file F] < lines.jsonl\n", argv[0]); return 2; }
    struct slm_err err = SLM_ERR_INIT;
    struct tokenizer *t;
    if (tokenizer_open(&t, argv[1], &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    if (argc == 4 && !strcmp(argv[2], "--file")) {
        int rc = time_file(t, argv[3]);
        tokenizer_free(t);
        return rc;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int status = 0;
    size_t lineno = 0;
    while (status == 0 && (got = getline(&line, &cap, stdin)) > 0) {
        lineno++;
        json_error_t je;
        json_t *s = json_loadb(line, (size_t)got, JSON_DECODE_ANY, &je);
        if (!json_is_string(s)) { fprintf(stderr, "line %zu: not a JSON string\n", lineno); json_decref(s); status = 2; break; }
        int32_t *ids = NULL, *plain = NULL;
        size_t n = 0, np = 0;
        char *text = NULL;
        const char *in = json_string_value(s);
        size_t inlen = json_string_length(s);
        if (tokenizer_encode(t, in, inlen, true, &ids, &n, &err) ||
            tokenizer_encode(t, in, inlen, false, &plain, &np, &err) ||
            tokenizer_decode(t, plain, np, &text, &err)) {
            fprintf(stderr, "line %zu: %s\n", lineno, err.msg);
            status = 1;
        } else {
            json_t *arr = json_array(), *o = json_object();
            for (size_t i = 0; i < n; i++) json_array_append_new(arr, json_integer(ids[i]));
            json_object_set_new(o, "ids", arr);
            json_object_set_new(o, "text", json_string(text));
            char *dump = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
            if (!dump) { fprintf(stderr, "line %zu: cannot print (decoded text is not UTF-8?)\n", lineno); status = 1; }
            else printf("%s\n", dump);
            free(dump);
            json_decref(o);
        }
        free(ids);
        free(plain);
        free(text);
        json_decref(s);
    }
    free(line);
    tokenizer_free(t);
    return status;
}
