/*
** kernels/cuda/linalg_cuda.cu: GEMM (cuBLAS) and factorizations (cuSOLVER) for the CUDA backend.
** Row-major vs column-major: a row-major matrix read column-major is its transpose. So
**   - GEMM computes C^T = op(B)^T op(A)^T in cuBLAS's terms (swap the operands, keep the flags);
**   - a symmetric matrix needs nothing for potrf/syevd; the row-major UPPER triangle is the
**     column-major LOWER one, so Cholesky asks for LOWER and gets U = L^T in row-major terms;
**   - syevd returns eigenvectors as column-major columns, i.e. row-major ROWS: transposed after;
**   - SVD of row-major A [m x n] is the SVD of At [n x m] column-major with U and V swapped.
** Temporaries come from the pool and are released at the one done: label.
*/
#include "cuda_common.h"

int cu_gemm(struct kbackend *kb, const struct kgemm_args *a, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    if (a->m < 0 || a->n < 0 || a->k < 0 || a->batch < 1)
        return slm_err_set(err, SLM_EINVAL, "gemm: bad sizes m=%d n=%d k=%d batch=%d", a->m, a->n, a->k, a->batch);
    if (a->m == 0 || a->n == 0) return 0;
    /* cuBLAS's view: C^T [n x m] = op(B)^T [n x k] * op(A)^T [k x m] */
    cublasOperation_t opb = a->tb == KB_T ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opa = a->ta == KB_T ? CUBLAS_OP_T : CUBLAS_OP_N;
    int ldb = a->ldb > 0 ? a->ldb : 1, lda = a->lda > 0 ? a->lda : 1;
    if (a->bf16_inputs && !c->pedantic) {
        /* bf16-valued inputs are exact in TF32: tensor cores, f32 accumulation (kbackend.h) */
        const cublasComputeType_t ct = CUBLAS_COMPUTE_32F_FAST_TF32;
        if (a->batch == 1)
            CUBLAS_TRY(cublasGemmEx(c->blas, opb, opa, a->n, a->m, a->k, &a->alpha, a->b, CUDA_R_32F, ldb, a->a,
                                    CUDA_R_32F, lda, &a->beta, a->c, CUDA_R_32F, a->ldc, ct, CUBLAS_GEMM_DEFAULT));
        else
            CUBLAS_TRY(cublasGemmStridedBatchedEx(c->blas, opb, opa, a->n, a->m, a->k, &a->alpha, a->b, CUDA_R_32F, ldb,
                                                  a->stride_b, a->a, CUDA_R_32F, lda, a->stride_a, &a->beta, a->c,
                                                  CUDA_R_32F, a->ldc, a->stride_c, a->batch, ct, CUBLAS_GEMM_DEFAULT));
        return 0;
    }
    if (a->batch == 1)
        CUBLAS_TRY(cublasSgemm(c->blas, opb, opa, a->n, a->m, a->k, &a->alpha, a->b, ldb, a->a, lda,
                               &a->beta, a->c, a->ldc));
    else
        CUBLAS_TRY(cublasSgemmStridedBatched(c->blas, opb, opa, a->n, a->m, a->k, &a->alpha,
                                             a->b, ldb, a->stride_b, a->a, lda, a->stride_a,
                                             &a->beta, a->c, a->ldc, a->stride_c, a->batch));
    return 0;
}

/* ---- helpers: triangles, transposes, info ---- */
/* row-major: zero the strict lower triangle (mode 0) or copy upper into lower (mode 1) */
template <typename T>
__global__ static void k_tri(T *a, int n, int mode)
{
    size_t nn = (size_t)n * n;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < nn; idx += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(idx / n), j = (int)(idx % n);
        if (j < i) a[idx] = mode == 0 ? (T)0 : a[(size_t)j * n + i];
    }
}

/* out [cols x rows] = in^T, in [rows x cols], both row-major dense */
template <typename T>
__global__ static void k_transpose(T *out, const T *in, int rows, int cols)
{
    __shared__ T tile[32][33];
    int bx = blockIdx.x * 32, by = blockIdx.y * 32;
    for (int dy = threadIdx.y; dy < 32; dy += 8) {
        int r = by + dy, cc = bx + threadIdx.x;
        if (r < rows && cc < cols) tile[dy][threadIdx.x] = in[(size_t)r * cols + cc];
    }
    __syncthreads();
    for (int dy = threadIdx.y; dy < 32; dy += 8) {
        int r = bx + dy, cc = by + threadIdx.x; /* out row = in col */
        if (r < cols && cc < rows) out[(size_t)r * rows + cc] = tile[threadIdx.x][dy];
    }
}

template <typename T>
static int transpose(struct cu_ctx *c, T *out, const T *in, int rows, int cols, struct slm_err *err)
{
    dim3 grid((cols + 31) / 32, (rows + 31) / 32), block(32, 8);
    k_transpose<T><<<grid, block, 0, c->stream>>>(out, in, rows, cols);
    CU_LAUNCH_TRY("transpose kernel");
    return 0;
}

