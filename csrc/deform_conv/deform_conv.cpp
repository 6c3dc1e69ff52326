// Schemas of the burstkern_C deform_conv2d ops; they equal the Python burstkern:: ops' (burstkern/ops/deform_conv/,
// tests/test_schemas.py). Kernels: deform_conv_cuda.cu (CUDA tensors) and deform_conv_cpu.cpp (CPU tensors).
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
