// Host side of the denoise CPU kernels (denoise_cpu_kernels.h): layouts, outputs, per-sample coefficients (double),
// the per-sample totals of the reductions, and at::parallel_for over the units of the per-ISA loops.
#define BK_ISA_FAMILY denoise
#define BK_ISA_BUILD default
#include "common/cpu_isa_build.h"  // the portable build of the loops

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

#include "common/cpu_tensor.h"
#include "denoise/denoise_cpu_kernels.h"

namespace burstkern::denoise::cpu {

using at::Tensor;
using namespace detail;

namespace {

bool is_cm(c10::string_view mode) { return mode == "cm"; }

constexpr int64_t kChunk = 16384;  // elements per unit (fixed: results do not depend on the thread count)

// The flat walk of one call: every x-like input in x's format.
struct Flat {
  at::MemoryFormat fmt;
  int64_t N = 0, M = 0, C = 1, HW = 1;
  bool cl = false;
  Tensor x;

  Tensor in(const Tensor& t) const { return t.contiguous(fmt); }
  Tensor out() const { return at::empty(x.sizes(), x.options().memory_format(fmt)); }
  int64_t units() const { return N * ((M + kChunk - 1) / kChunk); }
};

Flat flat(const Tensor& x) {
  Flat L;
  L.fmt = format_of(x);
  L.cl = L.fmt == at::MemoryFormat::ChannelsLast;
  L.x = x.contiguous(L.fmt);
  L.N = x.dim() > 0 ? x.size(0) : 1;
  L.M = L.N > 0 ? x.numel() / L.N : 0;
  if (L.cl) {
    L.C = x.size(1);
    L.HW = x.size(2) * x.size(3);
  }
  return L;
}

// per-sample values of a [] or [N] tensor, as double
std::vector<double> per_sample(const Tensor& s, int64_t N) {
  std::vector<double> v(static_cast<size_t>(N));
  const int64_t st = s.dim() == 0 ? 0 : s.stride(0);
  for (int64_t n = 0; n < N; ++n) v[static_cast<size_t>(n)] = rd(s, n * st);
  return v;
}

struct Coef {
  double skip, out, in;
};

Coef coefficients(double s, double sd, double smin, bool cm) {
  const double sd2 = sd * sd;
  const double c_in = 1.0 / std::sqrt(s * s + sd2);
  const double e = cm ? s - smin : s;
  return {sd2 / (e * e + sd2), e * sd * c_in, c_in};
}

double sqrt_pos(double v) { return std::sqrt(v < 0.0 ? 0.0 : v); }  // NaN stays NaN

// The record of one call of op on L: its inputs, outputs and per-sample scalars in slot order (nullptr: unused).
Args base_args(const Flat& L, int op, std::initializer_list<const void*> in, std::initializer_list<void*> out,
               std::initializer_list<const double*> ps) {
  Args a{};
  a.op = op;
  a.dt = dt_of(L.x);
  a.N = L.N;
  a.M = L.M;
  a.cl = L.cl;
  a.C = L.C;
  a.HW = L.HW;
  a.chunk = kChunk;
  TORCH_INTERNAL_ASSERT(in.size() <= std::size(a.in) && out.size() <= std::size(a.out) &&
                        ps.size() <= std::size(a.ps));
  std::copy(in.begin(), in.end(), a.in);
  std::copy(out.begin(), out.end(), a.out);
  std::copy(ps.begin(), ps.end(), a.ps);
  return a;
}

void run(const Args& a, int64_t units) {
  if (units <= 0) return;
  const auto fn = Builds::table(a.dt).run;
  at::parallel_for(0, units, 1, [&](int64_t b, int64_t e) { fn(a, b, e); });
}

// per-sample totals of the unit partials, in order
std::vector<double> sample_totals(const std::vector<double>& red, const Flat& L) {
  const int64_t nch = (L.M + kChunk - 1) / kChunk;
  std::vector<double> t(static_cast<size_t>(L.N), 0.0);
  for (int64_t n = 0; n < L.N; ++n) {
    double s = 0.0;
    for (int64_t j = 0; j < nch; ++j) s += red[static_cast<size_t>(n * nch + j)];
    t[static_cast<size_t>(n)] = s;
  }
  return t;
}

void set_noise(Args& a, const Flat& L, const std::optional<Tensor>& noise, const std::optional<Tensor>& seed,
               Tensor& keep, const char* op) {
  if (noise.has_value()) {
    keep = L.in(*noise);
    a.in[3] = keep.const_data_ptr();
    a.has_noise = true;
  } else {
    TORCH_CHECK(seed.has_value() && seed->numel() >= 1, op, " needs noise or seed (in-kernel noise), got neither");
    a.draw = true;
    a.seed = seed->contiguous().const_data_ptr<int64_t>()[0];
  }
}

}  // namespace

const char* cpu_path() { return Builds::picked().name; }

std::tuple<Tensor, Tensor, Tensor, Tensor> denoise_scalings(const Tensor& sigma, double sd, double smin,
                                                            c10::string_view mode) {
  const auto cd = sigma.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor s = sigma.contiguous();
  auto make = [&] { return at::empty(sigma.sizes(), sigma.options().dtype(cd)); };
  Tensor skip = make(), out = make(), in = make(), noise = make();
  const bool cm = is_cm(mode);
  for (int64_t i = 0; i < s.numel(); ++i) {
    const double v = rd(s, i);
    const Coef c = coefficients(v, sd, smin, cm);
    wr(skip, i, c.skip);
    wr(out, i, c.out);
    wr(in, i, c.in);
    wr(noise, i, std::log(v) * 0.25);
  }
  return {skip, out, in, noise};
}

std::tuple<Tensor, Tensor> denoise_combine(const Tensor& x, const Tensor& F, const Tensor& sigma, double sd,
                                           double smin, c10::string_view mode, bool return_d) {
  const Flat L = flat(x);
  const Tensor f = L.in(F);
  Tensor D = L.out(), d = return_d ? L.out() : at::empty({0}, x.options());
  const std::vector<double> s = per_sample(sigma, L.N);
  std::vector<double> cs(s.size()), co(s.size()), e1(s.size()), e2(s.size());
  for (size_t n = 0; n < s.size(); ++n) {
    const Coef c = coefficients(s[n], sd, smin, is_cm(mode));
    cs[n] = c.skip;
    co[n] = c.out;
    e1[n] = (1.0 - c.skip) / s[n];
    e2[n] = -c.out / s[n];
  }
  Args a = base_args(L, kCombine, {L.x.const_data_ptr(), f.const_data_ptr()},
                      {D.data_ptr(), return_d ? d.data_ptr() : nullptr},
                      {cs.data(), co.data(), s.data(), e1.data(), e2.data()});
  a.has_d = return_d;
  run(a, L.units());
  return {D, d};
}

std::tuple<Tensor, Tensor, Tensor> denoise_combine_backward(const Tensor& grad_D, const Tensor& grad_d,
                                                            const Tensor& x, const Tensor& F, const Tensor& sigma,
                                                            double sd, double smin, c10::string_view mode,
                                                            bool return_d, bool need_sigma) {
  const Flat L = flat(x);
  const Tensor f = L.in(F), gD = L.in(grad_D);
  const bool has_gd = return_d && grad_d.numel() == x.numel() && x.numel() > 0;
  const Tensor gd = has_gd ? L.in(grad_d) : Tensor();
  Tensor gx = L.out(), gF = L.out();
  Tensor gs = need_sigma ? at::zeros(sigma.sizes(), sigma.options().memory_format(at::MemoryFormat::Contiguous))
                         : at::empty({0}, x.options());
  const bool cm = is_cm(mode);
  const std::vector<double> s = per_sample(sigma, L.N);
  std::vector<double> cs(s.size()), co(s.size()), ka(s.size()), kb(s.size()), dcs(s.size()), dco(s.size()),
      kda(s.size()), kdb(s.size());
  const double sd2 = sd * sd;
  for (size_t n = 0; n < s.size(); ++n) {
    const double sg = s[n];
    const Coef c = coefficients(sg, sd, smin, cm);
    cs[n] = c.skip;
    co[n] = c.out;
    const double den = sg * sg + sd2, r = 1.0 / std::sqrt(den), r3 = r / den;
    const double e = cm ? sg - smin : sg, sh = cm ? smin : 0.0, dm = e * e + sd2, s2 = sg * sg;
    dcs[n] = -2.0 * e * sd2 / (dm * dm);
    dco[n] = sd * (sd2 + sh * sg) * r3;  // = sd·(den − e·σ)·r3, no cancellation for σ ≫ sd
    // d = (x − D)/σ = a·x − b·F and its σ-derivatives in closed form (element.cuh d_coeffs)
    ka[n] = e * e / (sg * dm);
    kb[n] = e * sd * r / sg;
    kda[n] = e * ((sg + sh) * sd2 - e * e * e) / (s2 * dm * dm);
    kdb[n] = sd * (sh * den - e * s2) * r / (s2 * den);
  }
  Args a = base_args(L, kCombineBwd,
                      {gD.const_data_ptr(), has_gd ? gd.const_data_ptr() : nullptr, L.x.const_data_ptr(),
                       f.const_data_ptr()},
                      {gx.data_ptr(), gF.data_ptr()},
                      {cs.data(), co.data(), ka.data(), kb.data(), dcs.data(), dco.data(), kda.data(), kdb.data()});
  a.has_d = has_gd;
  std::vector<double> red(static_cast<size_t>(std::max<int64_t>(L.units(), 0)), 0.0);
  if (need_sigma) a.red = red.data();
  run(a, L.units());
  if (need_sigma && L.N > 0) {
    const std::vector<double> t = sample_totals(red, L);
    if (sigma.dim() == 1) {
      for (int64_t n = 0; n < L.N; ++n) wr(gs, n, t[static_cast<size_t>(n)]);
    } else {
      double tot = 0.0;
      for (double v : t) tot += v;
      wr(gs, 0, tot);
    }
  }
  return {gx, gF, gs};
}

std::tuple<Tensor, Tensor> edm_euler_update(const Tensor& x, const Tensor& F, const Tensor& sigma,
                                            const Tensor& sigma_next, double sd) {
  const Flat L = flat(x);
  const Tensor f = L.in(F);
  Tensor xn = L.out(), d = L.out();
  const std::vector<double> s = per_sample(sigma, L.N), sn = per_sample(sigma_next, L.N);
  std::vector<double> cs(s.size()), co(s.size());
  for (size_t n = 0; n < s.size(); ++n) {
    const Coef c = coefficients(s[n], sd, 0.0, false);
    cs[n] = (1.0 - c.skip) / s[n];
    co[n] = -c.out / s[n];
  }
  Args a = base_args(L, kEuler, {L.x.const_data_ptr(), f.const_data_ptr()},
                      {xn.data_ptr(), d.data_ptr()}, {cs.data(), co.data(), s.data(), sn.data()});
  run(a, L.units());
  return {xn, d};
}

Tensor edm_heun_update(const Tensor& x_hat, const Tensor& d, const Tensor& x_next, const Tensor& F_next,
                       const Tensor& sigma_hat, const Tensor& sigma_next, double sd) {
  const Flat L = flat(x_hat);
  const Tensor dd = L.in(d), xn = L.in(x_next), fn = L.in(F_next);
  Tensor out = L.out();
  const std::vector<double> sh = per_sample(sigma_hat, L.N), sn = per_sample(sigma_next, L.N);
  std::vector<double> cs(sh.size()), co(sh.size()), sh_k(sh.size()), pos(sh.size());
  for (size_t n = 0; n < sh.size(); ++n) {
    pos[n] = sn[n] > 0.0 ? 1.0 : 0.0;  // σ_next = 0 (or NaN): the Euler result x_next
    const double s = pos[n] != 0.0 ? sn[n] : 1.0;
    const Coef c = coefficients(s, sd, 0.0, false);
    const double half = 0.5 * (sn[n] - sh[n]);
    cs[n] = half;
    co[n] = half * (1.0 - c.skip) / s;
    sh_k[n] = -half * c.out / s;
  }
  Args a = base_args(L, kHeun,
                      {L.x.const_data_ptr(), dd.const_data_ptr(), xn.const_data_ptr(), fn.const_data_ptr()},
                      {out.data_ptr()}, {cs.data(), co.data(), sh_k.data(), nullptr, pos.data()});
  run(a, L.units());
  return out;
}

Tensor add_noise(const Tensor& x, const Tensor& sigma, const std::optional<Tensor>& sigma_base, double s_noise,
                 const std::optional<Tensor>& noise, const std::optional<Tensor>& seed) {
  const Flat L = flat(x);
  Tensor out = L.out();
  const std::vector<double> s = per_sample(sigma, L.N);
  const std::vector<double> sb = sigma_base.has_value() ? per_sample(*sigma_base, L.N) : std::vector<double>(s.size());
  std::vector<double> scale(s.size());
  for (size_t n = 0; n < s.size(); ++n) scale[n] = sqrt_pos(s[n] * s[n] - sb[n] * sb[n]) * s_noise;
  Args a = base_args(L, kAddNoise, {L.x.const_data_ptr()}, {out.data_ptr()}, {scale.data()});
  Tensor keep;
  set_noise(a, L, noise, seed, keep, "add_noise");
  run(a, L.units());
  return out;
}

Tensor cm_update(const Tensor& x, const Tensor& F, const Tensor& sigma, double smin, double sd,
                 const std::optional<Tensor>& sigma_next, std::optional<double> clamp,
                 const std::optional<Tensor>& noise, const std::optional<Tensor>& seed) {
  const Flat L = flat(x);
  const Tensor f = L.in(F);
  Tensor out = L.out();
  const std::vector<double> s = per_sample(sigma, L.N);
  const std::vector<double> sn = sigma_next.has_value() ? per_sample(*sigma_next, L.N) : std::vector<double>(s.size());
  std::vector<double> cs(s.size()), co(s.size()), scale(s.size());
  for (size_t n = 0; n < s.size(); ++n) {
    const Coef c = coefficients(s[n], sd, smin, true);
    cs[n] = c.skip;
    co[n] = c.out;
    scale[n] = sqrt_pos(sn[n] * sn[n] - smin * smin);
  }
  Args a = base_args(L, kCm, {L.x.const_data_ptr(), f.const_data_ptr()},
                      {out.data_ptr()}, {cs.data(), co.data(), scale.data()});
  a.has_clamp = clamp.has_value();
  a.clamp = clamp.value_or(0.0);
  a.has_next = sigma_next.has_value();
  Tensor keep;
  if (a.has_next) set_noise(a, L, noise, seed, keep, "cm_update with sigma_next");
  run(a, L.units());
  return out;
}

std::tuple<Tensor, Tensor> cm_update_backward(const Tensor& grad, const Tensor& x, const Tensor& F,
                                              const Tensor& sigma, double smin, double sd,
                                              std::optional<double> clamp) {
  const Flat L = flat(x);
  const Tensor f = L.in(F), g = L.in(grad);
  Tensor gx = L.out(), gF = L.out();
  const std::vector<double> s = per_sample(sigma, L.N);
  std::vector<double> cs(s.size()), co(s.size());
  for (size_t n = 0; n < s.size(); ++n) {
    const Coef c = coefficients(s[n], sd, smin, true);
    cs[n] = c.skip;
    co[n] = c.out;
  }
  Args a = base_args(L, kCmBwd, {g.const_data_ptr(), L.x.const_data_ptr(), f.const_data_ptr()},
                      {gx.data_ptr(), gF.data_ptr()}, {cs.data(), co.data()});
  a.has_clamp = clamp.has_value();
  a.clamp = clamp.value_or(0.0);
  run(a, L.units());
  return {gx, gF};
}

Tensor edm_loss(const Tensor& x_noisy, const Tensor& F, const Tensor& y, const Tensor& sigma, double sd) {
  const Flat L = flat(x_noisy);
  const Tensor f = L.in(F), yy = L.in(y);
  const int64_t N = x_noisy.size(0);
  Tensor loss = at::empty({N}, x_noisy.options().memory_format(at::MemoryFormat::Contiguous));
  if (N == 0) return loss;
  const std::vector<double> s = per_sample(sigma, N);
  std::vector<double> cs(s.size()), co(s.size());
  for (size_t n = 0; n < s.size(); ++n) {
    const Coef c = coefficients(s[n], sd, 0.0, false);
    cs[n] = c.skip;
    co[n] = c.out;
  }
  Args a = base_args(L, kLoss, {L.x.const_data_ptr(), f.const_data_ptr(), yy.const_data_ptr()},
                      {}, {cs.data(), co.data()});
  std::vector<double> red(static_cast<size_t>(L.units()), 0.0);
  a.red = red.data();
  run(a, L.units());
  const std::vector<double> t = sample_totals(red, L);
  for (int64_t n = 0; n < N; ++n) {
    const double sv = s[static_cast<size_t>(n)], ssd = sv * sd;
    const double lam = (sv * sv + sd * sd) / (ssd * ssd);
    wr(loss, n, L.M > 0 ? lam * t[static_cast<size_t>(n)] / static_cast<double>(L.M) : 0.0);
  }
  return loss;
}

std::tuple<Tensor, Tensor, Tensor> edm_loss_backward(const Tensor& grad, const Tensor& x_noisy, const Tensor& F,
                                                     const Tensor& y, const Tensor& sigma, double sd) {
  const Flat L = flat(x_noisy);
  const Tensor f = L.in(F), yy = L.in(y);
  Tensor gx = L.out(), gF = L.out(), gy = L.out();
  const std::vector<double> s = per_sample(sigma, L.N), g = per_sample(grad, L.N);
  std::vector<double> cs(s.size()), co(s.size()), k(s.size());
  for (size_t n = 0; n < s.size(); ++n) {
    const Coef c = coefficients(s[n], sd, 0.0, false);
    cs[n] = c.skip;
    co[n] = c.out;
    const double ssd = s[n] * sd;
    const double lam = (s[n] * s[n] + sd * sd) / (ssd * ssd);
    k[n] = g[n] * lam * 2.0 / static_cast<double>(L.M > 0 ? L.M : 1);
  }
  Args a = base_args(L, kLossBwd, {L.x.const_data_ptr(), f.const_data_ptr(), yy.const_data_ptr()},
                      {gx.data_ptr(), gF.data_ptr(), gy.data_ptr()}, {cs.data(), co.data(), k.data()});
  run(a, L.units());
  return {gx, gF, gy};
}

Tensor randn_at(const Tensor& seed, const Tensor& offsets) {
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() >= 1, "seed must be an int64 tensor with one element");
  TORCH_CHECK(offsets.scalar_type() == at::kLong, "offsets must be int64, got ", offsets.scalar_type());
  const Tensor o = offsets.contiguous();
  Tensor out = at::empty(o.sizes(), o.options().dtype(at::kFloat));
  const int64_t sd = seed.contiguous().const_data_ptr<int64_t>()[0];
  const auto fn = Builds::picked().randn;
  const int64_t* op = o.const_data_ptr<int64_t>();
  float* dp = out.data_ptr<float>();
  at::parallel_for(0, o.numel(), kChunk, [&](int64_t b, int64_t e) { fn(sd, op + b, dp + b, e - b); });
  return out;
}

}  // namespace burstkern::denoise::cpu
