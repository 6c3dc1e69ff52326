// Host side of the sft CPU kernels (sft_cpu_kernels.h): layouts, outputs, per-(n, c) coefficients, the small
// finalize sums, and at::parallel_for over the work units of the per-ISA loops (sft_cpu_kernels_impl.h).
#define BK_ISA_FAMILY sft
#define BK_ISA_BUILD default
#include "common/cpu_isa_build.h"  // the portable build of the loops

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <string>
#include <vector>

#include "common/cpu_tensor.h"
#include "sft/sft.h"
#include "sft/sft_cpu_kernels.h"

namespace burstkern::sft::cpu {

using at::Tensor;
using namespace detail;

namespace {

struct Layout {
  at::MemoryFormat fmt;
  bool cl;
  int64_t N, C, HW;
  Tensor x;  // dense in fmt
};

Layout layout(const Tensor& x) {
  Layout L;
  L.fmt = format_of(x);
  L.cl = L.fmt == at::MemoryFormat::ChannelsLast;
  L.x = x.contiguous(L.fmt);
  L.N = x.size(0);
  L.C = x.size(1);
  L.HW = x.size(2) * x.size(3);
  return L;
}

Tensor dense_like(const Tensor& t, const Layout& L) { return t.contiguous(L.fmt); }

// The common head of the loop records: x (dense in L's layout) and its geometry.
void set_x(XArgs& a, const Layout& L) {
  a.dt = dt_of(L.x);
  a.cl = L.cl;
  a.N = L.N;
  a.C = L.C;
  a.HW = L.HW;
  a.x = L.x.const_data_ptr();
}

// (sN, sC, sHW) of a [N, C, H, W] view; sHW = 0 when it has one position. nullopt-like: ok = false when H and W
// do not merge into one index.
bool view_of(const Tensor& t, View& v) {
  const int64_t h = t.size(2), w = t.size(3);
  v.p = t.const_data_ptr();
  v.sN = t.stride(0);
  v.sC = t.stride(1);
  if (h * w == 1) {
    v.sHW = 0;
  } else if (w == 1) {
    v.sHW = t.stride(2);
  } else if (h == 1 || t.stride(2) == w * t.stride(3)) {
    v.sHW = t.stride(3);
  } else {
    return false;
  }
  return true;
}

// a spatial operand readable in place (copied to x's format when its H, W do not merge)
View operand(Tensor& t, const Layout& L) {
  View v{};
  if (!view_of(t, v)) {
    t = t.contiguous(L.fmt);
    view_of(t, v);
  }
  return v;
}

struct Mod {
  Tensor g, b;  // C-channel views; b undefined: no shift
  bool merged = false, g_sp = false, b_sp = false;
};

Mod split(const Layout& L, const Tensor& gamma, const std::optional<Tensor>& beta) {
  Mod m;
  if (!beta.has_value() && gamma.size(1) == 2 * L.C) {
    m.merged = true;
    m.g = gamma.narrow(1, 0, L.C);
    m.b = gamma.narrow(1, L.C, L.C);
  } else {
    m.g = gamma;
    if (beta.has_value()) m.b = *beta;
  }
  m.g_sp = L.HW > 1 && m.g.size(2) * m.g.size(3) > 1;
  m.b_sp = m.b.defined() && L.HW > 1 && m.b.size(2) * m.b.size(3) > 1;
  return m;
}

// per-(n, c) value of a per-channel (or any) [N, C, ...] view at position 0, as double
double at_nc(const Tensor& t, int64_t n, int64_t c) { return rd(t, n * t.stride(0) + c * t.stride(1)); }

// The head of a modulating pass's record: x, the activation, and the spatial gamma/beta operands (m's may be
// copied to x's format when they cannot be read in place).
void set_mod(ModArgs& a, const Layout& L, Mod& m, int64_t act, double slope) {
  set_x(a, L);
  a.act = static_cast<int>(act);
  a.slope = slope;
  a.g_sp = m.g_sp;
  a.bt_sp = m.b_sp;
  if (m.g_sp) a.g = operand(m.g, L);
  if (m.b_sp) a.bt = operand(m.b, L);
}

template <class A>
struct Arr {
  std::vector<A> v;
  explicit Arr(int64_t n, A fill = A(0)) : v(static_cast<size_t>(n), fill) {}
  A& operator[](int64_t i) { return v[static_cast<size_t>(i)]; }
  const void* ptr() const { return v.data(); }
};

// Calls f.template operator()<A>() with the compute type of x's dtype.
template <class F>
void with_compute(const Tensor& x, F&& f) {
  if (x.scalar_type() == at::kDouble) {
    f.template operator()<double>();
  } else {
    f.template operator()<float>();
  }
}

int64_t row_grain(int64_t len) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, len)); }

