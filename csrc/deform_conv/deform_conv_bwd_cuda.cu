// The CUDA executor's backward of burstkern_C::deform_conv2d (kernels: bwd_kernels.cuh).
#include "common/launch_cuda.cuh"
#include "deform_conv/bwd_kernels.cuh"
#include "deform_conv/cuda_common.cuh"

namespace burstkern {
namespace deform_conv {

void CudaExec::backward_data(const Args& a, at::ScalarType dt, bool deterministic) {
  launch_backward_data<CudaLaunch>(a, dt, deterministic);
}

Tensor CudaExec::backward_weight(const Args& a, at::ScalarType dt) { return launch_backward_weight<CudaLaunch>(a, dt); }

}  // namespace deform_conv
}  // namespace burstkern
