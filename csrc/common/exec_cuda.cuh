// The CUDA counterpart of common/exec.h's CpuExecBase: device guard and device check for the CUDA executors.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>

namespace burstkern {

struct CudaExecBase {
  using Guard = c10::cuda::CUDAGuard;

  static void check_device(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  }
};

}  // namespace burstkern
