// Schema and CPU kernel of burstkern_C::denoise_randn (testing/denoise_randn.h; CUDA: denoise_randn.cu).
#include <torch/library.h>

#include "denoise/denoise_kernels.cuh"  // the CUDA kernel on the SIMT emulation while it is on
#include "testing/denoise_randn.h"

namespace burstkern {
namespace testing {
namespace {

struct SerialLoop {
  struct Guard {
    explicit Guard(c10::Device) {}
  };
  template <class F>
  static void elementwise(const F& fn, int64_t count, int64_t) {
    for (int64_t i = 0; i < count; ++i) fn(i, i, 0);
  }
};

std::tuple<at::Tensor, at::Tensor> randn_cpu(const at::Tensor& seed, const at::Tensor& offsets) {
  TORCH_CHECK(offsets.device().is_cpu(), "offsets must be a CPU tensor here, got ", offsets.device());
  if (simt_mode() != 0) return randn<denoise::KernelLaunch<simt::EmuLaunch>>(seed, offsets);
  return randn<SerialLoop>(seed, offsets);
}

}  // namespace
}  // namespace testing
}  // namespace burstkern

TORCH_LIBRARY_FRAGMENT(burstkern_C, m) {
  // The in-kernel RNG at int64 offsets: (float32 normals, int64 Philox words [..., 4]); tests pin it to rng.py.
  m.def("denoise_randn(Tensor seed, Tensor offsets) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(burstkern_C, CPU, m) { m.impl("denoise_randn", &burstkern::testing::randn_cpu); }
