// What a kernel file (csrc/<op>/*kernels.cuh) includes for the CUDA builtins and types it uses: the real ones
// under nvcc, common/simt_emu.h's CPU stand-ins under the C++ compiler (the SIMT emulation of the tests).
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#else
#include "common/simt_emu.h"
#endif
