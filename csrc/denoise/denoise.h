// Host side of the burstkern_C denoise ops, written once for both builds: argument checks, layout, output
// allocation and dtype dispatch, templated on an executor that runs a functor of functors.cuh over the elements:
//   CudaExec (denoise_cuda.cu): CUDAGuard, current stream, grid-stride kernels, launch check after every launch;
//   CpuExec  (denoise_cpu.cpp): the same functors in CPU loops, so the element code is tested without a GPU; or,
//            under burstkern_C::set_simt_emulation, the CUDA kernels themselves on the SIMT emulation (tests).
// Executor interface: Guard(device); check_device(t, name); elementwise(fn, total, M);
// reduce(fn, groups, group_size, M, like) (per-group sums of fn's terms handed to fn.finalize(g, sum)).
//
// Layout contract: every tensor argument of one op has x's shape, dtype, device and memory order, and that order
// is contiguous or channels_last (batch outermost in both), so the ops walk all of them as flat arrays and
// sample = flat index / elements per sample. The Python glue (burstkern/ops/denoise/cuda.py) brings other inputs
// to x's format first; outputs take the format C.memory_format_of(x) picks (contiguous unless x is channels_last
// and not contiguous), the rule of op.py's fake impls.
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <optional>
#include <vector>
#include <tuple>

#include "common/dispatch.h"
#include "common/poison.h"
#include "denoise/functors.cuh"

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

inline int scalar_kind(at::ScalarType t) {
  switch (t) {
    case at::kDouble:
      return kDouble;
    case at::kHalf:
      return kHalf;
    case at::kBFloat16:
      return kBFloat16;
    default:
      return kFloat;
  }
}

template <class Exec>
Flat flat_layout(const Tensor& x, const char* name) {
  Exec::check_device(x, name);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              name, " must be float32, float16 or bfloat16, got ", x.scalar_type());
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
  Exec::check_device(t, name);
  TORCH_CHECK(t.device() == x.device(), name, " is on ", t.device(), " but ", x_name, " is on ", x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, " has dtype ", t.scalar_type(), " but ", x_name, " has ",
              x.scalar_type());
  TORCH_CHECK(t.sizes() == x.sizes(), name, " must have the shape of ", x_name, " ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(L.fmt), name, " must be laid out as ", x_name, " (", L.fmt, "), got strides ",
              t.strides());
}

template <class Exec>
PerSample per_sample(const Tensor& s, const char* name, const Tensor& x) {
  Exec::check_device(s, name);
  TORCH_CHECK(s.device() == x.device(), name, " is on ", s.device(), " but x is on ", x.device());
  TORCH_CHECK(is_float_kind(s.scalar_type()), name, " must be a floating-point tensor, got ", s.scalar_type());
  TORCH_CHECK(s.dim() == 0 || (s.dim() == 1 && s.size(0) == x.size(0)), name, " must have shape [] or [N] = [",
              x.size(0), "], got ", s.sizes());
  return {s.const_data_ptr(), s.dim() == 0 ? 0 : s.stride(0), scalar_kind(s.scalar_type())};
}

template <class Exec>
const int64_t* seed_ptr(const Tensor& seed, const Tensor& x) {
  Exec::check_device(seed, "seed");
  TORCH_CHECK(seed.device() == x.device(), "seed is on ", seed.device(), " but x is on ", x.device());
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() >= 1,
              "seed must be an int64 tensor with one element, got dtype ", seed.scalar_type(), " and shape ",
              seed.sizes());
  return seed.const_data_ptr<int64_t>();
}


inline Tensor new_like(const Tensor& x, const Flat& L) {
  return poisoned(at::empty(x.sizes(), x.options().memory_format(L.fmt)));
}

inline Tensor placeholder(const Tensor& x) { return at::empty({0}, x.options()); }