// pixels per channels_last reduction unit (fixed by C alone)
int64_t cl_chunk(int64_t C) { return std::max<int64_t>(1, 16384 / C); }

void run_apply(const ApplyArgs& a) {
  const int64_t rows = a.cl ? a.N * a.HW : a.N * a.C;
  const auto fn = Builds::table(a.dt).apply;
  at::parallel_for(0, rows, row_grain(a.cl ? a.C : a.HW), [&](int64_t b, int64_t e) { fn(a, b, e); });
}

// The per-(n, c) coefficients of the forward element pass of both ops: u = ((x − mean)·scale + shift)·(1 + gamma) +
// beta, per-channel gamma/beta folded in.
template <class A>
struct FwdCoefs {
  Arr<A> M, Ml, As, Bs, Tc;
  explicit FwdCoefs(int64_t NC) : M(NC), Ml(NC), As(NC), Bs(NC), Tc(NC) {}
  void set(const Mod& m, int64_t n, int64_t c, int64_t k, double mean, double scale, double shift) {
    double a = scale, b = shift, t = 0.0;
    if (m.b.defined() && !m.b_sp) t = at_nc(m.b, n, c);
    if (!m.g_sp) {
      const double g1 = 1.0 + at_nc(m.g, n, c);
      a *= g1;
      b = b * g1 + t;
      t = 0.0;
    }
    M[k] = static_cast<A>(mean);
    Ml[k] = static_cast<A>(mean - static_cast<double>(M[k]));
    As[k] = static_cast<A>(a);
    Bs[k] = static_cast<A>(b);
    Tc[k] = static_cast<A>(t);
  }
};

// The record of the forward element pass writing out with the coefficients cf (filled before its rows run).
template <class A>
ApplyArgs apply_args(const Layout& L, Mod& m, const FwdCoefs<A>& cf, Tensor& out, int64_t act, double slope) {
  ApplyArgs a{};
  set_mod(a, L, m, act, slope);
  a.out = out.data_ptr();
  a.M = cf.M.ptr(), a.Mlo = cf.Ml.ptr();  // the mean, in two parts
  a.A = cf.As.ptr(), a.B = cf.Bs.ptr(), a.Tc = cf.Tc.ptr();
  a.tc = m.g_sp && m.b.defined() && !m.b_sp;
  return a;
}

template <class A>
Tensor forward_pass(const Layout& L, Mod& m, const std::vector<double>& mean, const std::vector<double>& scale,
                    const std::vector<double>& shift, int64_t act, double slope) {
  Tensor out = at::empty(L.x.sizes(), L.x.options().memory_format(L.fmt));
  FwdCoefs<A> cf(L.N * L.C);
  for (int64_t n = 0; n < L.N; ++n) {
    for (int64_t c = 0; c < L.C; ++c) {
      const int64_t k = n * L.C + c;
      cf.set(m, n, c, k, mean[k], scale[k], shift[k]);
    }
  }
  ApplyArgs a = apply_args<A>(L, m, cf, out, act, slope);
  if (L.N > 0) run_apply(a);
  return out;
}

