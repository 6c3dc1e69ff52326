// The loops of the sft CPU kernels, compiled once per ISA: the includer defines BK_ISA (a namespace name) and
// BK_ISA_TABLE (the table function to define), includes <cstdint>, <cstring>, <cmath> and sft_cpu_kernels_args.h,
// then (per-ISA TUs) pushes a GCC target pragma and includes this file. Nothing here includes ATen or the standard
// library's templates, and everything lives in namespace BK_ISA, so no inline code is shared between TUs compiled
// for different ISAs.
//
// Work units (the host runs them with at::parallel_for; each unit's sums have a fixed order, and units are fixed by
// the shapes alone, so results do not depend on the thread count):
//   apply / bwd2 / bwd1 (NCHW): rows, (n, c) of HW elements or (n, hw) of C elements (channels_last);
//   stats (NCHW): (n, g) groups;  stats / bwd1 (channels_last): (n, chunk of pixels), per-channel partial sums.

namespace burstkern {
namespace sft {
namespace cpu {
namespace detail {
namespace BK_ISA {
namespace {  // internal linkage: no symbol of this ISA's code is visible to other TUs

#include "sft/sft_cpu_kernels_math.h"

constexpr int64_t kB = 256;  // elements per block of a row

// A run as compute type: the storage itself when it already is (stride 1), else converted into buf.
template <class T, class A>
static inline const A* src(const T* p, int64_t stride, int64_t m, A* buf) {
  if constexpr (std::is_same<T, A>::value) {
    if (stride == 1) return p;
  }
  load_run(p, stride, m, buf);
  return buf;
}

// Where to compute a run of output: the storage itself when it is the compute type (stride 1), else buf (then
// put() converts).
template <class T, class A>
static inline A* dst(T* p, int64_t stride, A* buf) {
  if constexpr (std::is_same<T, A>::value) {
    if (stride == 1) return p;
  }
  return buf;
}

template <class T, class A>
static inline void put(T* p, int64_t stride, int64_t m, const A* v) {
  if (static_cast<const void*>(v) != static_cast<const void*>(p)) store_run(p, stride, m, v);
}

template <class A>
static inline void zero(double* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = 0.0;
}

// ---------------------------------------------------------------------------------------------------------------
// compute blocks: only the compute type A (float / double) and the form are template parameters; the storage dtype
// lives in the row drivers' conversions (fewer instantiations, and plain restrict loops the vectoriser takes).
// Per-(n, c) coefficient pointers are already offset to the block (channels_last: one per element; NCHW: [0] is the
// row's value).
// ---------------------------------------------------------------------------------------------------------------
// forward: u = ((x − M)·A + B)·(1 + g) + t, out = act(u); TM: 0 no t, 1 spatial t (bb), 2 per-channel t (Tv)
template <class A, int ACT, bool CL, bool GSP, int TM>
void apply_cmp(int64_t m, const A* __restrict xb, const A* __restrict gb, const A* __restrict bb,
               const A* __restrict Mv, const A* __restrict Lv, const A* __restrict Av, const A* __restrict Bv,
               const A* __restrict Tv, A* __restrict ub, A slope) {
  // x − mean as (x − M) − L with M + L the mean in two parts: x − M is exact near the mean (Sterbenz), so a large
  // mean costs no precision
  if constexpr (CL) {
    for (int64_t i = 0; i < m; ++i) {
      A u = ((xb[i] - Mv[i]) - Lv[i]) * Av[i] + Bv[i];
      if constexpr (GSP) u = u * (A(1) + gb[i]);
      if constexpr (TM == 1) u = u + bb[i];
      if constexpr (TM == 2) u = u + Tv[i];
      ub[i] = act_fwd<ACT>(u, slope);
    }
  } else {
    const A ms = Mv[0], ls = Lv[0], as = Av[0], bs = Bv[0], ts = TM == 2 ? Tv[0] : A(0);
    for (int64_t i = 0; i < m; ++i) {
      A u = ((xb[i] - ms) - ls) * as + bs;
      if constexpr (GSP) u = u * (A(1) + gb[i]);
      if constexpr (TM == 1) u = u + bb[i];
      if constexpr (TM == 2) u = u + ts;
      ub[i] = act_fwd<ACT>(u, slope);
    }
  }
}

// f(integral_constant<int, ACT>, bool_constant<CL>) for the activation code act and the layout cl: the loops'
// choice of compiled variant.
template <class F>
static inline auto with_act_cl(int act, bool cl, F&& f) {
  auto with_cl = [&](auto kAct) { return cl ? f(kAct, std::true_type{}) : f(kAct, std::false_type{}); };
  switch (act) {
    case kActSilu:
      return with_cl(std::integral_constant<int, kActSilu>{});
    case kActRelu:
      return with_cl(std::integral_constant<int, kActRelu>{});
    case kActLeaky:
      return with_cl(std::integral_constant<int, kActLeaky>{});
    default:
      return with_cl(std::integral_constant<int, kActNone>{});
  }
}

template <class A>
using ApplyFn = void (*)(int64_t, const A*, const A*, const A*, const A*, const A*, const A*, const A*, const A*, A*,
                         A);

// The loop of (act, cl, gsp, tm): each is compiled once per activation, layout, spatial gamma and beta term.
template <class A>
ApplyFn<A> pick_apply(int act, bool cl, bool gsp, int tm) {
  return with_act_cl(act, cl, [&](auto kAct, auto kCl) -> ApplyFn<A> {
    constexpr int ACT = decltype(kAct)::value;
    constexpr bool CL = decltype(kCl)::value;
    if (gsp) {
      return tm == 1 ? &apply_cmp<A, ACT, CL, true, 1> : tm == 2 ? &apply_cmp<A, ACT, CL, true, 2>
                                                           : &apply_cmp<A, ACT, CL, true, 0>;
    }
    return tm == 1 ? &apply_cmp<A, ACT, CL, false, 1> : &apply_cmp<A, ACT, CL, false, 0>;
  });
}

template <class T>
void apply_rows(const ApplyArgs& a, int64_t r0, int64_t r1) {
  using A = typename CT<T>::type;
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const A* Mp = static_cast<const A*>(a.M);
  const A* Lp = static_cast<const A*>(a.Mlo);
  const A* Ap = static_cast<const A*>(a.A);
  const A* Bp = static_cast<const A*>(a.B);
  const A* Tp = static_cast<const A*>(a.Tc);
  const T* gp = static_cast<const T*>(a.g.p);
  const T* bp = static_cast<const T*>(a.bt.p);
  const A slope = static_cast<A>(a.slope);
  const bool CL = a.cl;
  const int tm = a.bt_sp ? 1 : (a.tc ? 2 : 0);
  const ApplyFn<A> fn = pick_apply<A>(a.act, CL, a.g_sp, tm);
  const int64_t L = CL ? a.C : a.HW;
  const int64_t per_n = CL ? a.HW : a.C;
  alignas(64) A xb[kB], gb[kB], bb[kB], ub[kB];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / per_n, i2 = r % per_n;  // NCHW: i2 = c; channels_last: i2 = hw
    const T* xr = x + r * L;
    T* orow = out + r * L;
    const int64_t g_off = CL ? n * a.g.sN + i2 * a.g.sHW : n * a.g.sN + i2 * a.g.sC;
    const int64_t g_st = CL ? a.g.sC : a.g.sHW;
    const int64_t b_off = CL ? n * a.bt.sN + i2 * a.bt.sHW : n * a.bt.sN + i2 * a.bt.sC;
    const int64_t b_st = CL ? a.bt.sC : a.bt.sHW;
    const int64_t base = CL ? n * a.C : r;
    for (int64_t j0 = 0; j0 < L; j0 += kB) {
      const int64_t m = mn(kB, L - j0);
      const int64_t k = CL ? base + j0 : base;
      const A* xv = src(xr + j0, int64_t(1), m, xb);
      const A* gv = a.g_sp ? src(gp + g_off + j0 * g_st, g_st, m, gb) : gb;
      const A* bv = a.bt_sp ? src(bp + b_off + j0 * b_st, b_st, m, bb) : bb;
      A* ov = dst(orow + j0, int64_t(1), ub);
      fn(m, xv, gv, bv, Mp + k, Lp + k, Ap + k, Bp + k, Tp + k, ov, slope);
      put(orow + j0, int64_t(1), m, ov);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// GroupNorm statistics: shifted sums about a pivot from the data (no cancellation for a large mean)
// ---------------------------------------------------------------------------------------------------------------
template <class A>
void shifted_sums_nchw(int64_t m, const A* __restrict xb, A p, double* __restrict s1, double* __restrict s2) {
  alignas(64) A db[kB];
  for (int64_t i = 0; i < m; ++i) db[i] = xb[i] - p;
  lane_add(s1, db, m);
  lane_add_prod(s2, db, db, m);
}

template <class A>
void shifted_sums_cl(int64_t m, const A* __restrict xb, const A* __restrict pv, double* __restrict s1,
                     double* __restrict s2) {
  for (int64_t i = 0; i < m; ++i) {
    const double d = static_cast<double>(xb[i] - pv[i]);
    s1[i] += d;
    s2[i] += d * d;
  }
}

template <class T>
void stats_units(const StatsArgs& a, int64_t u0, int64_t u1) {
  using A = typename CT<T>::type;
  const T* x = static_cast<const T*>(a.x);
  const A* piv = static_cast<const A*>(a.pivot);
  alignas(64) A xb[kB];
  const int64_t Cg = a.C / a.G;
  if (!a.cl) {
    const int64_t len = Cg * a.HW;
    for (int64_t u = u0; u < u1; ++u) {  // u = n·G + g
      const int64_t n = u / a.G, g = u % a.G;
      const T* xr = x + (n * a.C + g * Cg) * a.HW;
      const A p = piv[n * a.C + g * Cg];
      alignas(64) double s1[kLanes] = {}, s2[kLanes] = {};
      for (int64_t j0 = 0; j0 < len; j0 += kB) {
        const int64_t m = mn(kB, len - j0);
        shifted_sums_nchw<A>(m, src(xr + j0, int64_t(1), m, xb), p, s1, s2);
      }
      a.out[2 * u] = lane_total(s1);
      a.out[2 * u + 1] = lane_total(s2);
    }
  } else {
    const int64_t nchunk = (a.HW + a.chunk - 1) / a.chunk;
    for (int64_t u = u0; u < u1; ++u) {  // u = n·nchunk + chunk
      const int64_t n = u / nchunk, ch = u % nchunk;
      const int64_t hw0 = ch * a.chunk, hw1 = mn(a.HW, hw0 + a.chunk);
      double* s1 = a.out + u * 2 * a.C;
      double* s2 = s1 + a.C;
      zero<A>(s1, 2 * a.C);
      const A* pv = piv + n * a.C;
      for (int64_t hw = hw0; hw < hw1; ++hw) {
        const T* xr = x + (n * a.HW + hw) * a.C;
        for (int64_t j0 = 0; j0 < a.C; j0 += kB) {
          const int64_t m = mn(kB, a.C - j0);
          shifted_sums_cl<A>(m, src(xr + j0, int64_t(1), m, xb), pv + j0, s1 + j0, s2 + j0);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// backward pass 1: h = (x − mean)·rstd, ha = h·w + bias, u = ha·(1 + g) + t, gu = act'(u)·dy, gha = gu·(1 + g);
// sums per (n, c) of gha, gha·h, gu·ha, gu; spatial dgamma = gu·ha, dbeta = gu written in place
// ---------------------------------------------------------------------------------------------------------------
template <class A, int ACT, bool CL, bool GSP, bool BSP>
void bwd1_cmp(int64_t m, const A* __restrict xb, const A* __restrict yb, const A* __restrict gb,
              const A* __restrict bb, const A* __restrict Mv, const A* __restrict Rv, const A* __restrict Wv,
              const A* __restrict BIv, const A* __restrict G1v, const A* __restrict BTv, A* __restrict hb,
              A* __restrict hab, A* __restrict gub, A* __restrict ghb, A slope) {
  if constexpr (CL) {
    for (int64_t i = 0; i < m; ++i) {
      const A h = (xb[i] - Mv[i]) * Rv[i];
      const A ha = h * Wv[i] + BIv[i];
      const A g1 = GSP ? A(1) + gb[i] : G1v[i];
      const A t = BSP ? bb[i] : BTv[i];
      const A gu = act_bwd<ACT>(ha * g1 + t, yb[i], slope);
      hb[i] = h;
      hab[i] = ha;
      gub[i] = gu;
      ghb[i] = gu * g1;
    }
  } else {
    const A ms = Mv[0], rs = Rv[0], ws = Wv[0], bis = BIv[0], g1s = G1v[0], ts = BTv[0];
    for (int64_t i = 0; i < m; ++i) {
      const A h = (xb[i] - ms) * rs;
      const A ha = h * ws + bis;
      const A g1 = GSP ? A(1) + gb[i] : g1s;
      const A t = BSP ? bb[i] : ts;
      const A gu = act_bwd<ACT>(ha * g1 + t, yb[i], slope);
      hb[i] = h;
      hab[i] = ha;
      gub[i] = gu;
      ghb[i] = gu * g1;
    }
  }
}

template <class A>
using Bwd1Fn = void (*)(int64_t, const A*, const A*, const A*, const A*, const A*, const A*, const A*, const A*,
                        const A*, const A*, A*, A*, A*, A*, A);

template <class A>
Bwd1Fn<A> pick_bwd1(int act, bool cl, bool gsp, bool bsp) {
  return with_act_cl(act, cl, [&](auto kAct, auto kCl) -> Bwd1Fn<A> {
    constexpr int ACT = decltype(kAct)::value;
    constexpr bool CL = decltype(kCl)::value;
    if (gsp) return bsp ? &bwd1_cmp<A, ACT, CL, true, true> : &bwd1_cmp<A, ACT, CL, true, false>;
    return bsp ? &bwd1_cmp<A, ACT, CL, false, true> : &bwd1_cmp<A, ACT, CL, false, false>;
  });
}

template <class A>
void mul_into(int64_t m, const A* __restrict a, const A* __restrict b, A* __restrict o) {
  for (int64_t i = 0; i < m; ++i) o[i] = a[i] * b[i];
}

template <class A>
void copy_into(int64_t m, const A* __restrict a, A* __restrict o) {
  for (int64_t i = 0; i < m; ++i) o[i] = a[i];
}

template <class A>
void cl_sums(int64_t m, bool gn, const A* __restrict ghb, const A* __restrict hb, const A* __restrict gub,
             const A* __restrict hab, double* __restrict s0, double* __restrict s1, double* __restrict s2,
             double* __restrict s3) {
  if (gn) {
    for (int64_t i = 0; i < m; ++i) {
      s0[i] += static_cast<double>(ghb[i]);
      s1[i] += static_cast<double>(ghb[i]) * static_cast<double>(hb[i]);
    }
  }
  for (int64_t i = 0; i < m; ++i) {
    s2[i] += static_cast<double>(gub[i]) * static_cast<double>(hab[i]);
    s3[i] += static_cast<double>(gub[i]);
  }
}

template <class T>
void bwd1_units(const Bwd1Args& a, int64_t u0, int64_t u1) {
  using A = typename CT<T>::type;
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  const T* gp = static_cast<const T*>(a.g.p);
  const T* bp = static_cast<const T*>(a.bt.p);
  T* dgp = static_cast<T*>(const_cast<void*>(a.dg.p));
  T* dbp = static_cast<T*>(const_cast<void*>(a.db.p));
  const A* meanp = static_cast<const A*>(a.mean);
  const A* rp = static_cast<const A*>(a.rstd);
  const A* wp = static_cast<const A*>(a.w);
  const A* biasp = static_cast<const A*>(a.bias);
  const A* g1p = static_cast<const A*>(a.g1c);
  const A* btp = static_cast<const A*>(a.btc);
  const A slope = static_cast<A>(a.slope);
  const bool CL = a.cl;
  const Bwd1Fn<A> fn = pick_bwd1<A>(a.act, CL, a.g_sp, a.bt_sp);
  alignas(64) A xb[kB], yb[kB], gb[kB], bb[kB], hb[kB], hab[kB], gub[kB], ghb[kB], tmp[kB];
  const int64_t L = CL ? a.C : a.HW;
  // one block of one row: loads, the element math, the stores of gha / dgamma / dbeta
  auto block = [&](int64_t r, int64_t n, int64_t i2, int64_t j0, int64_t m) {
    const int64_t g_off = CL ? n * a.g.sN + i2 * a.g.sHW : n * a.g.sN + i2 * a.g.sC;
    const int64_t g_st = CL ? a.g.sC : a.g.sHW;
    const int64_t b_off = CL ? n * a.bt.sN + i2 * a.bt.sHW : n * a.bt.sN + i2 * a.bt.sC;
    const int64_t b_st = CL ? a.bt.sC : a.bt.sHW;
    const int64_t k = CL ? n * a.C + j0 : r;
    const A* xv = src(x + r * L + j0, int64_t(1), m, xb);
    const A* yv = src(dy + r * L + j0, int64_t(1), m, yb);
    const A* gv = a.g_sp ? src(gp + g_off + j0 * g_st, g_st, m, gb) : gb;
    const A* bv = a.bt_sp ? src(bp + b_off + j0 * b_st, b_st, m, bb) : bb;
    fn(m, xv, yv, gv, bv, meanp + k, rp + k, wp + k, biasp + k, g1p + k, btp + k, hb, hab, gub, ghb, slope);
    if (a.gn) {
      copy_into<A>(m, ghb, static_cast<A*>(a.gha) + r * L + j0);
    } else {
      store_run(static_cast<T*>(a.gha) + r * L + j0, int64_t(1), m, ghb);
    }
    if (a.write_dg) {
      const int64_t off = CL ? n * a.dg.sN + i2 * a.dg.sHW : n * a.dg.sN + i2 * a.dg.sC;
      const int64_t st = CL ? a.dg.sC : a.dg.sHW;
      mul_into<A>(m, gub, hab, tmp);
      store_run(dgp + off + j0 * st, st, m, tmp);
    }
    if (a.write_db) {
      const int64_t off = CL ? n * a.db.sN + i2 * a.db.sHW : n * a.db.sN + i2 * a.db.sC;
      const int64_t st = CL ? a.db.sC : a.db.sHW;
      store_run(dbp + off + j0 * st, st, m, gub);
    }
  };
  if (!CL) {
    for (int64_t r = u0; r < u1; ++r) {
      const int64_t n = r / a.C, c = r % a.C;
      alignas(64) double s0[kLanes] = {}, s1[kLanes] = {}, s2[kLanes] = {}, s3[kLanes] = {};
      for (int64_t j0 = 0; j0 < L; j0 += kB) {
        const int64_t m = mn(kB, L - j0);
        block(r, n, c, j0, m);
        if (a.gn) {
          lane_add(s0, ghb, m);
          lane_add_prod(s1, ghb, hb, m);
        }
        lane_add_prod(s2, gub, hab, m);
        lane_add(s3, gub, m);
      }
      double* o = a.sums + 4 * r;
      o[0] = lane_total(s0);
      o[1] = lane_total(s1);
      o[2] = lane_total(s2);
      o[3] = lane_total(s3);
    }
  } else {
    const int64_t nchunk = (a.HW + a.chunk - 1) / a.chunk;
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t n = u / nchunk, ch = u % nchunk;
      const int64_t hw0 = ch * a.chunk, hw1 = mn(a.HW, hw0 + a.chunk);
      double* s0 = a.sums + u * 4 * a.C;
      double *s1 = s0 + a.C, *s2 = s1 + a.C, *s3 = s2 + a.C;
      zero<A>(s0, 4 * a.C);
      for (int64_t hw = hw0; hw < hw1; ++hw) {
        for (int64_t j0 = 0; j0 < L; j0 += kB) {
          const int64_t m = mn(kB, L - j0);
          block(n * a.HW + hw, n, hw, j0, m);
          cl_sums<A>(m, a.gn, ghb, hb, gub, hab, s0 + j0, s1 + j0, s2 + j0, s3 + j0);
        }
      }
    }
  }
}

// backward pass 2: dx = P·gha + Q + R·(x − mean)
template <class A, bool CL>
void bwd2_cmp(int64_t m, const A* __restrict xb, const A* __restrict gr, const A* __restrict P,
              const A* __restrict Q, const A* __restrict R, const A* __restrict M, A* __restrict ob) {
  if constexpr (CL) {
    for (int64_t i = 0; i < m; ++i) ob[i] = P[i] * gr[i] + Q[i] + R[i] * (xb[i] - M[i]);
  } else {
    const A p = P[0], q = Q[0], rr = R[0], mm = M[0];
    for (int64_t i = 0; i < m; ++i) ob[i] = p * gr[i] + q + rr * (xb[i] - mm);
  }
}

template <class T>
void bwd2_rows(const Bwd2Args& a, int64_t r0, int64_t r1) {
  using A = typename CT<T>::type;
  const T* x = static_cast<const T*>(a.x);
  const A* gha = static_cast<const A*>(a.gha);
  T* dx = static_cast<T*>(a.dx);
  const A *P = static_cast<const A*>(a.P), *Q = static_cast<const A*>(a.Q), *R = static_cast<const A*>(a.R);
  const A* M = static_cast<const A*>(a.mean);
  const bool CL = a.cl;
  const int64_t L = CL ? a.C : a.HW;
  const int64_t per_n = CL ? a.HW : a.C;
  alignas(64) A xb[kB], ob[kB];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / per_n;
    for (int64_t j0 = 0; j0 < L; j0 += kB) {
      const int64_t m = mn(kB, L - j0);
      const int64_t k = CL ? n * a.C + j0 : r;
      const A* xv = src(x + r * L + j0, int64_t(1), m, xb);
      const A* gv = gha + r * L + j0;  // may be dx itself: the result goes through ob
      if (CL) {
        bwd2_cmp<A, true>(m, xv, gv, P + k, Q + k, R + k, M + k, ob);
      } else {
        bwd2_cmp<A, false>(m, xv, gv, P + k, Q + k, R + k, M + k, ob);
      }
      store_run(dx + r * L + j0, int64_t(1), m, ob);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// dispatch on the storage dtype (fp64 runs in the default build only: the host never hands it to another table)
// ---------------------------------------------------------------------------------------------------------------
template <class F>
static inline void with_dt(int dt, F&& f) {
  switch (dt) {
#if BK_ISA_FP64
    case kF64:
      f(static_cast<double*>(nullptr));
      break;
#endif
    case kF16:
      f(static_cast<f16s*>(nullptr));
      break;
    case kBF16:
      f(static_cast<bf16s*>(nullptr));
      break;
    default:
      f(static_cast<float*>(nullptr));
  }
}

void apply_entry(const ApplyArgs& a, int64_t r0, int64_t r1) {
  with_dt(a.dt, [&](auto* tp) { apply_rows<typename std::remove_pointer<decltype(tp)>::type>(a, r0, r1); });
}

void stats_entry(const StatsArgs& a, int64_t u0, int64_t u1) {
  with_dt(a.dt, [&](auto* tp) { stats_units<typename std::remove_pointer<decltype(tp)>::type>(a, u0, u1); });
}

void bwd1_entry(const Bwd1Args& a, int64_t u0, int64_t u1) {
  with_dt(a.dt, [&](auto* tp) { bwd1_units<typename std::remove_pointer<decltype(tp)>::type>(a, u0, u1); });
}

void bwd2_entry(const Bwd2Args& a, int64_t r0, int64_t r1) {
  with_dt(a.dt, [&](auto* tp) { bwd2_rows<typename std::remove_pointer<decltype(tp)>::type>(a, r0, r1); });
}

}  // namespace
}  // namespace BK_ISA

const Table& BK_ISA_TABLE() {
  static const Table t{BK_ISA_NAME, &BK_ISA::apply_entry, &BK_ISA::stats_entry, &BK_ISA::bwd1_entry,
                       &BK_ISA::bwd2_entry};
  return t;
}

}  // namespace detail
}  // namespace cpu
}  // namespace sft
}  // namespace burstkern