template <typename scalar_t, class Exec>
NoiseSource<scalar_t> noise_source(const std::optional<Tensor>& noise, const std::optional<Tensor>& seed,
                                   const Tensor& x, const Flat& L, const char* op) {
  NoiseSource<scalar_t> src{nullptr, nullptr, L.channels_last, L.C, L.H, L.W, L.M};
  if (noise.has_value()) {
    check_like<Exec>(*noise, "noise", x, "x", L);
    src.noise = noise->const_data_ptr<scalar_t>();
  } else {
    TORCH_CHECK(seed.has_value(), op, " needs noise or seed (in-kernel noise), got neither");
    src.seed = seed_ptr<Exec>(*seed, x);
  }
  return src;
}

// ---------------------------------------------------------------------------------------------------------------
// ops
// ---------------------------------------------------------------------------------------------------------------
template <class Exec>
std::tuple<Tensor, Tensor, Tensor, Tensor> scalings(const Tensor& sigma, double sd, double smin, bool cm) {
  Exec::check_device(sigma, "sigma");
  TORCH_CHECK(is_float_kind(sigma.scalar_type()), "sigma must be a floating-point tensor, got ",
              sigma.scalar_type());
  TORCH_CHECK(sigma.is_contiguous(), "sigma must be contiguous, got strides ", sigma.strides());
  typename Exec::Guard guard(sigma.device());
  auto make = [&] { return poisoned(at::empty(sigma.sizes(), sigma.options().dtype(at::kFloat))); };
  Tensor skip = make(), out = make(), in = make(), noise = make();
  if (sigma.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sigma.scalar_type(), "denoise_scalings", [&] {
      ScalingsFn<scalar_t> fn{sigma.const_data_ptr<scalar_t>(), skip.mutable_data_ptr<float>(),
                              out.mutable_data_ptr<float>(),     in.mutable_data_ptr<float>(),
                              noise.mutable_data_ptr<float>(),   static_cast<float>(sd),
                              static_cast<float>(smin),          cm};
      Exec::elementwise(fn, sigma.numel(), 1);
    });
  }
  return {skip, out, in, noise};
}

template <class Exec>
std::tuple<Tensor, Tensor> combine(const Tensor& x, const Tensor& F, const Tensor& sigma, double sd, double smin,
                                   bool cm, bool return_d) {
  const Flat L = flat_layout<Exec>(x, "x");
  check_like<Exec>(F, "F", x, "x", L);
  const PerSample s = per_sample<Exec>(sigma, "sigma", x);
  typename Exec::Guard guard(x.device());
  Tensor D = new_like(x, L);
  Tensor d = return_d ? new_like(x, L) : placeholder(x);
  if (L.total > 0) {
    BURSTKERN_DISPATCH_FLOATING(x.scalar_type(), "denoise_combine", [&] {
      CombineFn<scalar_t> fn{x.const_data_ptr<scalar_t>(),
                             F.const_data_ptr<scalar_t>(),
                             s,
                             D.mutable_data_ptr<scalar_t>(),
                             return_d ? d.mutable_data_ptr<scalar_t>() : nullptr,
                             static_cast<float>(sd),
                             static_cast<float>(smin),
                             cm};
      Exec::elementwise(fn, L.total, L.M);
    });
  }
  return {D, d};
}