// Backward pass 1 (both ops); per-(n, c) sums [N·C][4] in double, summed over channels_last chunks in order.
template <class A>
std::vector<double> backward_pass1(const Layout& L, const Tensor& dy, Mod& m, GradBufs& gr, bool gn, void* gha,
                                   const Arr<A>& mean, const Arr<A>& rstd, const Arr<A>& w, const Arr<A>& bias,
                                   int64_t act, double slope) {
  const int64_t NC = L.N * L.C;
  Arr<A> g1c(NC, A(1)), btc(NC, A(0));
  for (int64_t n = 0; n < L.N; ++n) {
    for (int64_t c = 0; c < L.C; ++c) {
      if (!m.g_sp) g1c[n * L.C + c] = static_cast<A>(1.0 + at_nc(m.g, n, c));
      if (m.b.defined() && !m.b_sp) btc[n * L.C + c] = static_cast<A>(at_nc(m.b, n, c));
    }
  }
  Bwd1Args a{};
  set_mod(a, L, m, act, slope);
  a.gn = gn;
  a.dy = dy.const_data_ptr();
  a.mean = mean.ptr(), a.rstd = rstd.ptr();  // the statistics,
  a.w = w.ptr(), a.bias = bias.ptr();        // the affine parameters,
  a.g1c = g1c.ptr(), a.btc = btc.ptr();      // the per-channel modulation
  a.gha = gha;
  a.write_dg = m.g_sp;
  a.write_db = m.b_sp;
  if (m.g_sp) {
    TORCH_INTERNAL_ASSERT(view_of(gr.dg, a.dg));
    a.dg.p = gr.dg.data_ptr();
  }
  if (m.b_sp) {
    TORCH_INTERNAL_ASSERT(view_of(gr.db, a.db));
    a.db.p = gr.db.data_ptr();
  }
  a.chunk = cl_chunk(L.C);
  const auto fn = Builds::table(a.dt).bwd1;
  std::vector<double> sums(static_cast<size_t>(4 * NC), 0.0);
  if (!L.cl) {
    a.sums = sums.data();
    at::parallel_for(0, NC, row_grain(L.HW), [&](int64_t b, int64_t e) { fn(a, b, e); });
  } else {
    const int64_t nchunk = (L.HW + a.chunk - 1) / a.chunk;
    std::vector<double> part(static_cast<size_t>(L.N * nchunk * 4 * L.C));
    a.sums = part.data();
    at::parallel_for(0, L.N * nchunk, 1, [&](int64_t b, int64_t e) { fn(a, b, e); });
    for (int64_t n = 0; n < L.N; ++n) {
      for (int64_t ch = 0; ch < nchunk; ++ch) {
        const double* p = part.data() + (n * nchunk + ch) * 4 * L.C;
        for (int64_t k = 0; k < 4; ++k) {
          for (int64_t c = 0; c < L.C; ++c) sums[static_cast<size_t>(4 * (n * L.C + c) + k)] += p[k * L.C + c];
        }
      }
    }
  }
  // per-channel dgamma / dbeta
  for (int64_t n = 0; n < L.N; ++n) {
    for (int64_t c = 0; c < L.C; ++c) {
      const double* s = sums.data() + 4 * (n * L.C + c);
      if (!m.g_sp) wr(gr.dg, n * gr.dg.stride(0) + c * gr.dg.stride(1), s[2]);
      if (m.b.defined() && !m.b_sp) wr(gr.db, n * gr.db.stride(0) + c * gr.db.stride(1), s[3]);
    }
  }
  return sums;
}

}  // namespace

const char* cpu_path() { return Builds::picked().name; }

