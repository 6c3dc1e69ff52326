// The CUDA kernels of the burstkern_C sft ops and their launches, written once: nvcc builds them for the GPU
// (sft_cuda.cu), the C++ compiler for the SIMT emulation of the tests (sft_cpu.cpp, common/simt_emu.h).
//
// The tile functors of functors.cuh (shared with the CPU build) run by one
// tile kernel (a block per (n, c, HW chunk) in NCHW, per (n, channel tile, pixel chunk) in channels_last, 16-byte
// vectors where aligned, 64-bit indices), the per-block sums of reducing passes written as fixed-order partials
// and summed in a fixed order by a small finalize kernel: deterministic, no float atomics. fp32 math for
// float/half/bfloat16 storage. Host side (checks, layouts, outputs, tiling): ops.h.
//
// Launches: sft_modulate 1; its backward 1 (+1 finalize for per-channel gamma/beta); sft_group_norm 3 (statistics,
// finalize, apply); its backward 3 (sums + spatial dgamma/dbeta, finalize, dx). Registers (sm_90, nvcc 13.0): the
// NCHW kernels 28-80 (forward 28-48: full occupancy); channels_last keeps V channels' parameters and sums per
// thread, up to 165 for the bf16 GroupNorm backward (one 256-thread block per SM: a known cost, not yet tuned).
#pragma once

#include <algorithm>
#include <cstdint>

#include "sft/ops.h"
#include "common/simt.h"

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

// The launches of the kernels above on launch policy L (common/launch_cuda.cuh on the GPU, the SIMT emulation in
// the tests): the executor functions ops.h calls.
template <class L>
struct KernelLaunch {

  template <int V, class F>
  static void tile(const F& fn, const Tiling& T, float* part) {
    if (T.blocks == 0) return;
    const dim3 grid(static_cast<unsigned int>(T.blocks));
    if (T.cl) {
      L::launch(tile_kernel<V, true, F>, grid, dim3(kThreads), fn, T, part);
    } else {
      L::launch(tile_kernel<V, false, F>, grid, dim3(kThreads), fn, T, part);
    }
  }

  template <class F>
  static void each(const F& fn, int64_t count) {
    if (count == 0) return;
    const int64_t blocks = std::min<int64_t>((count + kThreads - 1) / kThreads, 65535);
    L::launch(each_kernel<F>, dim3(static_cast<unsigned int>(blocks)), dim3(kThreads), fn, count);
  }
};

}  // namespace
}  // namespace sft
}  // namespace burstkern
