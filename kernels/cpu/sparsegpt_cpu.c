/*
** kernels/cpu/sparsegpt_cpu.c: the CPU backend's sparsegpt_block, the within-block OBS loop of
** SparseGPT / OPTQ (see struct ksgpt_args in kbackend.h). This is the reference the CUDA kernel
** follows operation for operation: every float is rounded as written, in this order. Rows are
** independent, so they run in parallel; each row walks the block's columns in order.
** Allocates nothing.
*/
#include "../kbackend.h"
#include "../kbackend_impl.h"

#include <math.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* SparseGPT's selection metric of weight v in a column whose Hinv diagonal is d. */
static inline float sgpt_metric(float v, float d) { return v * v / (d * d); }

/* The m-n smallest of t[0..m) get mask 1: t[k] is dropped when fewer than m-n entries precede
** it in ascending (value, index) order, i.e. equal values drop the lower index first. */
static void sgpt_nm(uint8_t *mask, const float *t, int n, int m)
{
    for (int k = 0; k < m; k++) {
        int rank = 0;
        for (int j = 0; j < m; j++) rank += t[j] < t[k] || (t[j] == t[k] && j < k);
        mask[k] = rank < m - n;
    }
}

static void sgpt_row(const struct ksgpt_args *a, int r)
{
    int cnt = a->i2 - a->i1;
    float *row = a->w + (size_t)r * a->ldw;
    uint8_t *mk = a->mask + (size_t)r * a->ldm;
    float *er = a->err + (size_t)r * cnt;
    const float *H = a->hinv;
    size_t ldh = (size_t)a->ldh;
    float step = 0;
    if (a->bits) step = a->step[a->group > 0 ? (size_t)r * a->ngroups + a->i1 / a->group : a->group == -1 ? (size_t)r : 0];
    /* unstructured: the whole block's mask comes from W as it stands at the block's start;
    ** N:M groups are chosen inside the loop */
    for (int i = 0; i < cnt; i++) {
        int col = a->i1 + i;
        mk[i] = !a->m && sgpt_metric(row[col], H[col * ldh + col]) <= a->thr;
    }
    for (int i = 0; i < cnt; i++) {
        int col = a->i1 + i;
        float dd = H[col * ldh + col];
        if (a->m && i % a->m == 0) {
            float t[256];
            for (int k = 0; k < a->m; k++) t[k] = sgpt_metric(row[col + k], H[(col + k) * ldh + col + k]);
            sgpt_nm(mk + i, t, a->n, a->m);
        }
        if (a->bits && a->group > 0 && col % a->group == 0) {
            int gc = col + a->group <= a->cols ? a->group : a->cols - col;
            float xmax = 0, xmin = 0;
            for (int c = 0; c < gc; c++) {
                xmax = fmaxf(xmax, row[col + c]);
                xmin = fminf(xmin, row[col + c]);
            }
            step = kb_optq_step(xmin, xmax, a->bits);
            a->step[(size_t)r * a->ngroups + col / a->group] = step;
        }
        float w = row[col], q = mk[i] ? 0 : w;
        if (a->bits && q != 0) q = kb_optq_apply(q, step, a->bits);
        float e = (w - q) / dd;
        row[col] = q;
        const float *hrow = H + col * ldh;
        for (int c = col + 1; c < a->i2; c++) row[c] -= e * hrow[c];
        er[i] = e;
    }
}

int kcpu_sparsegpt_block(struct kbackend *kb, const struct ksgpt_args *a, struct slm_err *err)
{
    (void)kb; (void)err;
    int cnt = a->i2 - a->i1;
    if (a->metric) {
        #pragma omp parallel for schedule(static) if ((size_t)a->rows * cnt > 65536)
        for (int r = 0; r < a->rows; r++)
            for (int i = 0; i < cnt; i++) {
                int col = a->i1 + i;
                a->metric[(size_t)r * cnt + i] = sgpt_metric(a->w[(size_t)r * a->ldw + col], a->hinv[(size_t)col * a->ldh + col]);
            }
        return 0;
    }
    #pragma omp parallel for schedule(static) if ((size_t)a->rows * cnt > 4096)
    for (int r = 0; r < a->rows; r++) sgpt_row(a, r);
    return 0;
}
