// Shared device pieces of the deform_conv2d kernels (fwd_kernel.cuh, bwd_kernels.cuh): the block shape, the
// shared-memory element type, and the 32x32 warp tile product every implicit GEMM here is built from: tensor cores
// (nvcuda::wmma 16x16x16, fp32 accumulate) for half/bfloat16, exact fp32 FMAs for float (no TF32). Portable: nvcc
// builds it for the GPU, the C++ compiler for the SIMT emulation of the tests (common/simt.h).
#pragma once

#include <ATen/ATen.h>

#include "deform_conv/ops.h"
#include "common/simt.h"

namespace burstkern {
namespace deform_conv {
// internal linkage: nvcc and the C++ compiler build different bodies under the same names
namespace {

constexpr int kThreads = 128;  // 4 warps per block, each owning a 32x32 piece of the block's output tile
constexpr int kBK = 32;        // reduction step of every tile product
constexpr int kPad = 8;        // shared-memory row padding (elements): fewer bank conflicts, keeps wmma alignment

// Shared-memory element type of the tile products: the tensor cores' type for half/bfloat16, float for float.
template <typename T>
struct Smem {
  using type = float;
};
template <>
struct Smem<at::Half> {
  using type = __half;
};
template <>
struct Smem<at::BFloat16> {
  using type = __nv_bfloat16;
};

__device__ __forceinline__ void to_smem(float* p, float v) { *p = v; }
__device__ __forceinline__ void to_smem(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void to_smem(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// One warp's 32x32 fp32 accumulator tile. step(): acc += A[32 x kBK] · B[kBK x 32], both row-major in shared memory
// (A at the warp's first row, B at its first column). store(): the tile into a float shared-memory tile.
template <typename S>
struct WarpMma {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc[2][2];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
  }

  __device__ __forceinline__ void step(const S* A, int lda, const S* B, int ldb) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // bfloat16 tensor cores need sm_80+; the build targets sm_80 / sm_86 / sm_90
#else
    using namespace nvcuda;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, S, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, S, wmma::row_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], A + i * 16 * lda + kk, lda);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], B + kk * ldb + j * 16, ldb);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
#endif
  }

  __device__ __forceinline__ void store(float* C, int ldc) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        nvcuda::wmma::store_matrix_sync(C + i * 16 * ldc + j * 16, acc[i][j], ldc, nvcuda::wmma::mem_row_major);
  }
};

// float: exact fp32 FMAs, lane l owns rows 4·(l/4)..+4 and columns 8·(l%4)..+8 of the warp tile.
template <>
struct WarpMma<float> {
  float acc[4][8];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
  }

  __device__ __forceinline__ void step(const float* A, int lda, const float* B, int ldb) {
    const int lane = threadIdx.x & 31, r0 = (lane >> 2) * 4, c0 = (lane & 3) * 8;
#pragma unroll 4
    for (int k = 0; k < kBK; ++k) {
      float a[4], b[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = A[(r0 + i) * lda + k];
#pragma unroll
      for (int j = 0; j < 8; ++j) b[j] = B[k * ldb + c0 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  }

  __device__ __forceinline__ void store(float* C, int ldc) {
    const int lane = threadIdx.x & 31, r0 = (lane >> 2) * 4, c0 = (lane & 3) * 8;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) C[(r0 + i) * ldc + c0 + j] = acc[i][j];
  }
};

// Calls f(T{}) for the storage type T of dt (float, half, bfloat16): every kernel is instantiated for these only.
template <typename F>
void dispatch_dtype(at::ScalarType dt, const F& f) {
  switch (dt) {
    case at::kFloat:
      f(float{});
      break;
    case at::kHalf:
      f(at::Half{});
      break;
    case at::kBFloat16:
      f(at::BFloat16{});
      break;
    default:
      TORCH_CHECK(false, "the cuda backend of deform_conv2d runs float32/float16/bfloat16, got ", dt);
  }
}

}  // namespace
}  // namespace deform_conv
}  // namespace burstkern
