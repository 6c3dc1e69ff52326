// Schemas of the burstkern_C deform_conv2d ops (kernels: deform_conv_fwd_cuda.cu / deform_conv_bwd_cuda.cu for CUDA
// tensors, deform_conv_cpu.cpp for CPU tensors, both from ops.h). The public op is burstkern::deform_conv2d
// (burstkern/ops/deform_conv/op.py); its cuda backend (burstkern/ops/deform_conv/cuda.py) calls these.
#include <torch/library.h>


TORCH_LIBRARY_FRAGMENT(burstkern_C, m) {
  // [N, Cout, Ho, Wo] in input's layout (channels_last when input is channels_last and not contiguous).
  m.def("deform_conv2d(Tensor input, Tensor offset, Tensor weight, Tensor? bias, int stride_h, int stride_w, "
        "int pad_h, int pad_w, int dil_h, int dil_w, Tensor? mask) -> Tensor");
  // (grad_input, grad_offset, grad_weight, grad_bias, grad_mask); [0] placeholders for an absent bias / mask.
  // Deterministic (no float atomics on grad input) when torch.are_deterministic_algorithms_enabled().
  m.def("deform_conv2d_backward(Tensor grad, Tensor input, Tensor offset, Tensor weight, Tensor? bias, "
        "int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, Tensor? mask) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor)");
}

