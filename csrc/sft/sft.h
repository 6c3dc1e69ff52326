// Host side of the burstkern_C sft ops, written once for both builds: argument checks, layout, output allocation,
// tiling and dtype/vector-width dispatch, templated on an executor:
//   CudaExec (sft_cuda.cu): CUDAGuard, current stream, one kernel per pass, launch check after every launch;
//   CpuExec  (sft_cpu.cpp): the same functors in CPU loops that walk the elements the way the GPU blocks do; or,
//            under burstkern_C::set_simt_emulation, the CUDA kernels themselves on the SIMT emulation (tests).
// Executor interface: Guard(device); check_device(t, name); tile<V>(fn, tiling, partials) (the tile walk of
// element.cuh over tiling.blocks blocks, the layout as a template parameter; partials [K][N][C][nchunk] written
// when F::kReduce and partials != nullptr); each(fn, count) (fn(i) for i in [0, count)).
// Passes: sft_modulate: tile(ModFwd); backward: tile(ModBwd) [+ each(ModBwdFinalize) for per-channel
// gamma/beta]; sft_group_norm: tile(GnStats), each(GnStatsFinalize), tile(GnFwd); backward: tile(GnBwd),
// each(GnBwdFinalize), tile(GnBwdDx).
//
// Layout contract: x and grad are dense contiguous or channels_last [N, C, H, W] (the Python glue,
// burstkern/ops/sft/cuda.py, brings any other x/grad to x's format first); gamma/beta are any views whose H and W
// merge into one index (contiguous, channels_last, channel slices such as the halves of a merged [N, 2C, ...]
// tensor, per-channel [N, C, 1, 1] of any strides): they are read in place through their strides. Outputs take
// x's format (op.py's fake impls: C.memory_format_of(x)); weight/bias gradients are contiguous.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>

#include "common/poison.h"
#include "sft/functors.cuh"

