// SIMT emulation: the CUDA kernels of csrc/ compiled by the C++ compiler and run on the CPU, so their tiling,
// shared memory, barriers, warp shuffles, tensor-core tile products and atomics are tested on machines without a
// GPU. Included through common/simt.h when __CUDACC__ is not defined (testing builds only: these stand-ins for the
// CUDA keywords live here and nowhere else); the CPU executors (csrc/<op>/<op>_cpu.cpp) launch the kernels through
// EmuLaunch while burstkern_C::set_simt_emulation is on.
//
// Model: a launch runs its blocks one after another; the threads of a block are fibers (ucontext) on the calling
// thread, each run until it reaches a barrier (__syncthreads, or the warp barrier inside a shuffle) or exits, in
// thread order or in reverse order (a missing barrier then reads data not yet written, or overwritten, and the
// two orders disagree). Threads of one block that wait at different barriers are reported as a divergence error,
// and the tensor-core fragment loads and stores check CUDA's alignment rules (256-bit pointers, ldm a multiple of
// 16 bytes). __shared__ variables are static (one block at a time), so they keep the previous block's values
// instead of being undefined: a read of shared memory that this block never wrote is not caught. Global-memory
// bounds are not checked here (that is compute-sanitizer's job on the GPU).
#pragma once

#if defined(__CUDACC__)
#error "simt_emu.h is the C++ compiler's stand-in for CUDA; nvcc uses the real thing"
#endif
#if !defined(BURSTKERN_TESTING)
#error "the SIMT emulation is test machinery: build with BURSTKERN_TESTING=1"
#endif

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>

#include "common/exec.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

namespace burstkern {
namespace simt {

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

// The emulated thread's coordinates (set by the scheduler before it switches to a fiber).
extern thread_local uint3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;

// Counters since the last reset: launches, blocks, barriers.
struct Stats {
  int64_t launches, blocks, barriers;
};
Stats stats();

// Runs body once per thread of every block of the grid (the kernel with its arguments bound).
void run(dim3 grid, dim3 block, const std::function<void()>& body);

// The calling fiber waits until every live thread of its block (__syncthreads) or of its warp (shuffles) arrives.
void block_barrier();
void warp_barrier();
// This thread's slot in its warp's exchange buffer, and lane l's slot of the same warp.
uint64_t& lane_slot();
uint64_t lane_slot_of(int lane);
[[noreturn]] void fail(const char* what);
// The calling thread's lane in its warp.
inline int lane_id() {
  return static_cast<int>((threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31);
}

inline void __syncthreads() { block_barrier(); }
inline void __syncwarp(unsigned int = 0xffffffffu) { warp_barrier(); }
inline void __threadfence() {}  // blocks run one at a time
[[noreturn]] inline void __trap() { fail("__trap() reached"); }
template <typename T>
inline T __ldcg(const T* p) { return *p; }

template <typename T>
T shuffle_from(unsigned int mask, T v, int (*src_of)(int lane, int arg), int arg) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value, "shuffle of a small value");
  if (mask != 0xffffffffu) fail("emulated shuffles take the full-warp mask only");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  lane_slot() = bits;
  warp_barrier();  // every lane has published its value
  const int src = src_of(lane_id(), arg);
  T out = v;
  if (src >= 0) {
    const uint64_t got = lane_slot_of(src);
    std::memcpy(&out, &got, sizeof(T));
  }
  warp_barrier();  // every lane has read before the slots are reused
  return out;
}

inline int down_src(int lane, int delta) { return lane + delta < 32 ? lane + delta : -1; }
inline int xor_src(int lane, int m) { return (lane ^ m) & 31; }

template <typename T>
inline T __shfl_down_sync(unsigned int mask, T v, unsigned int delta) { return shuffle_from(mask, v, down_src, static_cast<int>(delta)); }
template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T v, int lane_mask) { return shuffle_from(mask, v, xor_src, lane_mask); }

// Blocks run one at a time on one thread, so a read-modify-write is atomic.
template <typename T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}

using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;
inline __half __float2half_rn(float v) { return __half(v); }
inline __nv_bfloat16 __float2bfloat16_rn(float v) { return __nv_bfloat16(v); }
inline float __half2float(__half v) { return static_cast<float>(v); }
inline float __bfloat162float(__nv_bfloat16 v) { return static_cast<float>(v); }

