// Schemas of the burstkern_C sft ops; they equal the Python burstkern:: ops' (burstkern/ops/sft/,
// tests/test_schemas.py). Kernels: sft_cuda.cu (CUDA tensors) and sft_cpu.cpp (CPU tensors). act: 0 none, 1 silu,
// 2 relu, 3 leaky_relu(slope). Outputs an op does not produce are empty [0] placeholders.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(burstkern_C, m) {
  // act(x·(1 + gamma) + beta); gamma [N, C|2C, H|1, W|1] (2C: merged gamma|beta, beta None).
  m.def("sft_modulate(Tensor x, Tensor gamma, Tensor? beta, int act, float slope) -> Tensor");
  // (grad_x, grad_gamma, grad_beta)
  m.def("sft_modulate_backward(Tensor grad, Tensor x, Tensor gamma, Tensor? beta, int act, float slope) -> "
        "(Tensor, Tensor, Tensor)");
  // (out, mean [N, G] fp32, rstd [N, G] fp32) of act(GroupNorm(x)·(1 + gamma) + beta)
  m.def("sft_group_norm(Tensor x, Tensor gamma, Tensor? beta, int num_groups, Tensor? weight, Tensor? bias, "
        "float eps, int act, float slope) -> (Tensor, Tensor, Tensor)");
  // (grad_x, grad_gamma, grad_beta, grad_weight, grad_bias), from x, mean, rstd (the normalised x is recomputed;
  // eps is the forward's, which rstd already holds)
  m.def("sft_group_norm_backward(Tensor grad, Tensor x, Tensor gamma, Tensor? beta, int num_groups, "
        "Tensor? weight, Tensor? bias, Tensor mean, Tensor rstd, float eps, int act, float slope) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor)");
}
