// CUDA kernels of the burstkern_C sft ops: the tile functors of functors.cuh (shared with the CPU build) run by one
// tile kernel (a block per (n, c, HW chunk) in NCHW, per (n, channel tile, pixel chunk) in channels_last, 16-byte
// vectors where aligned, 64-bit indices), the per-block sums of reducing passes written as fixed-order partials
// and summed in a fixed order by a small finalize kernel: deterministic, no float atomics. fp32 math for
// float/half/bfloat16 storage. Host side (checks, layouts, outputs, tiling): ops.h.
//
// Launches: sft_modulate 1; its backward 1 (+1 finalize for per-channel gamma/beta); sft_group_norm 3 (statistics,
// finalize, apply); its backward 3 (sums + spatial dgamma/dbeta, finalize, dx). Registers (sm_90, nvcc 13.0): the
// NCHW kernels 28-80 (forward 28-48: full occupancy); channels_last keeps V channels' parameters and sums per
// thread, up to 165 for the bf16 GroupNorm backward (one 256-thread block per SM: a known cost, not yet tuned).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "common/exec_cuda.cuh"
#include "common/checks.h"
#include "sft/ops.h"

namespace burstkern {
namespace sft {
namespace {

template <int V, bool CL, class F>
__global__ void __launch_bounds__(kThreads) tile_kernel(const F fn, const Tiling T, float* __restrict__ part) {
  const int64_t b = blockIdx.x, t = threadIdx.x;
  float acc[V][F::K];
  thread_run<V, CL>(fn, T, b, t, acc);
  if constexpr (F::kReduce) {
    if (part == nullptr) return;  // nothing to reduce in this call (e.g. spatial gamma and beta): whole block
    // V·K floats per thread: at most 8·4·256·4 B = 32 KiB
    __shared__ float sm[kThreads * V * F::K];
    block_store<V, F::K, CL>(t, acc, sm);
    __syncthreads();
    for (int64_t half = T.rows() / 2; half >= 1; half >>= 1) {
      block_level<V, F::K, CL>(T, t, half, sm);
      __syncthreads();
    }
    block_write<V, F::K, CL>(T, b, t, sm, part);
  }
}

template <class F>
__global__ void __launch_bounds__(kThreads) each_kernel(const F fn, int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) fn(i);
}

struct CudaExec : CudaExecBase {

  template <int V, class F>
  static void tile(const F& fn, const Tiling& T, float* part) {
    if (T.blocks == 0) return;
    const dim3 grid(static_cast<unsigned int>(T.blocks));
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    if (T.cl) {
      tile_kernel<V, true, F><<<grid, kThreads, 0, stream>>>(fn, T, part);
    } else {
      tile_kernel<V, false, F><<<grid, kThreads, 0, stream>>>(fn, T, part);
    }
    BURSTKERN_LAUNCH_CHECK();
  }

  template <class F>
  static void each(const F& fn, int64_t count) {
    if (count == 0) return;
    const int64_t blocks = std::min<int64_t>((count + kThreads - 1) / kThreads, 65535);
    each_kernel<F><<<static_cast<unsigned int>(blocks), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(fn, count);
    BURSTKERN_LAUNCH_CHECK();
  }
};

}  // namespace
}  // namespace sft
}  // namespace burstkern

TORCH_LIBRARY_IMPL(burstkern_C, CUDA, m) {
  using burstkern::sft::CudaExec;
  namespace s = burstkern::sft;
  m.impl("sft_modulate", &s::modulate<CudaExec>);
  m.impl("sft_modulate_backward", &s::modulate_backward<CudaExec>);
  m.impl("sft_group_norm", &s::group_norm<CudaExec>);
  m.impl("sft_group_norm_backward", &s::group_norm_backward<CudaExec>);
}
