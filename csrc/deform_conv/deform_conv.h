// Host side of the burstkern_C deform_conv2d ops, written once for both builds: argument checks, geometry,
// output allocation, grad bias, and the dtype-independent argument pack, templated on an executor:
//   CudaExec (deform_conv_fwd_cuda.cu / deform_conv_bwd_cuda.cu): implicit-GEMM kernels on the tensor cores;
//   CpuExec  (deform_conv_cpu.cpp): the same element functions (element.cuh) in plain loops, so sampling,
//            indexing, layouts, groups and the backward formulas are tested without a GPU; or, under
//            burstkern_C::set_simt_emulation, the CUDA kernels themselves on the SIMT emulation (tests).
// Executor interface: Guard(device); check_device(t, name);
//   forward(args, dtype)                      writes args.y;
//   backward_data(args, dtype, deterministic) accumulates grad input into args.gi (fp32, contiguous, zeroed) and
//                                             writes every element of args.goff / args.gmsk;
//   backward_weight(args, dtype) -> fp32 [Cout, Cin/groups, kh, kw] grad weight.
// Tensors go in with any strides (the kernels take 4-D strides); outputs take the layout C.memory_format_of(input)
// picks (channels_last when input is channels_last and not contiguous, else contiguous), the rule of op.py's fakes.
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <optional>
#include <string>
#include <tuple>

#include "common/poison.h"
#include "deform_conv/element.cuh"

