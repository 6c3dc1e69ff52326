// The CUDA executor of the burstkern_C sft ops (kernels and launches: kernels.cuh) and its registrations.
#include <torch/library.h>

#include "common/exec_cuda.cuh"
#include "common/launch_cuda.cuh"
#include "sft/kernels.cuh"

namespace burstkern {
namespace sft {
namespace {

struct CudaExec : CudaExecBase, KernelLaunch<CudaLaunch> {};

}  // namespace
}  // namespace sft
}  // namespace burstkern

TORCH_LIBRARY_IMPL(burstkern_C, CUDA, m) {
  using burstkern::sft::CudaExec;
  namespace s = burstkern::sft;
  m.impl("sft_modulate", &s::modulate<CudaExec>);
  m.impl("sft_modulate_backward", &s::modulate_backward<CudaExec>);
  m.impl("sft_group_norm", &s::group_norm<CudaExec>);
  m.impl("sft_group_norm_backward", &s::group_norm_backward<CudaExec>);
}
