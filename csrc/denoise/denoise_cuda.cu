// The CUDA executor of the burstkern_C denoise ops (kernels and launches: kernels.cuh) and its registrations.
#include <torch/library.h>

#include "common/exec_cuda.cuh"
#include "common/launch_cuda.cuh"
#include "denoise/kernels.cuh"

namespace burstkern {
namespace denoise {
namespace {

struct CudaExec : CudaExecBase, KernelLaunch<CudaLaunch> {};

}  // namespace
}  // namespace denoise
}  // namespace burstkern

TORCH_LIBRARY_IMPL(burstkern_C, CUDA, m) {
  using burstkern::denoise::CudaExec;
  namespace dn = burstkern::denoise;
  m.impl("denoise_scalings", &dn::scalings<CudaExec>);
  m.impl("denoise_combine", &dn::combine<CudaExec>);
  m.impl("denoise_combine_backward", &dn::combine_backward<CudaExec>);
  m.impl("edm_euler_update", &dn::euler<CudaExec>);
  m.impl("edm_heun_update", &dn::heun<CudaExec>);
  m.impl("add_noise", &dn::add_noise<CudaExec>);
  m.impl("cm_update", &dn::cm_update<CudaExec>);
  m.impl("cm_update_backward", &dn::cm_update_backward<CudaExec>);
  m.impl("edm_loss", &dn::edm_loss<CudaExec>);
  m.impl("edm_loss_backward", &dn::edm_loss_backward<CudaExec>);
  m.impl("denoise_randn", &dn::randn<CudaExec>);
}
