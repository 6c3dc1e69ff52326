// What a kernels header (csrc/<op>/<op>_kernels.cuh) includes for the CUDA builtins and types it uses: the real ones
// under nvcc; under the C++ compiler, the SIMT emulation's stand-ins (csrc/testing/simt_emu.h), which exist only in
// a testing build (BURSTKERN_TESTING).
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#elif defined(BURSTKERN_TESTING)
#include "testing/simt_emu.h"
#else
#error "the CUDA kernels compile with nvcc, or with the C++ compiler only for the SIMT emulation of a testing build"
#endif