// ---------------------------------------------------------------------------------------------------------------
// sft_modulate
// ---------------------------------------------------------------------------------------------------------------
Tensor sft_modulate(const Tensor& x, const Tensor& gamma, const std::optional<Tensor>& beta, int64_t act,
                    double slope) {
  const Layout L = layout(x);
  Mod m = split(L, gamma, beta);
  Tensor out;
  with_compute(x, [&]<class A>() {
    const std::vector<double> zero(static_cast<size_t>(L.N * L.C), 0.0), one(zero.size(), 1.0);
    out = forward_pass<A>(L, m, zero, one, zero, act, slope);
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor> sft_modulate_backward(const Tensor& grad, const Tensor& x, const Tensor& gamma,
                                                         const std::optional<Tensor>& beta, int64_t act,
                                                         double slope) {
  const Layout L = layout(x);
  const Tensor dy = dense_like(grad, L);
  Mod m = split(L, gamma, beta);
  GradBufs gr = grad_bufs(L.x, L.fmt, L.C, gamma, beta, m.merged);
  Tensor dx = at::empty(L.x.sizes(), L.x.options().memory_format(L.fmt));
  if (L.N == 0) return {dx, gr.dgamma, gr.dbeta};
  with_compute(x, [&]<class A>() {
    const int64_t NC = L.N * L.C;
    Arr<A> zero(NC, A(0)), one(NC, A(1));
    backward_pass1<A>(L, dy, m, gr, false, dx.data_ptr(), zero, one, one, zero, act, slope);
  });
  return {dx, gr.dgamma, gr.dbeta};
}

// ---------------------------------------------------------------------------------------------------------------
// sft_group_norm
// ---------------------------------------------------------------------------------------------------------------
std::tuple<Tensor, Tensor, Tensor> sft_group_norm(const Tensor& x, const Tensor& gamma,
                                                  const std::optional<Tensor>& beta, int64_t G,
                                                  const std::optional<Tensor>& weight,
                                                  const std::optional<Tensor>& bias, double eps, int64_t act,
                                                  double slope) {
  const Layout L = layout(x);
  Mod m = split(L, gamma, beta);
  const auto cd = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor mean_t = at::empty({L.N, G}, x.options().dtype(cd));
  Tensor rstd_t = at::empty({L.N, G}, x.options().dtype(cd));
  Tensor out;
  const int64_t Cg = L.C / G, NC = L.N * L.C, NG = L.N * G;
  with_compute(x, [&]<class A>() {
    // pivots: the first element of each (n, group)
    Arr<A> piv(NC);
    for (int64_t n = 0; n < L.N; ++n) {
      for (int64_t g = 0; g < G; ++g) {
        const int64_t off = L.cl ? n * L.HW * L.C + g * Cg : (n * L.C + g * Cg) * L.HW;
        const A p = static_cast<A>(rd(L.x, off));
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) piv[n * L.C + c] = p;
      }
    }
    StatsArgs sa{};
    set_x(sa, L);
    sa.G = G;
    sa.pivot = piv.ptr();
    sa.chunk = cl_chunk(L.C);
    std::vector<double> s(static_cast<size_t>(2 * NG), 0.0);
    const auto fn = Builds::table(sa.dt).stats;
    const double cnt = static_cast<double>(Cg * L.HW);
    // group (n, g) from its sums: the stored statistics and the coefficients of its channels, in the same double
    // arithmetic for both layouts
    auto finish_group = [&](int64_t ng, auto&& set_channel) {
      const int64_t n = ng / G, g = ng % G;
      const double m1 = s[static_cast<size_t>(2 * ng)] / cnt;
      double var = s[static_cast<size_t>(2 * ng + 1)] / cnt - m1 * m1;
      var = var > 0.0 ? var : 0.0;
      const double mu = static_cast<double>(piv[n * L.C + g * Cg]) + m1;
      // the statistics as the outputs store them (fp32 for fp32/half x), so the backward sees the same values
      const A mu_a = static_cast<A>(mu);
      const A rs_a = static_cast<A>(1.0 / std::sqrt(var + eps));
      wr(mean_t, ng, static_cast<double>(mu_a));
      wr(rstd_t, ng, static_cast<double>(rs_a));
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        const double w = weight.has_value() ? rd(*weight, c * weight->stride(0)) : 1.0;
        const double b = bias.has_value() ? rd(*bias, c * bias->stride(0)) : 0.0;
        set_channel(n, c, n * L.C + c, mu, static_cast<double>(rs_a) * w, b);
      }
    };
    if (!L.cl) {
      // NCHW: group by group, its statistics and then its rows, so the second read of the group's Cg·HW values
      // comes from cache when they fit (147 KiB for C128 / 32 groups at 96²: x is read from memory once instead of
      // twice). The same sums, in the same order, as a statistics pass over all groups followed by the element pass.
      out = at::empty(L.x.sizes(), L.x.options().memory_format(L.fmt));
      FwdCoefs<A> cf(NC);
      const ApplyArgs aa = apply_args<A>(L, m, cf, out, act, slope);
      const auto apply = Builds::table(aa.dt).apply;
      sa.out = s.data();
      at::parallel_for(0, NG, 1, [&](int64_t b, int64_t e) {
        for (int64_t u = b; u < e; ++u) {  // u = n·G + g; its rows n·C + g·Cg .. are u·Cg ..
          fn(sa, u, u + 1);
          finish_group(u, [&](int64_t n, int64_t c, int64_t k, double mu, double sc, double sh) {
            cf.set(m, n, c, k, mu, sc, sh);
          });
          apply(aa, u * Cg, (u + 1) * Cg);
        }
      });
      return;
    } else {
      const int64_t nchunk = (L.HW + sa.chunk - 1) / sa.chunk;
      std::vector<double> part(static_cast<size_t>(L.N * nchunk * 2 * L.C));
      sa.out = part.data();
      if (L.N > 0) at::parallel_for(0, L.N * nchunk, 1, [&](int64_t b, int64_t e) { fn(sa, b, e); });
      for (int64_t n = 0; n < L.N; ++n) {
        for (int64_t ch = 0; ch < nchunk; ++ch) {
          const double* p = part.data() + (n * nchunk + ch) * 2 * L.C;
          for (int64_t c = 0; c < L.C; ++c) {
            const int64_t ng = n * G + c / Cg;
            s[static_cast<size_t>(2 * ng)] += p[c];
            s[static_cast<size_t>(2 * ng + 1)] += p[L.C + c];
          }
        }
      }
    }
    std::vector<double> mean(static_cast<size_t>(NC)), scale(mean.size()), shift(mean.size());
    for (int64_t ng = 0; ng < NG; ++ng) {
      finish_group(ng, [&](int64_t, int64_t, int64_t k, double mu, double sc, double sh) {
        mean[static_cast<size_t>(k)] = mu;
        scale[static_cast<size_t>(k)] = sc;
        shift[static_cast<size_t>(k)] = sh;
      });
    }
    out = forward_pass<A>(L, m, mean, scale, shift, act, slope);
  });
  return {out, mean_t, rstd_t};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sft_group_norm_backward(
    const Tensor& grad, const Tensor& x, const Tensor& gamma, const std::optional<Tensor>& beta, int64_t G,
    const std::optional<Tensor>& weight, const std::optional<Tensor>& bias, const Tensor& mean, const Tensor& rstd,
    double /*eps*/, int64_t act, double slope) {
  const Layout L = layout(x);
  const Tensor dy = dense_like(grad, L);
  Mod m = split(L, gamma, beta);
  GradBufs gr = grad_bufs(L.x, L.fmt, L.C, gamma, beta, m.merged);
  Tensor dx = at::empty(L.x.sizes(), L.x.options().memory_format(L.fmt));
  auto param_grad = [&](const std::optional<Tensor>& t) {
    return t.has_value() ? at::zeros(t->sizes(), t->options().memory_format(at::MemoryFormat::Contiguous))
                         : at::empty({0}, x.options());
  };
  Tensor dw = param_grad(weight), dbias = param_grad(bias);
  if (L.N == 0) return {dx, gr.dgamma, gr.dbeta, dw, dbias};
  const int64_t Cg = L.C / G, NC = L.N * L.C;
  const Tensor mean_c = mean.contiguous(), rstd_c = rstd.contiguous();
  with_compute(x, [&]<class A>() {
    Arr<A> mu(NC), rs(NC), w(NC, A(1)), bi(NC, A(0));
    for (int64_t n = 0; n < L.N; ++n) {
      for (int64_t c = 0; c < L.C; ++c) {
        const int64_t k = n * L.C + c, ng = n * G + c / Cg;
        mu[k] = static_cast<A>(rd(mean_c, ng));
        rs[k] = static_cast<A>(rd(rstd_c, ng));
        if (weight.has_value()) w[k] = static_cast<A>(rd(*weight, c * weight->stride(0)));
        if (bias.has_value()) bi[k] = static_cast<A>(rd(*bias, c * bias->stride(0)));
      }
    }
    // gha: in dx itself when x's dtype is the compute type, else an fp32 buffer laid out like x
    const bool own = std::is_same<A, float>::value && x.scalar_type() != at::kFloat;
    Tensor scratch = own ? at::empty(L.x.sizes(), L.x.options().dtype(at::kFloat).memory_format(L.fmt)) : dx;
    const std::vector<double> s = backward_pass1<A>(L, dy, m, gr, true, scratch.data_ptr(), mu, rs, w, bi, act, slope);
    // finalize: coefficients per (n, g), weight / bias gradients
    const double inv = 1.0 / static_cast<double>(Cg * L.HW);
    Arr<A> P(NC), Q(NC), R(NC);
    for (int64_t n = 0; n < L.N; ++n) {
      for (int64_t g = 0; g < G; ++g) {
        double c0 = 0.0, c1 = 0.0;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          const int64_t k = n * L.C + c;
          c0 += static_cast<double>(w[k]) * s[static_cast<size_t>(4 * k)];
          c1 += static_cast<double>(w[k]) * s[static_cast<size_t>(4 * k + 1)];
        }
        c0 *= inv;
        c1 *= inv;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          const int64_t k = n * L.C + c;
          const double r = static_cast<double>(rs[k]);
          P[k] = static_cast<A>(r * static_cast<double>(w[k]));
          Q[k] = static_cast<A>(-r * c0);
          R[k] = static_cast<A>(-r * r * c1);
        }
      }
    }
    if (weight.has_value() || bias.has_value()) {
      for (int64_t c = 0; c < L.C; ++c) {
        double sw = 0.0, sb = 0.0;
        for (int64_t n = 0; n < L.N; ++n) {
          sw += s[static_cast<size_t>(4 * (n * L.C + c) + 1)];
          sb += s[static_cast<size_t>(4 * (n * L.C + c))];
        }
        if (weight.has_value()) wr(dw, c, sw);
        if (bias.has_value()) wr(dbias, c, sb);
      }
    }
    Bwd2Args b{};
    set_x(b, L);
    b.gha = scratch.const_data_ptr();
    b.dx = dx.data_ptr();
    b.P = P.ptr(), b.Q = Q.ptr(), b.R = R.ptr(), b.mean = mu.ptr();
    const int64_t rows = L.cl ? L.N * L.HW : NC;
    const auto fn = Builds::table(b.dt).bwd2;
    at::parallel_for(0, rows, row_grain(L.cl ? L.C : L.HW), [&](int64_t bb, int64_t e) { fn(b, bb, e); });
  });
  return {dx, gr.dgamma, gr.dbeta, dw, dbias};
}

}  // namespace burstkern::sft::cpu
