/* kernels/cuemu: the CUDA header this names, for the CPU emulation (everything is in cuemu.h). */
#include "cuemu.h"
