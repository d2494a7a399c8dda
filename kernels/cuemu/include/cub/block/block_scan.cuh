/* kernels/cuemu: cub::BlockScan's ExclusiveSum for the CPU emulation. Like CUB's, it synchronises
** the block inside, and the caller must __syncthreads() before reusing the TempStorage. */
#ifndef CUEMU_CUB_BLOCK_SCAN_CUH
#define CUEMU_CUB_BLOCK_SCAN_CUH
#include "../../cuemu.h"

namespace cub {
template <typename T, int THREADS> class BlockScan {
public:
    struct TempStorage { T v[THREADS]; };
    explicit BlockScan(TempStorage &t) : t_(t) {}
    void ExclusiveSum(T in, T &out, T &aggregate)
    {
        int me = (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
        t_.v[me] = in;
        __syncthreads();
        T run = T(), all = T();
        for (int i = 0; i < THREADS; i++) {
            if (i == me) run = all;
            all = all + t_.v[i];
        }
        out = run;
        aggregate = all;
    }
    void ExclusiveSum(T in, T &out) { T a; ExclusiveSum(in, out, a); }
private:
    TempStorage &t_;
};
}
#endif
