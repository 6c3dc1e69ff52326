// Host side of the burstkern_C denoise ops, shared by every executor: the argument checks (one per op, with the
// op's schema signature, returning x's flat layout) and register_impls.
//
// Layout contract: every tensor argument of one op has x's shape, dtype, device and memory order, and that order
// is contiguous or channels_last (batch outermost in both), so the kernels walk all of them as flat arrays and
// sample = flat index / elements per sample (the Python glue brings other inputs to x's format first). σ's are
// [] or [N] of any float dtype and stride; the seed is an int64 tensor of one element. Outputs take x's format.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>

#include "common/checks.h"
#include "common/exec.h"

namespace burstkern {
namespace denoise {

using at::Tensor;

struct Flat {
  at::MemoryFormat fmt;
  int64_t total, N, M;
  bool channels_last;
  int64_t C, H, W;
};

inline bool is_float_kind(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// mode: "edm" or "cm" (consistency scalings with sigma_min); true for "cm".
inline bool is_cm(c10::string_view mode) {
  TORCH_CHECK(mode == "edm" || mode == "cm", "mode must be 'edm' or 'cm', got '", std::string(mode), "'");
  return mode == "cm";
}

template <class Exec>
Flat flat_layout(const Tensor& x, const char* name) {
  Exec::check_device(x, name);
  check_floating<Exec>(x, name);
  TORCH_CHECK(x.dim() >= 1, name, " must have a batch dimension ([N, ...]), got shape ", x.sizes());
  Flat L{};
  if (x.is_contiguous()) {
    L.fmt = at::MemoryFormat::Contiguous;
  } else if (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    L.fmt = at::MemoryFormat::ChannelsLast;
    L.channels_last = true;
    L.C = x.size(1);
    L.H = x.size(2);
    L.W = x.size(3);
  } else {
    TORCH_CHECK(false, name, " must be contiguous or channels_last (the Python glue makes other layouts contiguous), "
                "got shape ", x.sizes(), " with strides ", x.strides());
  }
  L.total = x.numel();
  L.N = x.size(0);
  L.M = L.N > 0 ? L.total / L.N : 0;
  return L;
}

template <class Exec>
void check_like(const Tensor& t, const char* name, const Tensor& x, const char* x_name, const Flat& L) {
  check_same<Exec>(t, name, x, x_name);
  TORCH_CHECK(t.sizes() == x.sizes(), name, " must have the shape of ", x_name, " ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(L.fmt), name, " must be laid out as ", x_name, " (", L.fmt, "), got strides ",
              t.strides());
}

// A per-sample scalar tensor: [] or [N], any float dtype.
template <class Exec>
void check_sigma(const Tensor& s, const char* name, const Tensor& x) {
  Exec::check_device(s, name);
  TORCH_CHECK(s.device() == x.device(), name, " is on ", s.device(), " but x is on ", x.device());
  TORCH_CHECK(is_float_kind(s.scalar_type()), name, " must be a floating-point tensor, got ", s.scalar_type());
  TORCH_CHECK(s.dim() == 0 || (s.dim() == 1 && s.size(0) == x.size(0)), name, " must have shape [] or [N] = [",
              x.size(0), "], got ", s.sizes());
}

// ε: the noise tensor (x's shape and layout), else the in-kernel RNG under seed.
template <class Exec>
void check_noise(const std::optional<Tensor>& noise, const std::optional<Tensor>& seed, const Tensor& x,
                 const Flat& L, const char* op) {
  if (noise.has_value()) return check_like<Exec>(*noise, "noise", x, "x", L);
  TORCH_CHECK(seed.has_value(), op, " needs noise or seed (in-kernel noise), got neither");
  Exec::check_device(*seed, "seed");
  TORCH_CHECK(seed->device() == x.device(), "seed is on ", seed->device(), " but x is on ", x.device());
  TORCH_CHECK(seed->scalar_type() == at::kLong && seed->numel() >= 1,
              "seed must be an int64 tensor with one element, got dtype ", seed->scalar_type(), " and shape ",
              seed->sizes());
}

// x's flat layout, after checking x, every tensor of `like` against x, and the per-sample σ's.
using Named = std::pair<const Tensor&, const char*>;

template <class Exec>
Flat check_flat(const Tensor& x, const char* x_name, std::initializer_list<Named> like,
                std::initializer_list<Named> sigmas) {
  const Flat L = flat_layout<Exec>(x, x_name);
  for (const auto& [t, name] : like) check_like<Exec>(t, name, x, x_name, L);
  for (const auto& [t, name] : sigmas) check_sigma<Exec>(t, name, x);
  return L;
}

// ---------------------------------------------------------------------------------------------------------------
// the checks of each op
// ---------------------------------------------------------------------------------------------------------------
template <class Exec>
bool check_scalings(const Tensor& sigma, double, double, c10::string_view mode) {
  Exec::check_device(sigma, "sigma");
  check_floating<Exec>(sigma, "sigma");
  TORCH_CHECK(sigma.is_contiguous(), "sigma must be contiguous, got strides ", sigma.strides());
  return is_cm(mode);
}

template <class Exec>
Flat check_combine(const Tensor& x, const Tensor& F, const Tensor& sigma, double, double, c10::string_view mode,
                   bool) {
  const Flat L = check_flat<Exec>(x, "x", {{F, "F"}}, {{sigma, "sigma"}});
  is_cm(mode);
  return L;
}

// grad_d is used when return_d and it is not an empty placeholder.
inline bool uses_grad_d(const Tensor& grad_d, bool return_d) { return return_d && grad_d.numel() > 0; }

template <class Exec>
Flat check_combine_backward(const Tensor& grad_D, const Tensor& grad_d, const Tensor& x, const Tensor& F,
                            const Tensor& sigma, double sd, double smin, c10::string_view mode, bool return_d,
                            bool) {
  const Flat L = check_combine<Exec>(x, F, sigma, sd, smin, mode, return_d);
  check_like<Exec>(grad_D, "grad_D", x, "x", L);
  if (uses_grad_d(grad_d, return_d)) check_like<Exec>(grad_d, "grad_d", x, "x", L);
  return L;
}

template <class Exec>
Flat check_euler(const Tensor& x, const Tensor& F, const Tensor& sigma, const Tensor& sigma_next, double) {
  return check_flat<Exec>(x, "x", {{F, "F"}}, {{sigma, "sigma"}, {sigma_next, "sigma_next"}});
}

template <class Exec>
Flat check_heun(const Tensor& x_hat, const Tensor& d, const Tensor& x_next, const Tensor& F_next,
                const Tensor& sigma_hat, const Tensor& sigma_next, double) {
  return check_flat<Exec>(x_hat, "x_hat", {{d, "d"}, {x_next, "x_next"}, {F_next, "F_next"}},
                          {{sigma_hat, "sigma_hat"}, {sigma_next, "sigma_next"}});
}

template <class Exec>
Flat check_add_noise(const Tensor& x, const Tensor& sigma, const std::optional<Tensor>& sigma_base, double,
                     const std::optional<Tensor>& noise, const std::optional<Tensor>& seed) {
  const Flat L = check_flat<Exec>(x, "x", {}, {{sigma, "sigma"}});
  if (sigma_base.has_value()) check_sigma<Exec>(*sigma_base, "sigma_base", x);
  check_noise<Exec>(noise, seed, x, L, "add_noise");
  return L;
}

template <class Exec>
Flat check_cm_update(const Tensor& x, const Tensor& F, const Tensor& sigma, double, double,
                     const std::optional<Tensor>& sigma_next, std::optional<double>,
                     const std::optional<Tensor>& noise, const std::optional<Tensor>& seed) {
  const Flat L = check_flat<Exec>(x, "x", {{F, "F"}}, {{sigma, "sigma"}});
  if (sigma_next.has_value()) {
    check_sigma<Exec>(*sigma_next, "sigma_next", x);
    check_noise<Exec>(noise, seed, x, L, "cm_update with sigma_next");
  }
  return L;
}

template <class Exec>
Flat check_cm_update_backward(const Tensor& grad, const Tensor& x, const Tensor& F, const Tensor& sigma, double,
                              double, std::optional<double>) {
  return check_flat<Exec>(x, "x", {{F, "F"}, {grad, "grad"}}, {{sigma, "sigma"}});
}

template <class Exec>
Flat check_edm_loss(const Tensor& x, const Tensor& F, const Tensor& y, const Tensor& sigma, double) {
  return check_flat<Exec>(x, "x_noisy", {{F, "F"}, {y, "y"}}, {{sigma, "sigma"}});
}

// grad: the per-sample loss gradient, [] or [N].
template <class Exec>
Flat check_edm_loss_backward(const Tensor& grad, const Tensor& x, const Tensor& F, const Tensor& y,
                             const Tensor& sigma, double) {
  return check_flat<Exec>(x, "x_noisy", {{F, "F"}, {y, "y"}}, {{grad, "grad"}, {sigma, "sigma"}});
}

// The family's ops, X(op, check, kernels) each (common/exec.h): the one list that register_impls, KernelImpls and
// CpuExec expand.
#define BURSTKERN_DENOISE_OPS(X)                                               \
  X(denoise_scalings, check_scalings, scalings)                                \
  X(denoise_combine, check_combine, combine)                                   \
  X(denoise_combine_backward, check_combine_backward, combine_backward)        \
  X(edm_euler_update, check_euler, euler)                                      \
  X(edm_heun_update, check_heun, heun)                                         \
  X(add_noise, check_add_noise, denoise::add_noise)                            \
  X(cm_update, check_cm_update, denoise::cm_update)                            \
  X(cm_update_backward, check_cm_update_backward, denoise::cm_update_backward) \
  X(edm_loss, check_edm_loss, denoise::edm_loss)                               \
  X(edm_loss_backward, check_edm_loss_backward, denoise::edm_loss_backward)
BURSTKERN_DEFINE_REGISTER_IMPLS(BURSTKERN_DENOISE_OPS)  // Exec: one function per op, of the op's schema signature

}  // namespace denoise
}  // namespace burstkern
