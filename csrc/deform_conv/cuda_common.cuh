// The CUDA executor of deform_conv2d's host code (ops.h): its launch functions are defined in
// deform_conv_fwd_cuda.cu / deform_conv_bwd_cuda.cu, on the kernels of fwd_kernel.cuh / bwd_kernels.cuh.
#pragma once

#include <ATen/ATen.h>

#include "common/exec_cuda.cuh"
#include "deform_conv/ops.h"

namespace burstkern {
namespace deform_conv {

struct CudaExec : CudaExecBase {
  static void forward(const Args& a, at::ScalarType dt);                             // deform_conv_fwd_cuda.cu
  static void backward_data(const Args& a, at::ScalarType dt, bool deterministic);  // deform_conv_bwd_cuda.cu
  static Tensor backward_weight(const Args& a, at::ScalarType dt);                   // deform_conv_bwd_cuda.cu
};

}  // namespace deform_conv
}  // namespace burstkern
