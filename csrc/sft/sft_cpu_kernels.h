// CPU kernels of the burstkern_C sft ops (one function per op, the C++ signature of its schema; registered for the
// CPU dispatch key by sft_cpu.cpp). Designed for the CPU, not GPU thread order:
//   sft_modulate:            one fused pass;
//   sft_modulate_backward:   one pass (dx, spatial dgamma/dbeta; per-channel ones as per-(n, c) sums);
//   sft_group_norm:          two passes over memory: statistics per (n, group) (shifted sums about a pivot from
//                            the data, double accumulation), then normalise + affine + modulate + act fused;
//   sft_group_norm_backward: two passes: the per-(n, c) sums (and spatial dgamma/dbeta), then dx.
// fp32 / fp16 / bf16 compute in fp32, fp64 in fp64. Any strides: x and grad that are neither contiguous nor
// channels_last are copied contiguous first; gamma/beta are read in place through their strides (a copy only when
// H and W do not merge). Outputs: x's memory_format_of (channels_last iff x is channels_last and not contiguous);
// weight/bias gradients contiguous. Work is split into units fixed by the shapes (rows, groups, pixel chunks), each
// summed in a fixed order, so results are bitwise independent of the thread count.
// Vector path: run-time choice between builds of the same loops (default / AVX2 / AVX-512); cpu_path() names it,
// BURSTKERN_CPU_PATH=default|avx2|avx512 forces one (at first use).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace burstkern {
namespace sft {
namespace cpu {

at::Tensor sft_modulate(const at::Tensor& x, const at::Tensor& gamma, const std::optional<at::Tensor>& beta,
                        int64_t act, double slope);

std::tuple<at::Tensor, at::Tensor, at::Tensor> sft_modulate_backward(const at::Tensor& grad, const at::Tensor& x,
                                                                     const at::Tensor& gamma,
                                                                     const std::optional<at::Tensor>& beta,
                                                                     int64_t act, double slope);

std::tuple<at::Tensor, at::Tensor, at::Tensor> sft_group_norm(const at::Tensor& x, const at::Tensor& gamma,
                                                              const std::optional<at::Tensor>& beta,
                                                              int64_t num_groups,
                                                              const std::optional<at::Tensor>& weight,
                                                              const std::optional<at::Tensor>& bias, double eps,
                                                              int64_t act, double slope);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sft_group_norm_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& gamma, const std::optional<at::Tensor>& beta,
    int64_t num_groups, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& mean, const at::Tensor& rstd, double eps, int64_t act, double slope);

// The vector path the kernels run on this CPU: "avx512", "avx2" or "default".
const char* cpu_path();

}  // namespace cpu
}  // namespace sft
}  // namespace burstkern
