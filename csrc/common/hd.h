// BURSTKERN_HD marks the per-element functions that the CUDA kernels and the CPU build of the same burstkern_C ops
// share (__host__ __device__ under nvcc, plain inline in the C++ compiler), so the CPU tests run the device code.
#pragma once

#if defined(__CUDACC__)
#define BURSTKERN_HD __host__ __device__ __forceinline__
#else
#define BURSTKERN_HD inline
#endif
