// The CUDA executor's forward of burstkern_C::deform_conv2d (kernel: fwd_kernel.cuh) and the CUDA registrations.
#include <torch/library.h>

#include "common/launch_cuda.cuh"
#include "deform_conv/cuda_common.cuh"
#include "deform_conv/fwd_kernel.cuh"

namespace burstkern {
namespace deform_conv {

void CudaExec::forward(const Args& a, at::ScalarType dt) { launch_forward<CudaLaunch>(a, dt); }

}  // namespace deform_conv
}  // namespace burstkern
TORCH_LIBRARY_IMPL(burstkern_C, CUDA, m) {
  using burstkern::deform_conv::CudaExec;
  namespace dc = burstkern::deform_conv;
  m.impl("deform_conv2d", &dc::forward<CudaExec>);
  m.impl("deform_conv2d_backward", &dc::backward<CudaExec>);
}