static int read_info(struct cu_ctx *c, int *info, struct slm_err *err)
{
    CU_TRY(cudaMemcpyAsync(info, c->d_info, sizeof(int), cudaMemcpyDeviceToHost, c->stream));
    CU_TRY(cudaStreamSynchronize(c->stream));
    return 0;
}

static int check_n(int n, const char *op, struct slm_err *err)
{
    if (n <= 0) return slm_err_set(err, SLM_EINVAL, "%s: bad size %d", op, n);
    return 0;
}

/* Column-major LOWER Cholesky in place; info > 0 -> not SPD. */
static int potrf_lower(struct cu_ctx *c, float *a, int n, const char *op, struct slm_err *err)
{
    int rc = 0, lwork = 0, info = 0;
    float *work = NULL;
    CUSOLVER_GO(cusolverDnSpotrf_bufferSize(c->solver, CUBLAS_FILL_MODE_LOWER, n, a, n, &lwork));
    RC_GO(cu_pool_alloc(c, (void **)&work, (size_t)(lwork > 0 ? lwork : 1) * sizeof(float), err));
    CUSOLVER_GO(cusolverDnSpotrf(c->solver, CUBLAS_FILL_MODE_LOWER, n, a, n, work, lwork, c->d_info));
    RC_GO(read_info(c, &info, err));
    if (info > 0) rc = slm_err_set(err, SLM_ENUMERIC, "%s: matrix not positive definite (minor %d of %d)", op, info, n);
    else if (info < 0) rc = slm_err_set(err, SLM_EINVAL, "%s: potrf argument %d", op, -info);
done:
    if (work) cu_pool_release(c, work);
    return rc;
}

int cu_cholesky_upper(struct kbackend *kb, float *a, int n, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    int rc = check_n(n, "cholesky", err);
    if (rc || (rc = potrf_lower(c, a, n, "cholesky", err))) return rc;
    size_t nn = (size_t)n * n;
    k_tri<float><<<cu_blocks(nn), 256, 0, c->stream>>>(a, n, 0);
    CU_LAUNCH_TRY("cholesky: zero lower triangle");
    return 0;
}

int cu_spd_inverse(struct kbackend *kb, float *a, int n, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    int rc = check_n(n, "spd_inverse", err), lwork = 0, info = 0;
    float *work = NULL;
    if (rc || (rc = potrf_lower(c, a, n, "spd_inverse", err))) return rc;
    CUSOLVER_GO(cusolverDnSpotri_bufferSize(c->solver, CUBLAS_FILL_MODE_LOWER, n, a, n, &lwork));
    RC_GO(cu_pool_alloc(c, (void **)&work, (size_t)(lwork > 0 ? lwork : 1) * sizeof(float), err));
    CUSOLVER_GO(cusolverDnSpotri(c->solver, CUBLAS_FILL_MODE_LOWER, n, a, n, work, lwork, c->d_info));
    RC_GO(read_info(c, &info, err));
    if (info != 0) {
        rc = slm_err_set(err, SLM_ENUMERIC, "spd_inverse: potri info=%d", info);
        goto done;
    }
    /* the result is in the column-major lower = row-major upper triangle: mirror it */
    k_tri<float><<<cu_blocks((size_t)n * n), 256, 0, c->stream>>>(a, n, 1);
    CU_GO(cudaGetLastError());
done:
    if (work) cu_pool_release(c, work);
    return rc;
}

int cu_eigh_f64(struct kbackend *kb, double *a, double *w, int n, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    int rc = check_n(n, "eigh", err), lwork = 0, info = 0;
    double *work = NULL, *vt = NULL;
    if (rc) return rc;
    CUSOLVER_GO(cusolverDnDsyevd_bufferSize(c->solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER,
                                            n, a, n, w, &lwork));
    RC_GO(cu_pool_alloc(c, (void **)&work, (size_t)(lwork > 0 ? lwork : 1) * sizeof(double), err));
    CUSOLVER_GO(cusolverDnDsyevd(c->solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, a, n, w,
                                 work, lwork, c->d_info));
    RC_GO(read_info(c, &info, err));
    if (info != 0) {
        rc = slm_err_set(err, SLM_ENUMERIC, "eigh: syevd info=%d (n=%d)", info, n);
        goto done;
    }
    /* eigenvectors are now the ROWS of the row-major buffer: transpose them into columns */
    RC_GO(cu_pool_alloc(c, (void **)&vt, (size_t)n * n * sizeof(double), err));
    RC_GO(transpose<double>(c, vt, a, n, n, err));
    CU_GO(cudaMemcpyAsync(a, vt, (size_t)n * n * sizeof(double), cudaMemcpyDeviceToDevice, c->stream));
done:
    if (work) cu_pool_release(c, work);
    if (vt) cu_pool_release(c, vt);
    return rc;
}