namespace burstkern {
namespace deform_conv {

using at::Tensor;

// Everything a kernel needs; pointers are untyped (the executor dispatches on the dtype).
struct Args {
  Dims d;
  const void *x = nullptr, *off = nullptr, *msk = nullptr, *w = nullptr, *b = nullptr, *gout = nullptr;
  Strides4 sx{}, so{}, sm{}, swt{}, sg{};  // input, offset, mask, weight, grad_out
  void* y = nullptr;                       // forward output
  Strides4 sy{};
  float* gi = nullptr;  // backward: fp32 grad-input accumulator, contiguous [N, Cin, H, W], zero-filled
  void *goff = nullptr, *gmsk = nullptr;
  Strides4 sgo{}, sgm{};
};

inline Strides4 strides4(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

inline at::MemoryFormat format_of(const Tensor& x) {
  return (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ? at::MemoryFormat::ChannelsLast
                                                                                 : at::MemoryFormat::Contiguous;
}

template <class Exec>
void check_arg(const Tensor& t, const char* name, const Tensor& input) {
  Exec::check_device(t, name);
  TORCH_CHECK(t.dim() == 4 || std::string(name) == "bias", name, " must be 4-D, got shape ", t.sizes());
  TORCH_CHECK(t.device() == input.device(), name, " is on ", t.device(), " but input is on ", input.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), name, " has dtype ", t.scalar_type(), " but input has ",
              input.scalar_type());
}

template <class Exec>
Args make_args(const Tensor& input, const Tensor& offset, const Tensor& weight, const std::optional<Tensor>& bias,
               int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
               const std::optional<Tensor>& mask) {
  Exec::check_device(input, "input");
  TORCH_CHECK(input.dim() == 4, "input must be 4-D [N, Cin, H, W], got shape ", input.sizes());
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "input must be float32, float16 or bfloat16 (fp32 math), got ", dt);
  check_arg<Exec>(offset, "offset", input);
  check_arg<Exec>(weight, "weight", input);
  TORCH_CHECK(sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1 && ph >= 0 && pw >= 0,
              "stride and dilation must be >= 1 and padding >= 0, got stride (", sh, ", ", sw, "), padding (", ph,
              ", ", pw, "), dilation (", dh, ", ", dw, ")");
  Dims d{};
  d.N = input.size(0);
  d.Cin = input.size(1);
  d.H = input.size(2);
  d.W = input.size(3);
  d.Cout = weight.size(0);
  d.cin_g = weight.size(1);
  d.kh = static_cast<int>(weight.size(2));
  d.kw = static_cast<int>(weight.size(3));
  d.K = d.kh * d.kw;
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
  d.sh = static_cast<int>(sh);
  d.sw = static_cast<int>(sw);
  d.ph = static_cast<int>(ph);
  d.pw = static_cast<int>(pw);
  d.dh = static_cast<int>(dh);
  d.dw = static_cast<int>(dw);
  d.Ho = (d.H + 2 * ph - (dh * (d.kh - 1) + 1)) / sh + 1;
  d.Wo = (d.W + 2 * pw - (dw * (d.kw - 1) + 1)) / sw + 1;
  TORCH_CHECK(d.Ho >= 1 && d.Wo >= 1, "the output would be empty (", d.Ho, "x", d.Wo, ")");
  TORCH_CHECK(offset.size(0) == d.N && offset.size(2) == d.Ho && offset.size(3) == d.Wo, "offset must have shape [",
              d.N, ", ", 2 * d.og * d.K, ", ", d.Ho, ", ", d.Wo, "], got ", offset.sizes());
  d.M = d.N * d.Ho * d.Wo;
  Args a;
  a.d = d;
  a.x = input.const_data_ptr();
  a.sx = strides4(input);
  a.off = offset.const_data_ptr();
  a.so = strides4(offset);
  a.w = weight.const_data_ptr();
  a.swt = strides4(weight);
  if (bias.has_value()) {
    check_arg<Exec>(*bias, "bias", input);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == d.Cout, "bias must have shape [", d.Cout, "], got ",
                bias->sizes());
    a.b = bias->const_data_ptr();
  }
  if (mask.has_value()) {
    check_arg<Exec>(*mask, "mask", input);
    TORCH_CHECK(mask->size(0) == d.N && mask->size(1) == d.og * d.K && mask->size(2) == d.Ho &&
                    mask->size(3) == d.Wo,
                "mask must have shape [", d.N, ", ", d.og * d.K, ", ", d.Ho, ", ", d.Wo, "], got ", mask->sizes());
    a.msk = mask->const_data_ptr();
    a.sm = strides4(*mask);
  }
  return a;
}

// bias is read with stride 1: the glue passes a contiguous one.
template <class Exec>
Tensor forward(const Tensor& input, const Tensor& offset, const Tensor& weight, const std::optional<Tensor>& bias,
               int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
               const std::optional<Tensor>& mask) {
  std::optional<Tensor> b;
  if (bias.has_value()) b = bias->contiguous();
  Args a = make_args<Exec>(input, offset, weight, b, sh, sw, ph, pw, dh, dw, mask);
  typename Exec::Guard guard(input.device());
  Tensor y = poisoned(at::empty({a.d.N, a.d.Cout, a.d.Ho, a.d.Wo}, input.options().memory_format(format_of(input))));
  if (a.d.M == 0) return y;
  a.y = y.mutable_data_ptr();
  a.sy = strides4(y);
  Exec::forward(a, input.scalar_type());
  return y;
}

// (grad_input, grad_offset, grad_weight, grad_bias, grad_mask); grad_bias / grad_mask are empty [0] placeholders
// when bias / mask is None.
template <class Exec>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backward(const Tensor& grad, const Tensor& input,
                                                            const Tensor& offset, const Tensor& weight,
                                                            const std::optional<Tensor>& bias, int64_t sh, int64_t sw,
                                                            int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                                                            const std::optional<Tensor>& mask) {
  Args a = make_args<Exec>(input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask);
  check_arg<Exec>(grad, "grad", input);
  TORCH_CHECK(grad.size(0) == a.d.N && grad.size(1) == a.d.Cout && grad.size(2) == a.d.Ho && grad.size(3) == a.d.Wo,
              "grad must have the output's shape [", a.d.N, ", ", a.d.Cout, ", ", a.d.Ho, ", ", a.d.Wo, "], got ",
              grad.sizes());
  typename Exec::Guard guard(input.device());
  const auto fmt = format_of(input);
  const auto dt = input.scalar_type();
  a.gout = grad.const_data_ptr();
  a.sg = strides4(grad);
  Tensor gi_acc = at::zeros(input.sizes(), input.options().dtype(at::kFloat));
  Tensor goff = poisoned(at::empty(offset.sizes(), offset.options().memory_format(fmt)));
  Tensor gmsk = mask.has_value() ? poisoned(at::empty(mask->sizes(), mask->options().memory_format(fmt)))
                                 : at::empty({0}, input.options());
  Tensor gw;
  if (a.d.M > 0) {
    a.gi = gi_acc.mutable_data_ptr<float>();
    a.goff = goff.mutable_data_ptr();
    a.sgo = strides4(goff);
    if (mask.has_value()) {
      a.gmsk = gmsk.mutable_data_ptr();
      a.sgm = strides4(gmsk);
    }
    Exec::backward_data(a, dt, at::globalContext().deterministicAlgorithms());
    gw = Exec::backward_weight(a, dt).to(weight.scalar_type());
  } else {
    gw = at::zeros(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  }
  Tensor gi = poisoned(at::empty(input.sizes(), input.options().memory_format(fmt)));
  gi.copy_(gi_acc);
  Tensor gb = bias.has_value() ? grad.to(at::kFloat).sum({0, 2, 3}).to(bias->scalar_type())
                               : at::empty({0}, input.options());
  return {gi, goff, gw.contiguous(), gb, gmsk};
}

}  // namespace deform_conv
}  // namespace burstkern