template <class Exec>
std::tuple<Tensor, Tensor, Tensor> combine_backward(const Tensor& grad_D, const std::optional<Tensor>& grad_d,
                                                    const Tensor& x, const Tensor& F, const Tensor& sigma, double sd,
                                                    double smin, bool cm, bool need_sigma) {
  const Flat L = flat_layout<Exec>(x, "x");
  check_like<Exec>(F, "F", x, "x", L);
  check_like<Exec>(grad_D, "grad_D", x, "x", L);
  if (grad_d.has_value()) check_like<Exec>(*grad_d, "grad_d", x, "x", L);
  const PerSample s = per_sample<Exec>(sigma, "sigma", x);
  typename Exec::Guard guard(x.device());
  Tensor gx = new_like(x, L), gF = new_like(x, L);
  const auto contiguous = at::MemoryFormat::Contiguous;
  Tensor gs = need_sigma ? poisoned(at::empty(sigma.sizes(), sigma.options().memory_format(contiguous)))
                         : placeholder(x);
  BURSTKERN_DISPATCH_FLOATING(x.scalar_type(), "denoise_combine_backward", [&] {
    CombineBackwardFn<scalar_t> fn{grad_D.const_data_ptr<scalar_t>(),
                                   grad_d.has_value() ? grad_d->const_data_ptr<scalar_t>() : nullptr,
                                   x.const_data_ptr<scalar_t>(),
                                   F.const_data_ptr<scalar_t>(),
                                   s,
                                   gx.mutable_data_ptr<scalar_t>(),
                                   gF.mutable_data_ptr<scalar_t>(),
                                   {need_sigma ? gs.mutable_data_ptr() : nullptr, scalar_kind(sigma.scalar_type())},
                                   static_cast<float>(sd),
                                   static_cast<float>(smin),
                                   cm,
                                   need_sigma};
    if (need_sigma) {
      // σ's gradient sums per sample for a per-sample σ, over everything for a scalar σ
      const int64_t groups = sigma.dim() == 1 ? L.N : 1;
      if (groups > 0) Exec::reduce(fn, groups, L.total / groups, L.M, x);
    } else if (L.total > 0) {
      Exec::elementwise(fn, L.total, L.M);
    }
  });
  return {gx, gF, gs};
}

template <class Exec>
std::tuple<Tensor, Tensor> euler(const Tensor& x, const Tensor& F, const Tensor& sigma, const Tensor& sigma_next,
                                 double sd) {
  const Flat L = flat_layout<Exec>(x, "x");
  check_like<Exec>(F, "F", x, "x", L);
  const PerSample s = per_sample<Exec>(sigma, "sigma", x);
  const PerSample sn = per_sample<Exec>(sigma_next, "sigma_next", x);
  typename Exec::Guard guard(x.device());
  Tensor xn = new_like(x, L), d = new_like(x, L);
  if (L.total > 0) {
    BURSTKERN_DISPATCH_FLOATING(x.scalar_type(), "edm_euler_update", [&] {
      EulerFn<scalar_t> fn{x.const_data_ptr<scalar_t>(), F.const_data_ptr<scalar_t>(), s, sn,
                           xn.mutable_data_ptr<scalar_t>(), d.mutable_data_ptr<scalar_t>(), static_cast<float>(sd)};
      Exec::elementwise(fn, L.total, L.M);
    });
  }
  return {xn, d};
}

template <class Exec>
Tensor heun(const Tensor& x_hat, const Tensor& d, const Tensor& x_next, const Tensor& F_next, const Tensor& sigma_hat,
            const Tensor& sigma_next, double sd) {
  const Flat L = flat_layout<Exec>(x_hat, "x_hat");
  check_like<Exec>(d, "d", x_hat, "x_hat", L);
  check_like<Exec>(x_next, "x_next", x_hat, "x_hat", L);
  check_like<Exec>(F_next, "F_next", x_hat, "x_hat", L);
  const PerSample sh = per_sample<Exec>(sigma_hat, "sigma_hat", x_hat);
  const PerSample sn = per_sample<Exec>(sigma_next, "sigma_next", x_hat);
  typename Exec::Guard guard(x_hat.device());
  Tensor out = new_like(x_hat, L);
  if (L.total > 0) {
    BURSTKERN_DISPATCH_FLOATING(x_hat.scalar_type(), "edm_heun_update", [&] {
      HeunFn<scalar_t> fn{x_hat.const_data_ptr<scalar_t>(),  d.const_data_ptr<scalar_t>(),
                          x_next.const_data_ptr<scalar_t>(), F_next.const_data_ptr<scalar_t>(),
                          sh,                                sn,
                          out.mutable_data_ptr<scalar_t>(),  static_cast<float>(sd)};
      Exec::elementwise(fn, L.total, L.M);
    });
  }
  return out;
}

