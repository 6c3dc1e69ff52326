// CPU kernels of the burstkern_C denoise ops (one function per op, the C++ signature of its schema; registered for
// the CPU dispatch key by denoise_cpu.cpp). Each op is one vectorised pass over the elements, per-sample
// coefficients computed once per sample (double), fp32 math for fp32/fp16/bf16 storage and fp64 for fp64.
// In-kernel noise (add_noise, cm_update with a seed) is the Philox stream of the GPU kernels: counter = the
// element's logical row-major index, key = seed[0] (burstkern/ops/denoise/rng.py), so one seed gives the same noise
// on CPU and GPU. Any strides: inputs are brought to x's memory_format_of first (contiguous, or channels_last when
// x is channels_last and not contiguous), outputs are laid out so. Reductions (edm_loss, the σ gradient of
// denoise_combine) sum fixed chunks in a fixed order: bitwise independent of the thread count.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace burstkern {
namespace denoise {
namespace cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> denoise_scalings(const at::Tensor& sigma,
                                                                            double sigma_data, double sigma_min,
                                                                            c10::string_view mode);

std::tuple<at::Tensor, at::Tensor> denoise_combine(const at::Tensor& x, const at::Tensor& F, const at::Tensor& sigma,
                                                   double sigma_data, double sigma_min, c10::string_view mode,
                                                   bool return_d);

std::tuple<at::Tensor, at::Tensor, at::Tensor> denoise_combine_backward(
    const at::Tensor& grad_D, const at::Tensor& grad_d, const at::Tensor& x, const at::Tensor& F,
    const at::Tensor& sigma, double sigma_data, double sigma_min, c10::string_view mode, bool return_d,
    bool need_sigma);

std::tuple<at::Tensor, at::Tensor> edm_euler_update(const at::Tensor& x, const at::Tensor& F, const at::Tensor& sigma,
                                                    const at::Tensor& sigma_next, double sigma_data);

at::Tensor edm_heun_update(const at::Tensor& x_hat, const at::Tensor& d, const at::Tensor& x_next,
                           const at::Tensor& F_next, const at::Tensor& sigma_hat, const at::Tensor& sigma_next,
                           double sigma_data);

at::Tensor add_noise(const at::Tensor& x, const at::Tensor& sigma, const std::optional<at::Tensor>& sigma_base,
                     double s_noise, const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& seed);

at::Tensor cm_update(const at::Tensor& x, const at::Tensor& F, const at::Tensor& sigma, double sigma_min,
                     double sigma_data, const std::optional<at::Tensor>& sigma_next, std::optional<double> clamp,
                     const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& seed);

std::tuple<at::Tensor, at::Tensor> cm_update_backward(const at::Tensor& grad, const at::Tensor& x,
                                                      const at::Tensor& F, const at::Tensor& sigma, double sigma_min,
                                                      double sigma_data, std::optional<double> clamp);

at::Tensor edm_loss(const at::Tensor& x_noisy, const at::Tensor& F, const at::Tensor& y, const at::Tensor& sigma,
                    double sigma_data);

std::tuple<at::Tensor, at::Tensor, at::Tensor> edm_loss_backward(const at::Tensor& grad, const at::Tensor& x_noisy,
                                                                 const at::Tensor& F, const at::Tensor& y,
                                                                 const at::Tensor& sigma, double sigma_data);

// The in-kernel draw itself (tests pin it to rng.py): float32 normals of Philox(seed[0], offsets), shaped like the
// int64 offsets. Not an op of its own (the denoise_randn test op may call it).
at::Tensor randn_at(const at::Tensor& seed, const at::Tensor& offsets);

// The vector path the kernels run on this CPU: "avx512", "avx2" or "default".
const char* cpu_path();

}  // namespace cpu
}  // namespace denoise
}  // namespace burstkern
