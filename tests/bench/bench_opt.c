/* tests/bench/bench_opt.c: see bench_opt.h. */
#include "bench_opt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/safetensors.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
float frand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return ((rng >> 40) * (1.0f / 16777216.0f) - 0.5f) * 0.04f;
}

static int add_rand(struct st_writer *w, const char *name, int64_t r, int64_t c, struct slm_err *err)
{
    size_t n = (size_t)r * (c ? c : 1);
    float *d = malloc(n * sizeof(float));
    if (!d) return slm_err_set(err, SLM_ENOMEM, "bench: alloc");
    for (size_t i = 0; i < n; i++) d[i] = frand();
    if (strstr(name, "layer_norm.weight")) for (size_t i = 0; i < n; i++) d[i] = 1.0f + d[i];
    int64_t shape[2] = { r, c };
    int rc = st_writer_add_f32(w, name, DT_F32, c ? 2 : 1, shape, d, err);
    free(d);
    return rc;
}

/* Write an OPT-125M-shaped model with random weights into dir. */
int make_opt125m(const char *dir, int layers, struct slm_err *err)
{
    const int d = 768, ffn = 3072, V = 50272, P = 2048;
    char path[600], name[128];
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return slm_err_set(err, SLM_EIO, "%s: cannot write", path);
    fprintf(f, "{\"model_type\":\"opt\",\"architectures\":[\"OPTForCausalLM\"],\"hidden_size\":%d,\"ffn_dim\":%d,"
               "\"num_hidden_layers\":%d,\"num_attention_heads\":12,\"vocab_size\":%d,\"max_position_embeddings\":%d,"
               "\"word_embed_proj_dim\":%d,\"do_layer_norm_before\":true,\"activation_function\":\"relu\","
               "\"tie_word_embeddings\":true}\n", d, ffn, layers, V, P, d);
    fclose(f);
    struct st_writer *w;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = st_writer_open(&w, path, err);
    if (rc) return rc;
    rc = add_rand(w, "model.decoder.embed_tokens.weight", V, d, err);
    if (!rc) rc = add_rand(w, "model.decoder.embed_positions.weight", P + 2, d, err);
    if (!rc) rc = add_rand(w, "model.decoder.final_layer_norm.weight", d, 0, err);
    if (!rc) rc = add_rand(w, "model.decoder.final_layer_norm.bias", d, 0, err);
    static const char *lin[] = { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2" };
    for (int b = 0; b < layers && !rc; b++) {
        for (int i = 0; i < 6 && !rc; i++) {
            int o = i == 4 ? ffn : d, in = i == 5 ? ffn : d;
            snprintf(name, sizeof name, "model.decoder.layers.%d.%s.weight", b, lin[i]);
            rc = add_rand(w, name, o, in, err);
            snprintf(name, sizeof name, "model.decoder.layers.%d.%s.bias", b, lin[i]);
            if (!rc) rc = add_rand(w, name, o, 0, err);
        }
        static const char *ln[] = { "self_attn_layer_norm", "final_layer_norm" };
        for (int i = 0; i < 2 && !rc; i++) {
            snprintf(name, sizeof name, "model.decoder.layers.%d.%s.weight", b, ln[i]);
            rc = add_rand(w, name, d, 0, err);
            snprintf(name, sizeof name, "model.decoder.layers.%d.%s.bias", b, ln[i]);
            if (!rc) rc = add_rand(w, name, d, 0, err);
        }
    }
    if (rc) { st_writer_abort(w); return rc; }
    return st_writer_finish(w, err);
}

