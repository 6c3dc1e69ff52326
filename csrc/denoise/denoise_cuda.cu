// The CUDA executor of the burstkern_C denoise ops: the kernels of denoise_kernels.cuh on the GPU.
#include <torch/library.h>

#include "common/launch_cuda.cuh"
#include "denoise/denoise_kernels.cuh"

TORCH_LIBRARY_IMPL(burstkern_C, CUDA, m) {
  burstkern::denoise::register_impls<burstkern::denoise::KernelImpls<burstkern::CudaLaunch>>(m);
}
