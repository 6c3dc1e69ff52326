// The CUDA executor of the burstkern_C sft ops: the kernels of sft_kernels.cuh on the GPU.
#include <torch/library.h>

#include "common/launch_cuda.cuh"
#include "sft/sft_kernels.cuh"

TORCH_LIBRARY_IMPL(burstkern_C, CUDA, m) {
  burstkern::sft::register_impls<burstkern::sft::KernelImpls<burstkern::CudaLaunch>>(m);
}
