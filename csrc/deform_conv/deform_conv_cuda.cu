// The CUDA executor of the burstkern_C deform_conv2d ops: the kernels of deform_conv_kernels.cuh on the GPU.
#include <torch/library.h>

#include "common/launch_cuda.cuh"
#include "deform_conv/deform_conv_kernels.cuh"

TORCH_LIBRARY_IMPL(burstkern_C, CUDA, m) {
  burstkern::deform_conv::register_impls<burstkern::deform_conv::KernelImpls<burstkern::CudaLaunch>>(m);
}
