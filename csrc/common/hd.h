// BURSTKERN_HD marks the per-element functions of the CUDA kernels (__host__ __device__ under nvcc, plain inline in
// the C++ compiler): the SIMT emulation of the tests runs them on the CPU, and the CPU kernels may call them too.
#pragma once

#if defined(__CUDACC__)
#define BURSTKERN_HD __host__ __device__ __forceinline__
#else
#define BURSTKERN_HD inline
#endif
