// Kernels with known bugs (and one without) for the tests of the SIMT emulation itself (tests/test_simt_emulation.py):
// what the emulation must compute, and the mistakes it must report. Op burstkern_C::simt_selftest(case) -> Tensor.
#include <torch/library.h>

#include <string>

#include "common/simt.h"

namespace burstkern {
namespace simt {
namespace {

constexpr int kThreads = 64;

// Correct: each block sums 64 values (shared memory, a barrier, warp shuffles, atomics across warps).
__global__ void block_sum_kernel(const float* in, float* out) {
  __shared__ float sm[kThreads];
  sm[threadIdx.x] = in[blockIdx.x * kThreads + threadIdx.x];
  __syncthreads();
  float v = sm[kThreads - 1 - threadIdx.x];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) atomicAdd(out + blockIdx.x, v);
}

// Bug: reads a neighbour's shared-memory slot without a barrier after the writes.
__global__ void missing_barrier_kernel(const float* in, float* out) {
  __shared__ float sm[kThreads];
  sm[threadIdx.x] = in[blockIdx.x * kThreads + threadIdx.x];
  out[blockIdx.x * kThreads + threadIdx.x] = sm[(threadIdx.x + 1) % kThreads];
}

// Bug: half of each warp waits at __syncthreads while the other half shuffles with the full-warp mask (a hang or
// undefined result on the GPU).
__global__ void divergent_barrier_kernel(const float* in, float* out) {
  float v = in[threadIdx.x];
  if ((threadIdx.x & 31) < 16) {
    __syncthreads();
  } else {
    v += __shfl_down_sync(0xffffffffu, v, 1);
  }
  out[threadIdx.x] = v;
}

// Bug: a tensor-core tile load from a pointer that is not 256-bit aligned.
__global__ void misaligned_wmma_kernel(const float*, float* out) {
  __shared__ __align__(32) __half tile[16 * 24];
  for (int i = threadIdx.x; i < 16 * 24; i += blockDim.x) tile[i] = __float2half_rn(1.0f);
  __syncthreads();
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major> a;
  nvcuda::wmma::load_matrix_sync(a, tile + 4, 24);  // 8 bytes past an aligned address
  out[threadIdx.x] = 0.0f;
}

// Correct: a 16x16x16 tile product on the (emulated) tensor cores, stored by every lane.
__global__ void wmma_kernel(const float* in, float* out) {
  __shared__ __align__(32) __half a_s[16 * 16], b_s[16 * 16];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    a_s[i] = __float2half_rn(in[i]);
    b_s[i] = __float2half_rn(in[256 + i]);
  }
  __syncthreads();
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> b;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
  wmma::fill_fragment(c, 0.0f);
  wmma::load_matrix_sync(a, a_s, 16);
  wmma::load_matrix_sync(b, b_s, 16);
  wmma::mma_sync(c, a, b, c);
  if (threadIdx.x < 32) wmma::store_matrix_sync(out, c, 16, wmma::mem_row_major);
}

at::Tensor selftest(const at::Tensor& in, const std::string& which) {
  TORCH_CHECK(in.device().is_cpu() && in.scalar_type() == at::kFloat && in.is_contiguous() && in.numel() >= 512,
              "simt_selftest: in must be a contiguous CPU float32 tensor of at least 512 elements, got ",
              in.sizes(), " ", in.scalar_type(), " on ", in.device());
  const int64_t blocks = in.numel() / kThreads;
  const float* x = in.data_ptr<float>();
  auto launch = [&](auto kernel, int64_t grid, int64_t n_out) {
    at::Tensor out = at::zeros({n_out}, in.options());
    EmuLaunch::launch(kernel, dim3(static_cast<unsigned int>(grid)), dim3(kThreads), x, out.data_ptr<float>());
    return out;
  };
  if (which == "block_sum") return launch(block_sum_kernel, blocks, blocks);
  if (which == "missing_barrier") return launch(missing_barrier_kernel, blocks, blocks * kThreads);
  if (which == "divergent_barrier") return launch(divergent_barrier_kernel, 1, kThreads);
  if (which == "misaligned_wmma") return launch(misaligned_wmma_kernel, 1, kThreads);
  if (which == "wmma") return launch(wmma_kernel, 1, 256);
  TORCH_CHECK(false, "simt_selftest: unknown case '", which, "'");
}

}  // namespace
}  // namespace simt
}  // namespace burstkern

TORCH_LIBRARY_FRAGMENT(burstkern_C, m) {
  // Tests of the SIMT emulation: runs the built-in kernel `which` on `in` (block_sum, missing_barrier,
  // divergent_barrier, misaligned_wmma, wmma) and returns its output; the buggy ones must raise or disagree.
  m.def("simt_selftest(Tensor input, str which) -> Tensor", &burstkern::simt::selftest);
}
