// burstkern_C::poison_ (testing builds): a byte-wise 0xFF fill on the current stream, which is NaN for every float
// dtype, so tests can poison a device buffer before a kernel writes it. The smallest CUDA kernel of the extension.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "common/launch_cuda.cuh"

namespace burstkern {
namespace testing {
namespace {

__global__ void poison_kernel(uint8_t* __restrict__ data, int64_t nbytes) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nbytes; i += stride) {
    data[i] = 0xFF;
  }
}

void poison_(at::Tensor self) {
  TORCH_CHECK(self.is_cuda(), "self must be a CUDA tensor, got device ", self.device());
  TORCH_CHECK(self.is_contiguous(), "self must be contiguous, got strides ", self.strides());
  if (self.numel() == 0) return;
  const CudaLaunch::Guard guard(self.device());
  const int64_t nbytes = self.numel() * self.element_size();
  const int64_t blocks = std::min<int64_t>((nbytes + 255) / 256, 65535);
  CudaLaunch::launch(poison_kernel, dim3(static_cast<unsigned int>(blocks)), dim3(256),
                     static_cast<uint8_t*>(self.data_ptr()), nbytes);
}

}  // namespace
}  // namespace testing
}  // namespace burstkern

TORCH_LIBRARY_IMPL(burstkern_C, CUDA, m) { m.impl("poison_", &burstkern::testing::poison_); }
