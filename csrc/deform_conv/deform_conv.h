// Host side of the burstkern_C deform_conv2d ops, shared by every executor: the argument checks and geometry, and
// register_impls. Tensors may have any strides; outputs take memory_format_of(input) (common/alloc.h).
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <string>

#include "common/checks.h"
#include "common/exec.h"
#include "deform_conv/element.cuh"

namespace burstkern {
namespace deform_conv {

using at::Tensor;

template <class Exec>
void check_arg(const Tensor& t, const char* name, const Tensor& input) {
  check_same<Exec>(t, name, input, "input");
  TORCH_CHECK(t.dim() == 4 || std::string(name) == "bias", name, " must be 4-D, got shape ", t.sizes());
}

// Checks the arguments of burstkern_C::deform_conv2d and returns the geometry of the call.
template <class Exec>
Dims check_forward(const Tensor& input, const Tensor& offset, const Tensor& weight, const std::optional<Tensor>& bias,
                   int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                   const std::optional<Tensor>& mask) {
  Exec::check_device(input, "input");
  TORCH_CHECK(input.dim() == 4, "input must be 4-D [N, Cin, H, W], got shape ", input.sizes());
  check_floating<Exec>(input, "input");
  check_arg<Exec>(offset, "offset", input);
  check_arg<Exec>(weight, "weight", input);
  TORCH_CHECK(sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1 && ph >= 0 && pw >= 0,
              "stride and dilation must be >= 1 and padding >= 0, got stride (", sh, ", ", sw, "), padding (", ph,
              ", ", pw, "), dilation (", dh, ", ", dw, ")");
  Dims d{};
  d.N = input.size(0), d.Cin = input.size(1), d.H = input.size(2), d.W = input.size(3);
  d.Cout = weight.size(0), d.cin_g = weight.size(1);
  d.kh = static_cast<int>(weight.size(2)), d.kw = static_cast<int>(weight.size(3)), d.K = d.kh * d.kw;
  TORCH_CHECK(d.cin_g >= 1 && d.Cin % d.cin_g == 0 && d.K >= 1, "weight ", weight.sizes(),
              " does not fit input ", input.sizes(), ": Cin/groups must divide Cin");
  d.groups = d.Cin / d.cin_g;
  TORCH_CHECK(d.Cout % d.groups == 0, "weight's ", d.Cout, " output channels are not divisible by ", d.groups,
              " groups");
  d.cout_g = d.Cout / d.groups;
  TORCH_CHECK(offset.size(1) > 0 && offset.size(1) % (2 * d.K) == 0, "offset must have 2*og*kh*kw channels, got ",
              offset.sizes());
  d.og = offset.size(1) / (2 * d.K);
  TORCH_CHECK(d.Cin % d.og == 0, "input's ", d.Cin, " channels are not divisible by ", d.og, " offset groups");
  d.cpg = d.Cin / d.og;
  d.sh = static_cast<int>(sh), d.sw = static_cast<int>(sw);
  d.ph = static_cast<int>(ph), d.pw = static_cast<int>(pw);
  d.dh = static_cast<int>(dh), d.dw = static_cast<int>(dw);
  d.Ho = (d.H + 2 * ph - (dh * (d.kh - 1) + 1)) / sh + 1;
  d.Wo = (d.W + 2 * pw - (dw * (d.kw - 1) + 1)) / sw + 1;
  TORCH_CHECK(d.Ho >= 1 && d.Wo >= 1, "the output would be empty (", d.Ho, "x", d.Wo, ")");
  TORCH_CHECK(offset.size(0) == d.N && offset.size(2) == d.Ho && offset.size(3) == d.Wo, "offset must have shape [",
              d.N, ", ", 2 * d.og * d.K, ", ", d.Ho, ", ", d.Wo, "], got ", offset.sizes());
  d.M = d.N * d.Ho * d.Wo;
  if (bias.has_value()) {
    check_arg<Exec>(*bias, "bias", input);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == d.Cout, "bias must have shape [", d.Cout, "], got ",
                bias->sizes());
  }
  if (mask.has_value()) {
    check_arg<Exec>(*mask, "mask", input);
    TORCH_CHECK(mask->size(0) == d.N && mask->size(1) == d.og * d.K && mask->size(2) == d.Ho &&
                    mask->size(3) == d.Wo,
                "mask must have shape [", d.N, ", ", d.og * d.K, ", ", d.Ho, ", ", d.Wo, "], got ", mask->sizes());
  }
  return d;
}

// Checks the arguments of burstkern_C::deform_conv2d_backward (grad: the output's shape) and returns the geometry.
template <class Exec>
Dims check_backward(const Tensor& grad, const Tensor& input, const Tensor& offset, const Tensor& weight,
                    const std::optional<Tensor>& bias, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
                    int64_t dw, const std::optional<Tensor>& mask) {
  const Dims d = check_forward<Exec>(input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask);
  check_arg<Exec>(grad, "grad", input);
  TORCH_CHECK(grad.size(0) == d.N && grad.size(1) == d.Cout && grad.size(2) == d.Ho && grad.size(3) == d.Wo,
              "grad must have the output's shape [", d.N, ", ", d.Cout, ", ", d.Ho, ", ", d.Wo, "], got ",
              grad.sizes());
  return d;
}

// The family's ops, X(op, check, kernels) each (common/exec.h): the one list that register_impls, KernelImpls and
// CpuExec expand.
#define BURSTKERN_DEFORM_CONV_OPS(X)                  \
  X(deform_conv2d, check_forward, forward)            \
  X(deform_conv2d_backward, check_backward, backward)
BURSTKERN_DEFINE_REGISTER_IMPLS(BURSTKERN_DEFORM_CONV_OPS)  // Exec: one function per op, of the op's schema signature

}  // namespace deform_conv
}  // namespace burstkern