namespace burstkern {
namespace sft {

using at::Tensor;

// Test switch (defined in sft.cpp): the elements per block of the tile walk (tests shrink it so small inputs reach
// the multi-chunk paths). Output poisoning: common/poison.h.
int64_t tile_elements();

inline Tensor placeholder(const Tensor& x) { return at::empty({0}, x.options()); }

struct XLayout {
  at::MemoryFormat fmt;
  bool cl;
  int64_t N, C, HW;
};

template <class Exec>
XLayout x_layout(const Tensor& x, const char* name) {
  Exec::check_device(x, name);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              name, " must be float32, float16 or bfloat16, got ", x.scalar_type());
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
void check_same(const Tensor& t, const char* name, const Tensor& x) {
  Exec::check_device(t, name);
  TORCH_CHECK(t.device() == x.device(), name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, " has dtype ", t.scalar_type(), " but x has ",
              x.scalar_type());
}

template <class Exec>
void check_like_x(const Tensor& t, const char* name, const Tensor& x, const XLayout& L) {
  check_same<Exec>(t, name, x);
  TORCH_CHECK(t.sizes() == x.sizes(), name, " must have the shape of x ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(L.fmt), name, " must be laid out as x (", L.fmt, "), got strides ", t.strides());
}

// (sN, sC, sHW) of a [N, C, H, W] view whose H and W merge into one index; sHW = 0 for a per-channel tensor.
inline Strided strided_of(const Tensor& t, const char* name, int V, bool cl) {
  Strided s{t.stride(0), t.stride(1), 0, false};
  const int64_t h = t.size(2), w = t.size(3);
  if (h * w == 1) {
    s.sHW = 0;
  } else if (w == 1) {
    s.sHW = t.stride(2);
  } else {
    TORCH_CHECK(h == 1 || t.stride(2) == w * t.stride(3), name, " must have H and W mergeable into one index "
                "(contiguous, channels_last or channel-sliced; the Python glue copies other views), got shape ",
                t.sizes(), " with strides ", t.strides());
    s.sHW = t.stride(3);
  }
  // one 16-byte vector per V lanes: lanes along HW (NCHW) or C (channels_last) with stride 1, aligned base, outer
  // strides multiples of V so every vector the walk reaches is aligned
  const int64_t lane = cl ? s.sC : s.sHW, outer = cl ? s.sHW : s.sC;
  const auto addr = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  s.vec = V > 1 && lane == 1 && addr % 16 == 0 && s.sN % V == 0 && outer % V == 0;
  return s;
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
  check_same<Exec>(gamma, "gamma", x);
  Split s{};
  if (beta.has_value()) {
    check_same<Exec>(*beta, "beta", x);
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

template <typename scalar_t>
ModIn<scalar_t> mod_in(const Split& s, int V, bool cl) {
  ModIn<scalar_t> m{};
  m.g = s.g.const_data_ptr<scalar_t>();
  m.gs = strided_of(s.g, "gamma", V, cl);
  m.g_sp = s.g_sp;
  if (s.b.defined()) {
    m.b = s.b.const_data_ptr<scalar_t>();
    m.bs = strided_of(s.b, "beta", V, cl);
    m.b_sp = s.b_sp;
  }
  return m;
}

inline int64_t next_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// NCHW: blocks of (n, c, chunk of ~E positions); channels_last: (n, channel tile, chunk of pixels), the tile's
// channels as power-of-two vector columns and the rest of the 256 threads as pixel rows.
inline Tiling make_tiling(const XLayout& L, int V) {
  const int64_t E = std::max<int64_t>(1, tile_elements());
  Tiling T{};
  T.N = L.N;
  T.C = L.C;
  T.HW = L.HW;
  T.cl = L.cl;
  if (!L.cl) {
    T.chunk = (std::min(E, L.HW) + V - 1) / V * V;
    T.cols = 1;
    T.nctile = 1;
    T.nchunk = (L.HW + T.chunk - 1) / T.chunk;
    T.blocks = L.N * L.C * T.nchunk;
  } else {
    const int64_t vc = (L.C + V - 1) / V;
    T.cols = std::min<int64_t>(next_pow2(vc), kThreads);
    T.nctile = (vc + T.cols - 1) / T.cols;
    const int64_t rows = kThreads / T.cols;
    T.chunk = std::min(L.HW, std::max(rows, E / (T.cols * V) / rows * rows));
    T.nchunk = (L.HW + T.chunk - 1) / T.chunk;
    T.blocks = L.N * T.nctile * T.nchunk;
  }
  TORCH_CHECK(T.blocks <= std::numeric_limits<int32_t>::max(), "sft: x of shape [", L.N, ", ", L.C, ", ", L.HW,
              " positions] needs more than 2^31 blocks");
  return T;
}

// 16 bytes per vector when the inner axis (HW for NCHW, C for channels_last) splits into whole vectors and every
// dense tensor starts 16-byte aligned; otherwise one element per lane.
inline int vec_width(const XLayout& L, int64_t elem, std::initializer_list<const Tensor*> dense) {
  const int V = static_cast<int>(16 / elem);
  if ((L.cl ? L.C : L.HW) % V != 0) return 1;
  for (const Tensor* t : dense) {
    if (reinterpret_cast<uintptr_t>(t->const_data_ptr()) % 16 != 0) return 1;
  }
  return V;
}

// Calls body.template operator()<scalar_t, V>() for x's dtype (float, half, bfloat16: x_layout rejects the rest)
// and the chosen vector width (1 or 16 bytes).
template <typename scalar_t, class Body>
void with_width(int V, Body& body) {
  constexpr int kVec = static_cast<int>(16 / sizeof(scalar_t));
  if (V > 1) {
    body.template operator()<scalar_t, kVec>();
  } else {
    body.template operator()<scalar_t, 1>();
  }
}

template <class Body>
void dispatch(const Tensor& x, int V, Body&& body) {
  switch (x.scalar_type()) {
    case at::kHalf:
      with_width<c10::Half>(V, body);
      break;
    case at::kBFloat16:
      with_width<c10::BFloat16>(V, body);
      break;
    default:
      with_width<float>(V, body);
  }
}

template <class Exec>
std::optional<Tensor> check_param(const std::optional<Tensor>& t, const char* name, const Tensor& x) {
  if (!t.has_value()) return t;
  check_same<Exec>(*t, name, x);
  TORCH_CHECK(t->dim() == 1 && t->size(0) == x.size(1), name, " must have shape [C] = [", x.size(1), "], got ",
              t->sizes());
  return t;
}

template <class Exec>
void check_groups(int64_t G, const XLayout& L) {
  TORCH_CHECK(G >= 1 && L.C % G == 0, "num_groups must be a positive divisor of x's ", L.C, " channels, got ", G);
}

inline Tensor float_ws(int64_t n, const Tensor& like) { return at::empty({n}, like.options().dtype(at::kFloat)); }

// ---------------------------------------------------------------------------------------------------------------
// sft_modulate
// ---------------------------------------------------------------------------------------------------------------
template <class Exec>
Tensor modulate(const Tensor& x, const Tensor& gamma, const std::optional<Tensor>& beta, int64_t act, double slope) {
  const XLayout L = x_layout<Exec>(x, "x");
  const Split s = split_mod<Exec>(x, gamma, beta);
  typename Exec::Guard guard(x.device());
  Tensor out = poisoned(at::empty(x.sizes(), x.options().memory_format(L.fmt)));
  if (L.N == 0) return out;
  const int V = vec_width(L, x.element_size(), {&x, &out});
  const Tiling T = make_tiling(L, V);
  dispatch(x, V, [&]<typename scalar_t, int kV>() {
    ModFwdFn<scalar_t, kV> fn{x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                              mod_in<scalar_t>(s, kV, L.cl), static_cast<int>(act), static_cast<float>(slope)};
    Exec::template tile<kV>(fn, T, nullptr);
  });
  return out;
}

// Gradient buffers of gamma/beta in their own shapes, laid out like x, and the C-channel views the kernels write.
struct GradBufs {
  Tensor dgamma, dbeta, dg, db;
};

inline GradBufs grad_bufs(const Tensor& x, const XLayout& L, const Tensor& gamma, const std::optional<Tensor>& beta,
                          const Split& s) {
  GradBufs r;
  r.dgamma = poisoned(at::empty(gamma.sizes(), x.options().memory_format(L.fmt)));
  r.dbeta = beta.has_value() ? poisoned(at::empty(beta->sizes(), x.options().memory_format(L.fmt))) : placeholder(x);
  if (s.merged) {
    r.dg = r.dgamma.narrow(1, 0, L.C);
    r.db = r.dgamma.narrow(1, L.C, L.C);
  } else {
    r.dg = r.dgamma;
    if (beta.has_value()) r.db = r.dbeta;
  }
  return r;
}

template <class Exec>
std::tuple<Tensor, Tensor, Tensor> modulate_backward(const Tensor& grad, const Tensor& x, const Tensor& gamma,
                                                     const std::optional<Tensor>& beta, int64_t act, double slope) {
  const XLayout L = x_layout<Exec>(x, "x");
  check_like_x<Exec>(grad, "grad", x, L);
  const Split s = split_mod<Exec>(x, gamma, beta);
  typename Exec::Guard guard(x.device());
  Tensor dx = poisoned(at::empty(x.sizes(), x.options().memory_format(L.fmt)));
  GradBufs gb = grad_bufs(x, L, gamma, beta, s);
  if (L.N == 0) return {dx, gb.dgamma, gb.dbeta};
  const int V = vec_width(L, x.element_size(), {&x, &grad, &dx});
  const Tiling T = make_tiling(L, V);
  const bool g_chan = !s.g_sp, b_chan = s.b.defined() && !s.b_sp;
  Tensor part = (g_chan || b_chan) ? float_ws(2 * L.N * L.C * T.nchunk, x) : Tensor();
  dispatch(x, V, [&]<typename scalar_t, int kV>() {
    ModBwdFn<scalar_t, kV> fn{};
    fn.dy = grad.const_data_ptr<scalar_t>();
    fn.x = x.const_data_ptr<scalar_t>();
    fn.dx = dx.mutable_data_ptr<scalar_t>();
    fn.dg = gb.dg.mutable_data_ptr<scalar_t>();
    fn.dgs = strided_of(gb.dg, "grad_gamma", kV, L.cl);
    if (gb.db.defined()) {
      fn.db = gb.db.mutable_data_ptr<scalar_t>();
      fn.dbs = strided_of(gb.db, "grad_beta", kV, L.cl);
    }
    fn.m = mod_in<scalar_t>(s, kV, L.cl);
    fn.act = static_cast<int>(act);
    fn.slope = static_cast<float>(slope);
    Exec::template tile<kV>(fn, T, part.defined() ? part.mutable_data_ptr<float>() : nullptr);
    if (part.defined()) {
      ModBwdFinalizeFn<scalar_t> fin{part.const_data_ptr<float>(), L.N, L.C, T.nchunk,
                                     g_chan ? fn.dg : nullptr, b_chan ? fn.db : nullptr, fn.dgs, fn.dbs};
      Exec::each(fin, L.N * L.C);
    }
  });
  return {dx, gb.dgamma, gb.dbeta};
}

// ---------------------------------------------------------------------------------------------------------------
// sft_group_norm
// ---------------------------------------------------------------------------------------------------------------
template <class Exec>
std::tuple<Tensor, Tensor, Tensor> group_norm(const Tensor& x, const Tensor& gamma, const std::optional<Tensor>& beta,
                                              int64_t G, const std::optional<Tensor>& weight,
                                              const std::optional<Tensor>& bias, double eps, int64_t act,
                                              double slope) {
  const XLayout L = x_layout<Exec>(x, "x");
  check_groups<Exec>(G, L);
  const Split s = split_mod<Exec>(x, gamma, beta);
  check_param<Exec>(weight, "weight", x);
  check_param<Exec>(bias, "bias", x);
  typename Exec::Guard guard(x.device());
  Tensor out = poisoned(at::empty(x.sizes(), x.options().memory_format(L.fmt)));
  Tensor mean = poisoned(at::empty({L.N, G}, x.options().dtype(at::kFloat)));
  Tensor rstd = poisoned(at::empty({L.N, G}, x.options().dtype(at::kFloat)));
  if (L.N == 0) return {out, mean, rstd};
  const int V = vec_width(L, x.element_size(), {&x, &out});
  const Tiling T = make_tiling(L, V);
  const int64_t Cg = L.C / G;
  Tensor part = float_ws(2 * L.N * L.C * T.nchunk, x);
  dispatch(x, V, [&]<typename scalar_t, int kV>() {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    GnStatsFn<scalar_t, kV> stats{xp, Cg};
    Exec::template tile<kV>(stats, T, part.mutable_data_ptr<float>());
    GnStatsFinalizeFn<scalar_t> fin{part.const_data_ptr<float>(), xp, T, G, Cg, static_cast<float>(eps),
                                    mean.mutable_data_ptr<float>(), rstd.mutable_data_ptr<float>()};
    Exec::each(fin, L.N * G);
    GnFwdFn<scalar_t, kV> fn{};
    fn.x = xp;
    fn.out = out.mutable_data_ptr<scalar_t>();
    fn.m = mod_in<scalar_t>(s, kV, L.cl);
    fn.mean = mean.const_data_ptr<float>();
    fn.rstd = rstd.const_data_ptr<float>();
    fn.w = weight.has_value() ? weight->const_data_ptr<scalar_t>() : nullptr;
    fn.ws = weight.has_value() ? weight->stride(0) : 0;
    fn.bias = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
    fn.bs = bias.has_value() ? bias->stride(0) : 0;
    fn.G = G;
    fn.Cg = Cg;
    fn.act = static_cast<int>(act);
    fn.slope = static_cast<float>(slope);
    Exec::template tile<kV>(fn, T, nullptr);
  });
  return {out, mean, rstd};
}

template <class Exec>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> group_norm_backward(
    const Tensor& grad, const Tensor& x, const Tensor& gamma, const std::optional<Tensor>& beta, int64_t G,
    const std::optional<Tensor>& weight, const std::optional<Tensor>& bias, const Tensor& mean, const Tensor& rstd,
    int64_t act, double slope) {
  const XLayout L = x_layout<Exec>(x, "x");
  check_like_x<Exec>(grad, "grad", x, L);
  check_groups<Exec>(G, L);
  const Split s = split_mod<Exec>(x, gamma, beta);
  check_param<Exec>(weight, "weight", x);
  check_param<Exec>(bias, "bias", x);
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{mean, "mean"}, {rstd, "rstd"}}) {
    Exec::check_device(t, name);
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.dim() == 2 && t.size(0) == L.N &&
                    t.size(1) == G,
                name, " must be a contiguous float32 [N, G] = [", L.N, ", ", G, "] tensor, got dtype ",
                t.scalar_type(), " shape ", t.sizes(), " strides ", t.strides());
  }
  typename Exec::Guard guard(x.device());
  Tensor dx = poisoned(at::empty(x.sizes(), x.options().memory_format(L.fmt)));
  GradBufs gb = grad_bufs(x, L, gamma, beta, s);
  auto param_grad = [&](const std::optional<Tensor>& t) {
    return t.has_value() ? poisoned(at::empty(t->sizes(), t->options().memory_format(at::MemoryFormat::Contiguous)))
                         : placeholder(x);
  };
  Tensor dw = param_grad(weight), dbias = param_grad(bias);
  if (L.N == 0) {
    if (weight.has_value()) dw.zero_();
    if (bias.has_value()) dbias.zero_();
    return {dx, gb.dgamma, gb.dbeta, dw, dbias};
  }
  const int V = vec_width(L, x.element_size(), {&x, &grad, &dx});
  const Tiling T = make_tiling(L, V);
  const int64_t Cg = L.C / G;
  Tensor part = float_ws(4 * L.N * L.C * T.nchunk, x);
  Tensor coef = float_ws(2 * L.N * G, x);
  const bool g_chan = !s.g_sp, b_chan = s.b.defined() && !s.b_sp;
  dispatch(x, V, [&]<typename scalar_t, int kV>() {
    const scalar_t* w = weight.has_value() ? weight->const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* bp = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
    const int64_t ws = weight.has_value() ? weight->stride(0) : 0, bs = bias.has_value() ? bias->stride(0) : 0;
    GnBwdFn<scalar_t, kV> p1{};
    p1.dy = grad.const_data_ptr<scalar_t>();
    p1.x = x.const_data_ptr<scalar_t>();
    p1.dg = gb.dg.mutable_data_ptr<scalar_t>();
    p1.dgs = strided_of(gb.dg, "grad_gamma", kV, L.cl);
    if (gb.db.defined()) {
      p1.db = gb.db.mutable_data_ptr<scalar_t>();
      p1.dbs = strided_of(gb.db, "grad_beta", kV, L.cl);
    }
    p1.m = mod_in<scalar_t>(s, kV, L.cl);
    p1.mean = mean.const_data_ptr<float>();
    p1.rstd = rstd.const_data_ptr<float>();
    p1.w = w;
    p1.ws = ws;
    p1.bias = bp;
    p1.bs = bs;
    p1.G = G;
    p1.Cg = Cg;
    p1.act = static_cast<int>(act);
    p1.slope = static_cast<float>(slope);
    Exec::template tile<kV>(p1, T, part.mutable_data_ptr<float>());
    GnBwdFinalizeFn<scalar_t> fin{part.const_data_ptr<float>(),
                                  T,
                                  G,
                                  Cg,
                                  w,
                                  ws,
                                  coef.mutable_data_ptr<float>(),
                                  weight.has_value() ? dw.mutable_data_ptr<scalar_t>() : nullptr,
                                  bias.has_value() ? dbias.mutable_data_ptr<scalar_t>() : nullptr,
                                  g_chan ? p1.dg : nullptr,
                                  b_chan ? p1.db : nullptr,
                                  p1.dgs,
                                  p1.dbs};
    Exec::each(fin, L.N * G + L.C + L.N * L.C);
    GnBwdDxFn<scalar_t, kV> p2{};
    p2.dy = p1.dy;
    p2.x = p1.x;
    p2.dx = dx.mutable_data_ptr<scalar_t>();
    p2.m = p1.m;
    p2.mean = p1.mean;
    p2.rstd = p1.rstd;
    p2.coef = coef.const_data_ptr<float>();
    p2.w = w;
    p2.ws = ws;
    p2.bias = bp;
    p2.bs = bs;
    p2.G = G;
    p2.Cg = Cg;
    p2.act = p1.act;
    p2.slope = p1.slope;
    Exec::template tile<kV>(p2, T, nullptr);
  });
  return {dx, gb.dgamma, gb.dbeta, dw, dbias};
}

}  // namespace sft
}  // namespace burstkern