template <class Exec>
Tensor add_noise(const Tensor& x, const Tensor& sigma, const std::optional<Tensor>& sigma_base, double s_noise,
                 const std::optional<Tensor>& noise, const std::optional<Tensor>& seed) {
  const Flat L = flat_layout<Exec>(x, "x");
  const PerSample s = per_sample<Exec>(sigma, "sigma", x);
  const PerSample sb = sigma_base.has_value() ? per_sample<Exec>(*sigma_base, "sigma_base", x) : s;
  typename Exec::Guard guard(x.device());
  Tensor out = new_like(x, L);
  BURSTKERN_DISPATCH_FLOATING(x.scalar_type(), "add_noise", [&] {
    const NoiseSource<scalar_t> eps = noise_source<scalar_t, Exec>(noise, seed, x, L, "add_noise");
    AddNoiseFn<scalar_t> fn{x.const_data_ptr<scalar_t>(), s, sb, sigma_base.has_value(), eps,
                            out.mutable_data_ptr<scalar_t>(), static_cast<float>(s_noise)};
    if (L.total > 0) Exec::elementwise(fn, L.total, L.M);
  });
  return out;
}

template <class Exec>
Tensor cm_update(const Tensor& x, const Tensor& F, const Tensor& sigma, double smin, double sd,
                 const std::optional<Tensor>& sigma_next, std::optional<double> clamp,
                 const std::optional<Tensor>& noise, const std::optional<Tensor>& seed) {
  const Flat L = flat_layout<Exec>(x, "x");
  check_like<Exec>(F, "F", x, "x", L);
  const PerSample s = per_sample<Exec>(sigma, "sigma", x);
  const PerSample sn = sigma_next.has_value() ? per_sample<Exec>(*sigma_next, "sigma_next", x) : s;
  typename Exec::Guard guard(x.device());
  Tensor out = new_like(x, L);
  BURSTKERN_DISPATCH_FLOATING(x.scalar_type(), "cm_update", [&] {
    NoiseSource<scalar_t> eps{};
    if (sigma_next.has_value()) eps = noise_source<scalar_t, Exec>(noise, seed, x, L, "cm_update with sigma_next");
    CmUpdateFn<scalar_t> fn{x.const_data_ptr<scalar_t>(),
                            F.const_data_ptr<scalar_t>(),
                            s,
                            sn,
                            sigma_next.has_value(),
                            clamp.has_value(),
                            eps,
                            out.mutable_data_ptr<scalar_t>(),
                            static_cast<float>(smin),
                            static_cast<float>(sd),
                            static_cast<float>(clamp.value_or(0.0))};
    if (L.total > 0) Exec::elementwise(fn, L.total, L.M);
  });
  return out;
}

template <class Exec>
std::tuple<Tensor, Tensor> cm_update_backward(const Tensor& grad, const Tensor& x, const Tensor& F,
                                              const Tensor& sigma, double smin, double sd,
                                              std::optional<double> clamp) {
  const Flat L = flat_layout<Exec>(x, "x");
  check_like<Exec>(F, "F", x, "x", L);
  check_like<Exec>(grad, "grad", x, "x", L);
  const PerSample s = per_sample<Exec>(sigma, "sigma", x);
  typename Exec::Guard guard(x.device());
  Tensor gx = new_like(x, L), gF = new_like(x, L);
  if (L.total > 0) {
    BURSTKERN_DISPATCH_FLOATING(x.scalar_type(), "cm_update_backward", [&] {
      CmUpdateBackwardFn<scalar_t> fn{grad.const_data_ptr<scalar_t>(),
                                      x.const_data_ptr<scalar_t>(),
                                      F.const_data_ptr<scalar_t>(),
                                      s,
                                      gx.mutable_data_ptr<scalar_t>(),
                                      gF.mutable_data_ptr<scalar_t>(),
                                      static_cast<float>(smin),
                                      static_cast<float>(sd),
                                      static_cast<float>(clamp.value_or(0.0)),
                                      clamp.has_value()};
      Exec::elementwise(fn, L.total, L.M);
    });
  }
  return {gx, gF};
}

