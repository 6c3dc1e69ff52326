// cpu_gemm::mm: out = beta·out + a·b for the block GEMMs of the CPU kernels (called from inside their own
// at::parallel_for regions), through oneDNN where torch has it.
//
// Why not at::mm: for fp32 ATen's CPU GEMM is MKL's sgemm, which on AMD CPUs runs its generic "zen" kernel.
// Measured on the project's 2-core AMD EPYC (Zen 5, AVX-512), one thread, deform_conv2d's block GEMM
// [64 x 576] x [576 x 240]: MKL 89 GFLOP/s, oneDNN (ATen's mkldnn_matmul) 169 GFLOP/s, the rate torch's own
// dense conv2d reaches through oneDNN. ATen exports at::native::mkldnn_matmul (TORCH_API) but does not install
// its header, so it is declared here, weakly: a torch without it (no MKLDNN, or a changed signature, which changes
// the mangled name) leaves the symbol null and every call takes at::mm. A call that oneDNN refuses (c10::Error)
// falls back to at::mm too, and turns the oneDNN path off for the process. BURSTKERN_CPU_GEMM=aten forces at::mm.
//
// Only fp32 goes to oneDNN: fp64 is not supported there, and bf16 / fp16 at::mm already takes oneDNN when the
// CPU supports it (mkldnn_matmul's bf16 path would throw on a CPU without AVX-512 BW/VL/DQ). oneDNN follows
// torch.backends.mkldnn.matmul.fp32_precision as torch's own oneDNN matmuls do (default "ieee": fp32 math).
//
// Thread count: a GEMM runs on the calling thread only (the kernels parallelise over blocks), whatever the
// caller: inside a parallel region oneDNN is serial anyway (omp_in_parallel), outside one (a region of a single
// unit runs inline) the guard sets the calling thread's OpenMP thread count to 1 for the call, so the result never
// depends on torch.get_num_threads().
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__ELF__)
namespace at {
namespace native {
TORCH_API void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2, const at::Tensor& result, float beta,
                             float alpha) __attribute__((weak));
}  // namespace native
}  // namespace at
#endif

namespace burstkern {
namespace cpu_gemm {

inline std::atomic<bool>& onednn_on() {
  static std::atomic<bool> on{[] {
#if defined(__ELF__)
    const char* v = std::getenv("BURSTKERN_CPU_GEMM");
    return !(v && std::strcmp(v, "aten") == 0) && at::native::mkldnn_matmul != nullptr;
#else
    return false;
#endif
  }()};
  return on;
}

// the GEMM library fp32 block GEMMs use ("onednn" or "aten"), for burstkern info
inline const char* fp32_library() { return onednn_on().load() ? "onednn" : "aten"; }

class SerialOmp {  // the calling thread's OpenMP thread count is 1 while it lives
 public:
  SerialOmp() {
#ifdef _OPENMP
    prev_ = omp_get_max_threads();
    if (prev_ != 1) omp_set_num_threads(1);
#endif
  }
  ~SerialOmp() {
#ifdef _OPENMP
    if (prev_ != 1) omp_set_num_threads(prev_);
#endif
  }
  SerialOmp(const SerialOmp&) = delete;
  SerialOmp& operator=(const SerialOmp&) = delete;

 private:
  int prev_ = 1;
};

// out = beta·out + a·b, beta 0 (out is not read: it may hold anything, NaN included) or 1; any strides of 2-D views
inline void mm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta) {
#if defined(__ELF__)
  if (out.scalar_type() == at::kFloat && onednn_on().load(std::memory_order_relaxed)) {
    try {
      SerialOmp serial;
      at::native::mkldnn_matmul(a, b, out, beta, 1.0f);
      return;
    } catch (const c10::Error&) {
      onednn_on().store(false);
    }
  }
#endif
  at::Tensor o = out;  // the _out functions take a non-const reference
  if (beta != 0.0f) {
    at::addmm_out(o, out, a, b);
  } else {
    at::mm_out(o, a, b);
  }
}

}  // namespace cpu_gemm
}  // namespace burstkern
