// Schemas of the burstkern_C denoise ops; they equal the Python burstkern:: ops' (burstkern/ops/denoise/,
// tests/test_schemas.py). Kernels: denoise_cuda.cu (CUDA tensors) and denoise_cpu.cpp (CPU tensors). mode: "edm",
// or "cm" (consistency scalings with sigma_min). Outputs that an op does not produce are empty [0] placeholders.
#include <torch/library.h>


TORCH_LIBRARY_FRAGMENT(burstkern_C, m) {
  // (c_skip, c_out, c_in, c_noise) of a contiguous σ, float32.
  m.def("denoise_scalings(Tensor sigma, float sigma_data, float sigma_min, str mode) -> (Tensor, Tensor, Tensor, "
        "Tensor)");
  // (D, d): D = c_skip·x + c_out·F; d = (x − D)/σ when return_d, else a placeholder.
  m.def("denoise_combine(Tensor x, Tensor F, Tensor sigma, float sigma_data, float sigma_min, str mode, "
        "bool return_d) -> (Tensor, Tensor)");
  // (grad_x, grad_F, grad_sigma); grad_d is used when return_d and it is not an empty placeholder; grad_sigma a
  // placeholder unless need_sigma.
  m.def("denoise_combine_backward(Tensor grad_D, Tensor grad_d, Tensor x, Tensor F, Tensor sigma, "
        "float sigma_data, float sigma_min, str mode, bool return_d, bool need_sigma) -> (Tensor, Tensor, Tensor)");
  // (x_next, d) of one Euler step.
  m.def("edm_euler_update(Tensor x, Tensor F, Tensor sigma, Tensor sigma_next, float sigma_data) -> (Tensor, "
        "Tensor)");
  // EDM Algorithm 2's second stage.
  m.def("edm_heun_update(Tensor x_hat, Tensor d, Tensor x_next, Tensor F_next, Tensor sigma_hat, Tensor sigma_next, "
        "float sigma_data) -> Tensor");
  // x + √(max(σ² − σ_base², 0))·s_noise·ε; ε = noise, else tl.randn(seed[0], logical index).
  m.def("add_noise(Tensor x, Tensor sigma, Tensor? sigma_base, float s_noise, Tensor? noise, Tensor? seed) -> "
        "Tensor");
  // clamp(c_skip^cm·x + c_out^cm·F) + √(σ_next² − σ_min²)·ε.
  m.def("cm_update(Tensor x, Tensor F, Tensor sigma, float sigma_min, float sigma_data, Tensor? sigma_next, "
        "float? clamp, Tensor? noise, Tensor? seed) -> Tensor");
  m.def("cm_update_backward(Tensor grad, Tensor x, Tensor F, Tensor sigma, float sigma_min, float sigma_data, "
        "float? clamp) -> (Tensor, Tensor)");
  // [N]: mean over each sample of λ(σ)·(D − y)².
  m.def("edm_loss(Tensor x_noisy, Tensor F, Tensor y, Tensor sigma, float sigma_data) -> Tensor");
  m.def("edm_loss_backward(Tensor grad, Tensor x_noisy, Tensor F, Tensor y, Tensor sigma, float sigma_data) -> "
        "(Tensor, Tensor, Tensor)");
}

