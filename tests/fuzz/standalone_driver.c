/*
** tests/fuzz/standalone_driver.c: replay a fuzz target without libFuzzer. Runs
** LLVMFuzzerTestOneInput over every regular file in the folders (or files) given, so the seed
** corpus and any crash reproducer run as an ordinary test under any compiler and sanitizer.
** Exit 0 when every input ran (a crash ends the process), 1 when an input could not be read.
*/
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_target.h"

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "%s: cannot open\n", path); return -1; }
    size_t cap = 4096, n = 0, k;
    uint8_t *buf = malloc(cap);
    while (buf && (k = fread(buf + n, 1, cap - n, f)) > 0) {
        n += k;
        if (n == cap) {
            uint8_t *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
    }
    int bad = ferror(f) || !buf;
    fclose(f);
    if (bad) { free(buf); fprintf(stderr, "%s: read error\n", path); return -1; }
    /* an exact-size copy, so an over-read is caught by ASan */
    uint8_t *exact = malloc(n ? n : 1);
    if (!exact) { free(buf); return -1; }
    memcpy(exact, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Every regular file directly in dir, in name order (stable logs). */
static int run_dir(const char *dir, int *count)
{
    DIR *d = opendir(dir);
    if (!d) { fprintf(stderr, "%s: cannot open folder\n", dir); return -1; }
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            char **nn = realloc(names, (cap = cap ? cap * 2 : 64) * sizeof *nn);
            if (!nn) { rc = -1; break; }
            names = nn;
        }
        size_t l = strlen(dir) + strlen(e->d_name) + 2;
        if (!(names[n] = malloc(l))) { rc = -1; break; }
        snprintf(names[n++], l, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    if (names) qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        struct stat sb;
        if (!rc && !stat(names[i], &sb) && S_ISREG(sb.st_mode)) {
            if (run_file(names[i])) rc = -1;
            else (*count)++;
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    int count = 0, rc = 0;
    if (argc < 2) { fprintf(stderr, "usage: %s DIR_OR_FILE...\n", argv[0]); return 2; }
    for (int i = 1; i < argc; i++) {
        struct stat sb;
        if (stat(argv[i], &sb)) { fprintf(stderr, "%s: not found\n", argv[i]); rc = 1; continue; }
        if (S_ISDIR(sb.st_mode) ? run_dir(argv[i], &count) : run_file(argv[i])) rc = 1;
        else if (!S_ISDIR(sb.st_mode)) count++;
    }
    printf("%d inputs replayed\n", count);
    return rc ? 1 : (count ? 0 : 1);   /* an empty corpus is a broken test, not a pass */
}
