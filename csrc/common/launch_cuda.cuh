// The launch policy of the CUDA kernels: they are written once (csrc/<op>/<op>_kernels.cuh) with their host-side
// launch code templated on a policy, this one on the GPU and testing/simt_emu.h's EmuLaunch on the CPU (tests).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <utility>

#include "common/exec.h"

namespace burstkern {

struct CudaLaunch : CudaDevice {
  using Guard = c10::cuda::CUDAGuard;
  // kernel<<<grid, block, 0, current stream>>>(args...), then the launch check
  template <class... P, class... A>
  static void launch(void (*kernel)(P...), dim3 grid, dim3 block, A&&... args) {
    kernel<<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(std::forward<A>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // where workspaces live: the current CUDA device
  static at::TensorOptions options() { return at::TensorOptions().device(at::kCUDA, c10::cuda::current_device()); }
  static int sm_count() {
    static int counts[64] = {0};  // per device, read once
    const int dev = c10::cuda::current_device();
    if (dev < 0 || dev >= 64) return 132;
    if (counts[dev] == 0) {
      int v = 0;
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
      counts[dev] = v;
    }
    return counts[dev];
  }
  // zero bytes on the current stream (graph-capturable)
  static void zero(void* p, size_t bytes) {
    C10_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, c10::cuda::getCurrentCUDAStream()));
  }
};

}  // namespace burstkern
