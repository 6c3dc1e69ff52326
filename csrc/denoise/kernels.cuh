// The CUDA kernels of the burstkern_C denoise ops and their launches, written once: nvcc builds them for the GPU
// (denoise_cuda.cu), the C++ compiler for the SIMT emulation of the tests (denoise_cpu.cpp, common/simt_emu.h).
//
// One launch per op, the functors of functors.cuh (shared with the CPU
// build) in grid-stride loops over the flat elements, fp32 math for float/half/bfloat16 storage, 64-bit indices.
// σ and the RNG seed are read from device tensors inside the kernels: no host sync, and a CUDA-graph replay reads
// the seed the generator wrote for that replay. Host side (checks, layouts, outputs): ops.h.
#pragma once

#include <algorithm>
#include <cstdint>

#include "denoise/ops.h"
#include "common/simt.h"

namespace burstkern {
namespace denoise {
namespace {

constexpr int kThreads = 256;
// Reductions: each block sums a fixed chunk of one group, 8 elements per thread.
constexpr int kChunk = 2048;

template <class F>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(const F fn, int64_t total, int64_t M) {
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (start >= total) return;
  for (SampleCursor c(start, static_cast<int64_t>(gridDim.x) * blockDim.x, M); c.i < total; c.advance()) {
    fn(c.i, c.n, c.r);
  }
}

// Sum of v over the block, valid in thread 0 (fixed shuffle tree: deterministic).
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? warp_sums[lane] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  __syncthreads();  // warp_sums is reused by a second block_sum
  return v;
}

// Per-group reduction in one launch: block b of group g handles elements [b·kChunk, (b+1)·kChunk) of the group
// (writing any elementwise outputs of fn), stores its partial sum, and the last block of the group to finish
// (a counter per group, zeroed by a memset on the same stream) sums the group's partials in a fixed order and
// hands the total to fn.finalize. Deterministic, unlike atomically added floats, and graph-capturable.
template <class F>
__global__ void __launch_bounds__(kThreads)
    group_reduce_kernel(const F fn, int64_t group_size, int64_t nblk, int64_t M, float* __restrict__ partials,
                        unsigned int* __restrict__ counters) {
  const int64_t blk = blockIdx.x;
  const int64_t g = blk / nblk, r0 = (blk % nblk) * kChunk;
  const int64_t end = std::min<int64_t>(r0 + kChunk, group_size);
  float acc = 0.0f;
  if (r0 + threadIdx.x < end) {
    const int64_t first = g * group_size + r0 + threadIdx.x;
    const int64_t stop = g * group_size + end;
    for (SampleCursor c(first, kThreads, M); c.i < stop; c.advance()) acc += fn(c.i, c.n, c.r);
  }
  const float block_total = block_sum(acc);
  __shared__ bool is_last;
  if (threadIdx.x == 0) {
    partials[blk] = block_total;
    __threadfence();  // the partial is visible device-wide before the counter says so
    is_last = atomicAdd(&counters[g], 1u) == static_cast<unsigned int>(nblk - 1);
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < nblk; j += kThreads) s += __ldcg(&partials[g * nblk + j]);  // L2, not stale L1
  s = block_sum(s);
  if (threadIdx.x == 0) fn.finalize(g, s);
}

// The launches of the kernels above on launch policy L (common/launch_cuda.cuh on the GPU, the SIMT emulation in
// the tests): the executor functions ops.h calls.
template <class L>
struct KernelLaunch {

  template <class F>
  static void elementwise(const F& fn, int64_t total, int64_t M) {
    // memory-bound: enough resident blocks to fill every SM (8 x 256 threads), grid-stride beyond that
    const int64_t want = (total + kThreads - 1) / kThreads;
    const int64_t blocks = std::min<int64_t>(want, static_cast<int64_t>(L::sm_count()) * 8);
    L::launch(elementwise_kernel<F>, dim3(static_cast<unsigned int>(blocks)), dim3(kThreads), fn, total, M);
  }

  template <class F>
  static void reduce(const F& fn, int64_t groups, int64_t group_size, int64_t M, const Tensor& like) {
    const int64_t nblk = std::max<int64_t>(1, (group_size + kChunk - 1) / kChunk);
    const int64_t blocks = groups * nblk;
    TORCH_CHECK(blocks <= INT32_MAX, "reduction over ", groups, " groups of ", group_size,
                " elements needs more than 2^31 blocks");
    // one workspace: float partials, then one counter per group (the caching allocator makes this cheap)
    Tensor ws = at::empty({blocks + groups}, like.options().dtype(at::kFloat));
    float* partials = ws.mutable_data_ptr<float>();
    auto* counters = reinterpret_cast<unsigned int*>(partials + blocks);
    L::zero(counters, sizeof(unsigned int) * groups);
    L::launch(group_reduce_kernel<F>, dim3(static_cast<unsigned int>(blocks)), dim3(kThreads), fn, group_size, nblk,
              std::max<int64_t>(M, 1), partials, counters);
  }
};

}  // namespace
}  // namespace denoise
}  // namespace burstkern
