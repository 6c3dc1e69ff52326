// The CUDA kernel of burstkern_C::denoise_randn (testing/denoise_randn.h): the denoise ops' grid-stride launch.
#include <torch/library.h>

#include "common/launch_cuda.cuh"
#include "denoise/denoise_kernels.cuh"
#include "testing/denoise_randn.h"

namespace burstkern {
namespace testing {
namespace {

using Exec = denoise::KernelLaunch<CudaLaunch>;

std::tuple<at::Tensor, at::Tensor> randn_cuda(const at::Tensor& seed, const at::Tensor& offsets) {
  TORCH_CHECK(offsets.is_cuda(), "offsets must be a CUDA tensor here, got ", offsets.device());
  return randn<Exec>(seed, offsets);
}

}  // namespace
}  // namespace testing
}  // namespace burstkern

TORCH_LIBRARY_IMPL(burstkern_C, CUDA, m) { m.impl("denoise_randn", &burstkern::testing::randn_cuda); }
