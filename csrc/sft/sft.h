// Host side of the burstkern_C sft ops, shared by every executor: the argument checks (one per op, with the op's
// schema signature, returning what the kernels' host code needs) and register_impls.
//
// Layout contract: x and grad are dense contiguous or channels_last [N, C, H, W] (the Python glue brings any other
// x/grad to x's format first); gamma/beta are [N, C, H, W] or per-channel [N, C, 1, 1] views of any strides, or
// without beta the merged [N, 2C, ...] gamma|beta; weight/bias [C]. Outputs take x's format; weight/bias gradients
// are contiguous. act: 0 none, 1 silu, 2 relu, 3 leaky_relu(slope).
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <utility>

#include "common/alloc.h"
#include "common/checks.h"
#include "common/exec.h"

namespace burstkern {
namespace sft {

using at::Tensor;

struct XLayout {
  at::MemoryFormat fmt;
  bool cl;
  int64_t N, C, HW;
};

template <class Exec>
XLayout x_layout(const Tensor& x, const char* name) {
  Exec::check_device(x, name);
  check_floating<Exec>(x, name);
  TORCH_CHECK(x.dim() == 4, name, " must be a 4-D [N, C, H, W] tensor, got shape ", x.sizes());
  XLayout L{};
  if (x.is_contiguous()) {
    L.fmt = at::MemoryFormat::Contiguous;
  } else if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    L.fmt = at::MemoryFormat::ChannelsLast;
    L.cl = true;
  } else {
    TORCH_CHECK(false, name, " must be contiguous or channels_last (the Python glue makes other layouts contiguous), "
                "got shape ", x.sizes(), " with strides ", x.strides());
  }
  L.N = x.size(0);
  L.C = x.size(1);
  L.HW = x.size(2) * x.size(3);
  TORCH_CHECK(L.C > 0 && L.HW > 0, name, " must have at least one channel and one position, got shape ", x.sizes());
  return L;
}

template <class Exec>
void check_like_x(const Tensor& t, const char* name, const Tensor& x, const XLayout& L) {
  check_same<Exec>(t, name, x, "x");
  TORCH_CHECK(t.sizes() == x.sizes(), name, " must have the shape of x ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(L.fmt), name, " must be laid out as x (", L.fmt, "), got strides ", t.strides());
}

// gamma/beta as C-channel views (the merged [N, 2C, ...] gamma split in place), checked.
struct Split {
  Tensor g, b;  // b undefined: no shift
  bool merged, g_sp, b_sp;
};

template <class Exec>
Split split_mod(const Tensor& x, const Tensor& gamma, const std::optional<Tensor>& beta) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto form_ok = [&](const Tensor& t, int64_t chans) {
    return t.dim() == 4 && t.size(0) == N && t.size(1) == chans &&
           ((t.size(2) == H && t.size(3) == W) || (t.size(2) == 1 && t.size(3) == 1));
  };
  check_same<Exec>(gamma, "gamma", x, "x");
  Split s{};
  if (beta.has_value()) {
    check_same<Exec>(*beta, "beta", x, "x");
    TORCH_CHECK(form_ok(*beta, C), "beta must be [N, C, H, W] = [", N, ", ", C, ", ", H, ", ", W,
                "] or [N, C, 1, 1] for x ", x.sizes(), ", got ", beta->sizes());
    TORCH_CHECK(form_ok(gamma, C), "gamma must be [N, C, H, W] = [", N, ", ", C, ", ", H, ", ", W,
                "] or [N, C, 1, 1] for x ", x.sizes(), " (merged 2C channels only without beta), got ", gamma.sizes());
    s.g = gamma;
    s.b = *beta;
  } else if (form_ok(gamma, 2 * C)) {
    s.merged = true;
    s.g = gamma.narrow(1, 0, C);
    s.b = gamma.narrow(1, C, C);
  } else {
    TORCH_CHECK(form_ok(gamma, C), "gamma must be [N, C, H, W] = [", N, ", ", C, ", ", H, ", ", W,
                "], [N, C, 1, 1] or the merged [N, 2C, ...] form for x ", x.sizes(), ", got ", gamma.sizes());
    s.g = gamma;
  }
  const int64_t HW = H * W;
  s.g_sp = HW > 1 && s.g.size(2) * s.g.size(3) > 1;
  s.b_sp = s.b.defined() && HW > 1 && s.b.size(2) * s.b.size(3) > 1;
  return s;
}

template <class Exec>
void check_param(const std::optional<Tensor>& t, const char* name, const Tensor& x) {
  if (!t.has_value()) return;
  check_same<Exec>(*t, name, x, "x");
  TORCH_CHECK(t->dim() == 1 && t->size(0) == x.size(1), name, " must have shape [C] = [", x.size(1), "], got ",
              t->sizes());
}

inline void check_groups(int64_t G, const XLayout& L) {
  TORCH_CHECK(G >= 1 && L.C % G == 0, "num_groups must be a positive divisor of x's ", L.C, " channels, got ", G);
}

// What the checks of an op found: x's layout and gamma/beta as C-channel views.
struct Checked {
  XLayout L;
  Split s;
};

// The gradient buffers of the backward ops (every executor's): dgamma/dbeta in gamma's/beta's own shapes, laid out
// like x (format fmt, C channels), and the C-channel views the kernels write (of a merged gamma: its two halves).
struct GradBufs {
  Tensor dgamma, dbeta, dg, db;
};

inline GradBufs grad_bufs(const Tensor& x, at::MemoryFormat fmt, int64_t C, const Tensor& gamma,
                          const std::optional<Tensor>& beta, bool merged) {
  GradBufs r;
  r.dgamma = new_output(gamma.sizes(), x.options(), fmt);
  r.dbeta = beta.has_value() ? new_output(beta->sizes(), x.options(), fmt) : placeholder(x);
  if (merged) {
    r.dg = r.dgamma.narrow(1, 0, C);
    r.db = r.dgamma.narrow(1, C, C);
  } else {
    r.dg = r.dgamma;
    if (beta.has_value()) r.db = r.dbeta;
  }
  return r;
}

template <class Exec>
Checked check_modulate(const Tensor& x, const Tensor& gamma, const std::optional<Tensor>& beta, int64_t, double) {
  const XLayout L = x_layout<Exec>(x, "x");
  return {L, split_mod<Exec>(x, gamma, beta)};
}

template <class Exec>
Checked check_modulate_backward(const Tensor& grad, const Tensor& x, const Tensor& gamma,
                                const std::optional<Tensor>& beta, int64_t act, double slope) {
  Checked c = check_modulate<Exec>(x, gamma, beta, act, slope);
  check_like_x<Exec>(grad, "grad", x, c.L);
  return c;
}

template <class Exec>
Checked check_group_norm(const Tensor& x, const Tensor& gamma, const std::optional<Tensor>& beta, int64_t G,
                         const std::optional<Tensor>& weight, const std::optional<Tensor>& bias, double, int64_t,
                         double) {
  const XLayout L = x_layout<Exec>(x, "x");
  check_groups(G, L);
  Checked c{L, split_mod<Exec>(x, gamma, beta)};
  check_param<Exec>(weight, "weight", x);
  check_param<Exec>(bias, "bias", x);
  return c;
}

// mean/rstd: the forward's [N, G] statistics, in x's compute dtype (float64 for float64 x, else float32); eps is not
// needed (rstd has it).
template <class Exec>
Checked check_group_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& gamma,
                                  const std::optional<Tensor>& beta, int64_t G, const std::optional<Tensor>& weight,
                                  const std::optional<Tensor>& bias, const Tensor& mean, const Tensor& rstd,
                                  double eps, int64_t act, double slope) {
  Checked c = check_group_norm<Exec>(x, gamma, beta, G, weight, bias, eps, act, slope);
  check_like_x<Exec>(grad, "grad", x, c.L);
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{mean, "mean"}, {rstd, "rstd"}}) {
    Exec::check_device(t, name);
    const auto stat = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    TORCH_CHECK(t.scalar_type() == stat && t.is_contiguous() && t.dim() == 2 && t.size(0) == c.L.N &&
                    t.size(1) == G,
                name, " must be a contiguous ", stat == at::kDouble ? "float64" : "float32", " [N, G] = [", c.L.N,
                ", ", G, "] tensor, got dtype ",
                t.scalar_type(), " shape ", t.sizes(), " strides ", t.strides());
  }
  return c;
}

// The family's ops, X(op, check, kernels) each (common/exec.h): the one list that register_impls, KernelImpls and
// CpuExec expand.
#define BURSTKERN_SFT_OPS(X)                                                 \
  X(sft_modulate, check_modulate, modulate)                                  \
  X(sft_modulate_backward, check_modulate_backward, modulate_backward)       \
  X(sft_group_norm, check_group_norm, group_norm)                            \
  X(sft_group_norm_backward, check_group_norm_backward, group_norm_backward)
BURSTKERN_DEFINE_REGISTER_IMPLS(BURSTKERN_SFT_OPS)  // Exec: one function per op, of the op's schema signature

}  // namespace sft
}  // namespace burstkern
