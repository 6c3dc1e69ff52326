// burstkern_C::poison_ — the simplest kernel of the extension: proves the build, the registration and a launch on
// the current stream, and gives tests a device-side way to poison outputs before a kernel writes them.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "checks.h"

namespace burstkern {
namespace {

// Byte-wise fill with 0xFF: for float32/float16/bfloat16/float64 every all-ones pattern is a NaN.
__global__ void poison_kernel(uint8_t* __restrict__ data, int64_t nbytes) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nbytes; i += stride) {
    data[i] = 0xFF;
  }
}

void poison_(at::Tensor self) {
  BURSTKERN_CHECK_CUDA(self, "self");
  TORCH_CHECK(self.is_contiguous(), "self must be contiguous, got strides ", self.strides());
  if (self.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(self.device());
  const int64_t nbytes = self.numel() * self.element_size();
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((nbytes + threads - 1) / threads, 65535);
  poison_kernel<<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      static_cast<uint8_t*>(self.data_ptr()), nbytes);
  BURSTKERN_LAUNCH_CHECK();
}

}  // namespace
}  // namespace burstkern

TORCH_LIBRARY_IMPL(burstkern_C, CUDA, m) { m.impl("poison_", &burstkern::poison_); }