// The launch policy of the emulated kernels (the CPU executors under set_simt_emulation); the CUDA one is
// common/launch_cuda.cuh.
struct EmuLaunch : EmulatedDevice {
  struct Guard {
    explicit Guard(c10::Device) {}
  };
  template <class... P, class... A>
  static void launch(void (*kernel)(P...), dim3 grid, dim3 block, A&&... args) {
    const std::tuple<P...> params(std::forward<A>(args)...);  // converted once, copied into every thread, as CUDA
    run(grid, block, [&] { std::apply(kernel, params); });
  }
  // where workspaces live: the emulated kernels take CPU tensors
  static at::TensorOptions options() { return at::TensorOptions().device(at::kCPU); }
  // a small machine, so grid-size heuristics that scale with the SM count still split work into several blocks
  static int sm_count() { return 2; }
  static void zero(void* p, size_t bytes) { std::memset(p, 0, bytes); }
};

}  // namespace simt
}  // namespace burstkern

// nvcuda::wmma, functionally. As on the hardware, an accumulator fragment is spread over the warp: lane l owns 8
// consecutive elements of the row-major 16x16 tile (row l/2), computes only those in mma_sync and stores only those
// in store_matrix_sync, so a kernel that skips a lane's store or reads the tile before every lane has stored it
// is caught. A/B fragments hold the whole tile (as float) in every lane. Products of half/bfloat16 inputs are exact
// in fp32 and accumulated in fp32 as on the tensor cores (up to the order of the additions).
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int kRows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int kCols = std::is_same<Use, matrix_a>::value ? K : N;
  static constexpr int num_elements = kRows * kCols;
  float x[kRows * kCols];
};

template <int M, int N, int K, class T>
struct fragment<accumulator, M, N, K, T, void> {
  static_assert(M * N % 32 == 0, "an accumulator tile spreads evenly over the warp");
  static constexpr int num_elements = M * N / 32;
  T x[M * N / 32];
  // the first element (row-major index into the M x N tile) of the calling lane's slice
  static int first() { return burstkern::simt::lane_id() * num_elements; }
};

inline void check_tile(const void* p, unsigned int ldm, size_t elem, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) burstkern::simt::fail(what);  // 256-bit aligned pointer
  if ((ldm * elem) % 16 != 0) burstkern::simt::fail(what);                     // ldm: a multiple of 16 bytes
}

template <class Use, int M, int N, int K, class T, class Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float v) {
  for (auto& e : f.x) e = v;
}

template <class Use, int M, int N, int K, class T, class Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned int ldm) {
  static_assert(std::is_same<Layout, row_major>::value, "the emulation loads row-major tiles");
  check_tile(p, ldm, sizeof(T), "wmma::load_matrix_sync: misaligned tile or leading dimension");
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::kRows; ++r)
    for (int c = 0; c < F::kCols; ++c) f.x[r * F::kCols + c] = static_cast<float>(p[static_cast<size_t>(r) * ldm + c]);
}

template <int M, int N, int K, class T>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, row_major>& a,
              const fragment<matrix_b, M, N, K, T, row_major>& b, const fragment<accumulator, M, N, K, float>& c) {
  using Acc = fragment<accumulator, M, N, K, float>;
  const int e0 = Acc::first();
  for (int e = 0; e < Acc::num_elements; ++e) {
    const int i = (e0 + e) / N, j = (e0 + e) % N;
    float s = c.x[e];
    for (int k = 0; k < K; ++k) s += a.x[i * K + k] * b.x[k * N + j];
    d.x[e] = s;
  }
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned int ldm, layout_t layout) {
  if (layout != mem_row_major) burstkern::simt::fail("the emulation stores row-major tiles");
  check_tile(p, ldm, sizeof(float), "wmma::store_matrix_sync: misaligned tile or leading dimension");
  using Acc = fragment<accumulator, M, N, K, float>;
  const int e0 = Acc::first();
  for (int e = 0; e < Acc::num_elements; ++e) p[static_cast<size_t>((e0 + e) / N) * ldm + (e0 + e) % N] = f.x[e];
}
}  // namespace wmma
}  // namespace nvcuda

using burstkern::simt::__bfloat162float;
using burstkern::simt::__float2bfloat16_rn;
using burstkern::simt::__float2half_rn;
using burstkern::simt::__half;
using burstkern::simt::__half2float;
using burstkern::simt::__ldcg;
using burstkern::simt::__nv_bfloat16;
using burstkern::simt::__shfl_down_sync;
using burstkern::simt::__shfl_xor_sync;
using burstkern::simt::__syncthreads;
using burstkern::simt::__syncwarp;
using burstkern::simt::__threadfence;
using burstkern::simt::__trap;
using burstkern::simt::atomicAdd;
using burstkern::simt::blockDim;
using burstkern::simt::blockIdx;
using burstkern::simt::dim3;
using burstkern::simt::gridDim;
using burstkern::simt::threadIdx;
using burstkern::simt::uint3;