template <class Exec>
Tensor edm_loss(const Tensor& x, const Tensor& F, const Tensor& y, const Tensor& sigma, double sd) {
  const Flat L = flat_layout<Exec>(x, "x_noisy");
  check_like<Exec>(F, "F", x, "x_noisy", L);
  check_like<Exec>(y, "y", x, "x_noisy", L);
  const PerSample s = per_sample<Exec>(sigma, "sigma", x);
  typename Exec::Guard guard(x.device());
  Tensor loss = poisoned(at::empty({L.N}, x.options().memory_format(at::MemoryFormat::Contiguous)));
  if (L.N > 0) {
    BURSTKERN_DISPATCH_FLOATING(x.scalar_type(), "edm_loss", [&] {
      EdmLossFn<scalar_t> fn{x.const_data_ptr<scalar_t>(), F.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
                             s, loss.mutable_data_ptr<scalar_t>(), static_cast<float>(sd), L.M};
      Exec::reduce(fn, L.N, L.M, L.M, x);
    });
  }
  return loss;
}

template <class Exec>
std::tuple<Tensor, Tensor, Tensor> edm_loss_backward(const Tensor& grad, const Tensor& x, const Tensor& F,
                                                     const Tensor& y, const Tensor& sigma, double sd) {
  const Flat L = flat_layout<Exec>(x, "x_noisy");
  check_like<Exec>(F, "F", x, "x_noisy", L);
  check_like<Exec>(y, "y", x, "x_noisy", L);
  const PerSample g = per_sample<Exec>(grad, "grad", x);
  const PerSample s = per_sample<Exec>(sigma, "sigma", x);
  typename Exec::Guard guard(x.device());
  Tensor gx = new_like(x, L), gF = new_like(x, L), gy = new_like(x, L);
  if (L.total > 0) {
    BURSTKERN_DISPATCH_FLOATING(x.scalar_type(), "edm_loss_backward", [&] {
      EdmLossBackwardFn<scalar_t> fn{g,
                                     x.const_data_ptr<scalar_t>(),
                                     F.const_data_ptr<scalar_t>(),
                                     y.const_data_ptr<scalar_t>(),
                                     s,
                                     gx.mutable_data_ptr<scalar_t>(),
                                     gF.mutable_data_ptr<scalar_t>(),
                                     gy.mutable_data_ptr<scalar_t>(),
                                     static_cast<float>(sd),
                                     L.M};
      Exec::elementwise(fn, L.total, L.M);
    });
  }
  return {gx, gF, gy};
}

// The RNG at explicit int64 offsets: (normals float32 shaped like offsets, Philox words int64 [..., 4]).
template <class Exec>
std::tuple<Tensor, Tensor> randn(const Tensor& seed, const Tensor& offsets) {
  Exec::check_device(offsets, "offsets");
  TORCH_CHECK(offsets.scalar_type() == at::kLong, "offsets must be int64, got ", offsets.scalar_type());
  const int64_t* sp = seed_ptr<Exec>(seed, offsets);
  typename Exec::Guard guard(offsets.device());
  const Tensor offs = offsets.contiguous();
  Tensor normal = poisoned(at::empty(offs.sizes(), offs.options().dtype(at::kFloat)));
  std::vector<int64_t> wshape(offs.sizes().begin(), offs.sizes().end());
  wshape.push_back(4);
  Tensor words = at::empty(wshape, offs.options());
  if (offs.numel() > 0) {
    RandnFn fn{sp, offs.const_data_ptr<int64_t>(), normal.mutable_data_ptr<float>(), words.mutable_data_ptr<int64_t>()};
    Exec::elementwise(fn, offs.numel(), 1);
  }
  return {normal, words};
}

}  // namespace denoise
}  // namespace burstkern