int cu_svd(struct kbackend *kb, const float *a, int m, int n, float *u, float *s, float *vt, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    int rc = 0, lwork = 0, info = 0, r = m < n ? m : n;
    float *x = NULL, *work = NULL, *rwork = NULL, *uc = NULL, *vc = NULL;
    if (m <= 0 || n <= 0) return slm_err_set(err, SLM_EINVAL, "svd: bad shape %d x %d", m, n);
    RC_GO(cu_pool_alloc(c, (void **)&x, (size_t)m * n * sizeof(float), err));
    RC_GO(cu_pool_alloc(c, (void **)&rwork, (size_t)r * sizeof(float), err));
    if (n >= m) {
        /* the buffer is At [n x m] column-major with rows >= cols, as gesvd needs:
        ** At = U' S V'^T, so A = V' S U'^T: U' lands in vt and V'^T in u, no transposes */
        CU_GO(cudaMemcpyAsync(x, a, (size_t)m * n * sizeof(float), cudaMemcpyDeviceToDevice, c->stream));
        CUSOLVER_GO(cusolverDnSgesvd_bufferSize(c->solver, n, m, &lwork));
        RC_GO(cu_pool_alloc(c, (void **)&work, (size_t)(lwork > 0 ? lwork : 1) * sizeof(float), err));
        CUSOLVER_GO(cusolverDnSgesvd(c->solver, 'S', 'S', n, m, x, n, s, vt, n, u, r, work, lwork, rwork, c->d_info));
    } else {
        /* tall: transpose into column-major A [m x n], factor, transpose U and V^T back */
        RC_GO(transpose<float>(c, x, a, m, n, err));
        RC_GO(cu_pool_alloc(c, (void **)&uc, (size_t)m * r * sizeof(float), err));
        RC_GO(cu_pool_alloc(c, (void **)&vc, (size_t)r * n * sizeof(float), err));
        CUSOLVER_GO(cusolverDnSgesvd_bufferSize(c->solver, m, n, &lwork));
        RC_GO(cu_pool_alloc(c, (void **)&work, (size_t)(lwork > 0 ? lwork : 1) * sizeof(float), err));
        CUSOLVER_GO(cusolverDnSgesvd(c->solver, 'S', 'S', m, n, x, m, s, uc, m, vc, r, work, lwork, rwork, c->d_info));
    }
    RC_GO(read_info(c, &info, err));
    if (info != 0) {
        rc = slm_err_set(err, SLM_ENUMERIC, "svd: gesvd info=%d (%dx%d)", info, m, n);
        goto done;
    }
    if (uc) {
        /* column-major U [m x r] is row-major [r x m]; its transpose is row-major u [m x r] */
        RC_GO(transpose<float>(c, u, uc, r, m, err));
        RC_GO(transpose<float>(c, vt, vc, n, r, err));
    }
done:
    if (x) cu_pool_release(c, x);
    if (rwork) cu_pool_release(c, rwork);
    if (work) cu_pool_release(c, work);
    if (uc) cu_pool_release(c, uc);
    if (vc) cu_pool_release(c, vc);
    return rc;
}

/* ---- Gram matrix in f64 (PCA for SliceGPT, the Gram path of the low-rank adapters) ---- */
__global__ static void k_f32_to_f64(double *y, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = (double)x[i];
}

int cu_gram_f64(struct kbackend *kb, double *cmat, const float *x, int rows, int n, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    int rc = 0;
    double *xd = NULL;
    const double one = 1.0;
    if (rows < 0 || n <= 0) return slm_err_set(err, SLM_EINVAL, "gram: bad shape %d x %d", rows, n);
    if (rows == 0) return 0;
    /* chunks of rows converted to f64 (exact), then dsyrk: products and sums in f64 as on the CPU.
    ** x row-major [rows x n] is column-major X^T [n x rows], so C += X^T X is syrk 'N' on it;
    ** the row-major upper triangle is the column-major lower one. */
    int chunk = (int)((size_t)256 * 1024 * 1024 / ((size_t)n * sizeof(double)));
    if (chunk < 1) chunk = 1;
    if (chunk > rows) chunk = rows;
    RC_GO(cu_pool_alloc(c, (void **)&xd, (size_t)chunk * n * sizeof(double), err));
    for (int r0 = 0; r0 < rows; r0 += chunk) {
        int nr = rows - r0 < chunk ? rows - r0 : chunk;
        size_t ne = (size_t)nr * n;
        k_f32_to_f64<<<cu_blocks(ne), 256, 0, c->stream>>>(xd, x + (size_t)r0 * n, ne);
        CU_GO(cudaGetLastError());
        CUBLAS_GO(cublasDsyrk(c->blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, n, nr, &one, xd, n, &one, cmat, n));
    }
done:
    if (xd) cu_pool_release(c, xd);
    return rc;
}
