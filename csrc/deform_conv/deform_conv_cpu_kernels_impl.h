// Implementation of the deform_conv2d CPU kernels (deform_conv_cpu_kernels.h), included once per vector path:
// deform_conv_cpu_kernels.cpp (portable: BK_DCN_ISA = base), deform_conv_cpu_kernels_avx2.cpp and _avx512.cpp
// (the same code under `#pragma GCC target`, x86-64 only). Each inclusion puts the kernels in a namespace of its own
// (cpu::BK_DCN_ISA), so the three compilations never share a symbol; the headers they use are included before the
// target pragma (the section guarded by BK_DCN_IMPL_COMMON_H), so no ATen/std inline function is compiled with a
// wider target than the default.
//
// Semantics (torchvision.ops.deform_conv2d's CPU kernel, exactly, including NaN / inf offsets):
//   sample point (y, x) = base grid + offset, in the math dtype (fp64 for double, fp32 otherwise).
//   forward value: 0 if y <= -1 || y >= H || x <= -1 || x >= W (so 0 for +-inf), NaN if y or x is NaN (otherwise),
//                  else bilinear with corners outside the image counting 0; column = mask * value.
//   grad offset (dy): mask * sum_c gcol_c * d(value_c)/dy, with the derivative of the corner formula (one-sided at
//                  y == -1 / x == -1 exactly, as torchvision); torchvision's get_coordinate_weight turns it into NaN
//                  when x is +-inf / NaN (and grad dx when y is), whatever the corners: so here.
//   grad mask: sum_c gcol_c * value_c;  grad input: scatter of mask * corner weight * gcol_c (none for NaN / inf).
// Sampling reads a zero-padded, channels-last copy of the sample ((H+3) x (W+2) pixels, image at (1, 1)): every
// corner of a point with y in [-1, H) and x in [-1, W) lies inside it (outside-image corners read the zero border)
// and any other point reads an all-zero 2x2 patch (row H+1, column 0) with weights 0 (or NaN), so the inner loops
// have no branches and no bounds checks. Grad input scatters into a padded accumulator of the same shape whose
// border is dropped.
#ifndef BK_DCN_IMPL_COMMON_H
#define BK_DCN_IMPL_COMMON_H

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/cpu_gemm.h"
#include "common/serial_blas.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace burstkern {
namespace deform_conv {
namespace cpu {

struct Geo {
  int64_t N, Cin, H, W, Cout, Ho, Wo, P;
  int64_t groups, cin_g, cout_g, og, cpg;
  int64_t kh, kw, K, sh, sw, ph, pw, dh, dw;
  int64_t Hp, Wp, KC, KCg;  // padded plane; columns per pixel (all groups / one weight group)
  int64_t Pb, nblocks, S;   // pixels per block, blocks per sample, slots (work units) per sample
};

// A run of channels sharing an offset group and a weight group: channels [c0, c0 + len) of offset group og; their
// columns start at col + tap * cin_g within a pixel's KC columns (column order: weight group, tap, channel).
struct Run {
  int64_t og, c0, len, col;
};

inline at::MemoryFormat out_format(const at::Tensor& x) {
  return (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ? at::MemoryFormat::ChannelsLast
                                                                                 : at::MemoryFormat::Contiguous;
}

inline int64_t env_int(const char* name, int64_t dflt) {
  const char* v = std::getenv(name);
  return (v && *v) ? std::atoll(v) : dflt;
}

inline Geo make_geo(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight, int64_t sh,
                    int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
  Geo g{};
  g.N = input.size(0);
  g.Cin = input.size(1);
  g.H = input.size(2);
  g.W = input.size(3);
  g.Cout = weight.size(0);
  g.cin_g = weight.size(1);
  g.kh = weight.size(2);
  g.kw = weight.size(3);
  g.K = g.kh * g.kw;
  g.groups = g.Cin / g.cin_g;
  g.cout_g = g.Cout / g.groups;
  g.og = offset.size(1) / (2 * g.K);
  g.cpg = g.Cin / g.og;
  g.sh = sh, g.sw = sw, g.ph = ph, g.pw = pw, g.dh = dh, g.dw = dw;
  g.Ho = offset.size(2);
  g.Wo = offset.size(3);
  g.P = g.Ho * g.Wo;
  g.Hp = g.H + 3;
  g.Wp = g.W + 2;
  g.KC = g.Cin * g.K;
  g.KCg = g.cin_g * g.K;
  // block: about 128 Ki column elements (512 KiB in fp32: the block's columns stay in L2 for the GEMM)
  const int64_t target = env_int("BURSTKERN_DCN_BLOCK_ELEMS", 1 << 17);
  int64_t pb = std::max<int64_t>(16, target / std::max<int64_t>(1, g.KC));
  pb = (pb + 15) / 16 * 16;
  g.Pb = std::min(pb, g.P);
  g.nblocks = (g.P + g.Pb - 1) / g.Pb;
  // work units per sample: a fixed function of the shape (never of the thread count), >= 4 units in all when the
  // blocks allow, so a small batch still spreads over threads; each unit owns its grad-input accumulator
  const int64_t want = g.N >= 4 ? 1 : (4 + g.N - 1) / std::max<int64_t>(1, g.N);
  g.S = std::max<int64_t>(1, std::min(want, g.nblocks));
  return g;
}

inline std::vector<Run> make_runs(const Geo& g) {
  std::vector<Run> runs;
  for (int64_t o = 0; o < g.og; ++o) {
    int64_t c = o * g.cpg;
    const int64_t end = c + g.cpg;
    while (c < end) {
      const int64_t grp = c / g.cin_g;
      const int64_t stop = std::min(end, (grp + 1) * g.cin_g);
      runs.push_back({o, c, stop - c, grp * g.KCg + (c - grp * g.cin_g)});
      c = stop;
    }
  }
  return runs;
}

}  // namespace cpu
}  // namespace deform_conv
}  // namespace burstkern

#endif  // BK_DCN_IMPL_COMMON_H

#ifndef BK_DCN_TYPES_ONLY
#ifndef BK_DCN_ISA
#error "define BK_DCN_ISA (the vector path's namespace) before including deform_conv_cpu_kernels_impl.h"
#endif

#ifdef BK_DCN_USE_FMA
#define BK_DCN_FMA(a, b, c) __builtin_fma((a), (b), (c))
#define BK_DCN_FMAF(a, b, c) __builtin_fmaf((a), (b), (c))
#else
#define BK_DCN_FMA(a, b, c) ((a) * (b) + (c))
#define BK_DCN_FMAF(a, b, c) ((a) * (b) + (c))
#endif

namespace burstkern {
namespace deform_conv {
namespace cpu {
namespace BK_DCN_ISA {

template <typename A>
inline A fma_(A a, A b, A c) {
  if constexpr (std::is_same_v<A, float>) {
    return BK_DCN_FMAF(a, b, c);
  } else {
    return BK_DCN_FMA(a, b, c);
  }
}

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Per (offset group, tap) stencil of a block's pixels, structure of arrays.
template <typename A>
struct Sten {
  int64_t* idx;           // element offset of the top-left corner in the padded channels-last plane
  A *w00, *w01, *w10, *w11;  // bilinear weights (unmasked; 0 / NaN for points outside, see the header)
  A* m;                   // mask
  A *hx, *lx, *hy, *ly;   // coefficients of the offset derivatives (backward only)
};

// Storage of `count` stencils of up to pb pixels each, every one padded to a multiple of kLanes pixels so that the
// vector loop of stencil() may run whole vectors past pb (its lanes beyond pb are never read).
constexpr int64_t kLanes = 16;

template <typename A>
struct StenStore {
  std::vector<int64_t> idx;
  std::vector<A> v, scratch;
  int64_t n = 0, stride = 0;
  void reset(int64_t count, int64_t pb) {
    stride = (pb + kLanes - 1) / kLanes * kLanes;
    n = count * stride;
    idx.assign(static_cast<size_t>(n), 0);
    v.assign(static_cast<size_t>(n * 9), A(0));
    scratch.assign(static_cast<size_t>(3 * stride), A(0));
  }
  Sten<A> at(int64_t k) {
    const int64_t o = k * stride;
    A* b = v.data();
    return {idx.data() + o, b + o, b + n + o, b + 2 * n + o, b + 3 * n + o, b + 4 * n + o,
            b + 5 * n + o, b + 6 * n + o, b + 7 * n + o, b + 8 * n + o};
  }
};

template <typename T>
struct Src {  // a 4-D tensor's data and strides, sample n
  const T* p;
  int64_t sn, sc, sh, sw;
};

template <typename T>
inline Src<T> src_of(const at::Tensor& t) {
  return {t.const_data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// The fp32 stencil loop in GCC vector types, 16 pixels a step (compiled to the TU's widest registers: one zmm, two
// ymm or four xmm), the same arithmetic as the scalar loop in stencil() below, which GCC does not vectorise (the
// int64 corner index). floor() of the clamped coordinate (in [-1, max(H, W))) is its truncation minus one where the
// truncation lies above it. Needs (H+3)(W+2) < 2^31 (the pixel index in int32 lanes); stencil() checks.
typedef float vf16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef int64_t vl16 __attribute__((vector_size(128)));

template <bool BWD>
inline void stencil_vec(const Geo& g, const float* pyb, const float* pxb, const float* mb, int64_t pb,
                        const Sten<float>& s) {
  const vf16 Hf = vf16{} + static_cast<float>(g.H), Wf = vf16{} + static_cast<float>(g.W);
  const vf16 one = vf16{} + 1.f, neg1 = vf16{} - 1.f, zerof = vf16{};
  const vf16 nan = vf16{} + std::numeric_limits<float>::quiet_NaN();
  const vi16 Wp = vi16{} + static_cast<int32_t>(g.Wp), zero_pix = vi16{} + static_cast<int32_t>((g.H + 1) * g.Wp);
  const vl16 C = vl16{} + g.Cin;
  for (int64_t k = 0; k < pb; k += kLanes) {
    vf16 py, px, m;
    std::memcpy(&py, pyb + k, sizeof py);
    std::memcpy(&px, pxb + k, sizeof px);
    std::memcpy(&m, mb + k, sizeof m);
    const vi16 real = (py >= neg1) & (py < Hf) & (px >= neg1) & (px < Wf);
    const vf16 pyc = real ? py : zerof, pxc = real ? px : zerof;
    const vi16 ty = __builtin_convertvector(pyc, vi16), tx = __builtin_convertvector(pxc, vi16);
    const vi16 y0 = ty + (__builtin_convertvector(ty, vf16) > pyc);  // comparison lanes are -1 / 0
    const vi16 x0 = tx + (__builtin_convertvector(tx, vf16) > pxc);
    const vf16 ly = pyc - __builtin_convertvector(y0, vf16), lx = pxc - __builtin_convertvector(x0, vf16);
    const vf16 hy = one - ly, hx = one - lx;
    const vi16 zero = (py <= neg1) | (py >= Hf) | (px <= neg1) | (px >= Wf);
    const vf16 fill = zero ? zerof : nan;
    const vi16 pix = real ? (y0 + 1) * Wp + (x0 + 1) : zero_pix;
    const vl16 e = __builtin_convertvector(pix, vl16) * C;
    // forward: the weights come premultiplied by the mask (the columns are mask * value); backward keeps them apart
    const vf16 wm = BWD ? one : m;
    const vf16 w00 = (real ? hy * hx : fill) * wm, w01 = (real ? hy * lx : fill) * wm;
    const vf16 w10 = (real ? ly * hx : fill) * wm, w11 = (real ? ly * lx : fill) * wm;
    std::memcpy(s.idx + k, &e, sizeof e);
    std::memcpy(s.w00 + k, &w00, sizeof w00);
    std::memcpy(s.w01 + k, &w01, sizeof w01);
    std::memcpy(s.w10 + k, &w10, sizeof w10);
    std::memcpy(s.w11 + k, &w11, sizeof w11);
    std::memcpy(s.m + k, &m, sizeof m);
    if constexpr (BWD) {
      // outside: 0, or NaN where the coordinate is not finite (x - x is NaN exactly for +-inf / NaN)
      const vf16 fx = ((px - px) == zerof) ? zerof : nan, fy = ((py - py) == zerof) ? zerof : nan;
      const vf16 hxo = real ? hx : fx, lxo = real ? lx : fx, hyo = real ? hy : fy, lyo = real ? ly : fy;
      std::memcpy(s.hx + k, &hxo, sizeof hxo);
      std::memcpy(s.lx + k, &lxo, sizeof lxo);
      std::memcpy(s.hy + k, &hyo, sizeof hyo);
      std::memcpy(s.ly + k, &lyo, sizeof lyo);
    }
  }
}

// Stencil of pixels [p0, p0 + pb) for offset group o, tap `tap`: the sample points are gathered into contiguous
// scratch (py, px, mask: 3 * pb values), then one branch-free loop over them (vectorised) makes the stencil.
template <typename T, typename A, bool BWD>
void stencil(const Geo& g, const Src<T>& off, const Src<T>* msk, int64_t n, int64_t o, int64_t tap, int64_t p0,
             int64_t pb, const Sten<A>& s, A* scratch) {
  const int64_t i = tap / g.kw, j = tap % g.kw;
  const T* offy = off.p + n * off.sn + 2 * (o * g.K + tap) * off.sc;
  const T* offx = offy + off.sc;
  const T* mk = msk ? msk->p + n * msk->sn + (o * g.K + tap) * msk->sc : nullptr;
  A* __restrict pyb = scratch;
  A* __restrict pxb = scratch + pb;
  A* __restrict mb = scratch + 2 * pb;
  {
    const bool small_x = g.Wo * g.sw + g.kw * g.dw + g.pw < (int64_t(1) << 31);
    int64_t q = 0, ho = p0 / g.Wo, wo0 = p0 % g.Wo;
    while (q < pb) {
      const int64_t seg = std::min(pb - q, g.Wo - wo0);
      const A by = static_cast<A>(ho * g.sh - g.ph + i * g.dh);
      const T* oy = offy + ho * off.sh + wo0 * off.sw;
      const T* ox = offx + ho * off.sh + wo0 * off.sw;
      const int64_t bx0 = wo0 * g.sw - g.pw + j * g.dw;
      if (off.sw == 1 && small_x) {  // the column coordinate in int32 lanes (int64 multiply and convert are slow)
        const int32_t bx = static_cast<int32_t>(bx0), sx = static_cast<int32_t>(g.sw);
        for (int32_t t = 0; t < static_cast<int32_t>(seg); ++t) {
          pyb[q + t] = by + static_cast<A>(oy[t]);
          pxb[q + t] = static_cast<A>(bx + t * sx) + static_cast<A>(ox[t]);
        }
      } else if (off.sw == 1) {
        for (int64_t t = 0; t < seg; ++t) {
          pyb[q + t] = by + static_cast<A>(oy[t]);
          pxb[q + t] = static_cast<A>(bx0 + t * g.sw) + static_cast<A>(ox[t]);
        }
      } else {
        for (int64_t t = 0; t < seg; ++t) {
          pyb[q + t] = by + static_cast<A>(oy[t * off.sw]);
          pxb[q + t] = static_cast<A>(bx0 + t * g.sw) + static_cast<A>(ox[t * off.sw]);
        }
      }
      if (mk) {
        const T* mr = mk + ho * msk->sh + wo0 * msk->sw;
        for (int64_t t = 0; t < seg; ++t) mb[q + t] = static_cast<A>(mr[t * msk->sw]);
      } else {
        for (int64_t t = 0; t < seg; ++t) mb[q + t] = A(1);
      }
      q += seg;
      wo0 = 0;
      ++ho;
    }
  }
  const A Hf = static_cast<A>(g.H), Wf = static_cast<A>(g.W);
  const A nan = std::numeric_limits<A>::quiet_NaN();
  const int64_t zero_idx = (g.H + 1) * g.Wp * g.Cin;
  const int64_t C = g.Cin, WpC = g.Wp * g.Cin;
  if constexpr (std::is_same_v<A, float>) {
    if (g.Hp * g.Wp < (int64_t(1) << 31)) {
      stencil_vec<BWD>(g, pyb, pxb, mb, pb, s);
      return;
    }
  }
  int64_t* __restrict idx = s.idx;
  A* __restrict w00 = s.w00;
  A* __restrict w01 = s.w01;
  A* __restrict w10 = s.w10;
  A* __restrict w11 = s.w11;
  A* __restrict mm = s.m;
  for (int64_t k = 0; k < pb; ++k) {
    const A py = pyb[k], px = pxb[k];
    const bool real = (py >= A(-1)) & (py < Hf) & (px >= A(-1)) & (px < Wf);
    const A pyc = real ? py : A(0), pxc = real ? px : A(0);
    const A y0 = std::floor(pyc), x0 = std::floor(pxc);
    const A ly = pyc - y0, lx = pxc - x0;
    const A hy = A(1) - ly, hx = A(1) - lx;
    const bool zero = (py <= A(-1)) | (py >= Hf) | (px <= A(-1)) | (px >= Wf);
    const A fill = zero ? A(0) : nan;
    const int64_t e = (static_cast<int64_t>(static_cast<int32_t>(y0)) + 1) * WpC +
                      (static_cast<int64_t>(static_cast<int32_t>(x0)) + 1) * C;
    idx[k] = real ? e : zero_idx;
    const A wm = BWD ? A(1) : mb[k];  // forward: premultiplied by the mask, as in stencil_vec
    w00[k] = (real ? hy * hx : fill) * wm;
    w01[k] = (real ? hy * lx : fill) * wm;
    w10[k] = (real ? ly * hx : fill) * wm;
    w11[k] = (real ? ly * lx : fill) * wm;
    mm[k] = mb[k];
    if constexpr (BWD) {
      // outside: 0, or NaN where the coordinate is not finite (x - x is NaN exactly for +-inf / NaN)
      const A fx = (px - px) == A(0) ? A(0) : nan, fy = (py - py) == A(0) ? A(0) : nan;
      s.hx[k] = real ? hx : fx;
      s.lx[k] = real ? lx : fx;
      s.hy[k] = real ? hy : fy;
      s.ly[k] = real ? ly : fy;
    }
  }
}

// Software prefetch (into L2) of the offset and mask rows stencil() reads for tap `tap` of the pixels
// [p0, p0 + pb) of sample n, offset groups [o0, o1): issued one stencil ahead. Why: a block reads 3·og·K short rows (one
// per offset / mask channel, pb values each, 15 lines for pb = 240 in fp32), too short for the hardware prefetcher
// to follow, so without it each row starts with a DRAM miss (measured: the gather of stencil() was 7% of the
// N8 C64 48² og8 forward, mostly stalled on those misses). Rows whose pixels are not unit-stride are left alone.
template <typename T>
inline void prefetch_tap(const Geo& g, const Src<T>& off, const Src<T>* msk, int64_t n, int64_t o0, int64_t o1,
                         int64_t tap, int64_t p0, int64_t pb) {
  if (off.sw != 1 || (msk && msk->sw != 1)) return;
  constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));
  auto rows = [&](const T* base, int64_t sh) {
    int64_t q = 0, ho = p0 / g.Wo, wo0 = p0 % g.Wo;
    while (q < pb) {
      const int64_t seg = std::min(pb - q, g.Wo - wo0);
      const T* r = base + ho * sh + wo0;
      for (int64_t t = 0; t < seg; t += kLine) __builtin_prefetch(r + t, 0, 2);
      __builtin_prefetch(r + seg - 1, 0, 2);
      q += seg;
      wo0 = 0;
      ++ho;
    }
  };
  for (int64_t o = o0; o < o1; ++o) {
    const T* offy = off.p + n * off.sn + 2 * (o * g.K + tap) * off.sc;
    rows(offy, off.sh);
    rows(offy + off.sc, off.sh);
    if (msk) rows(msk->p + n * msk->sn + (o * g.K + tap) * msk->sc, msk->sh);
  }
}

// L channels of one sample point: dst = a*x0 + b*x0[+C] + c*x1 + d*x1[+C] (x1: the next row). Restrict-qualified
// parameters tell the vectoriser that the column, the input and the accumulators never alias.
template <typename A, int L>
inline void lerp_chunk(A* __restrict dst, const A* __restrict x0, const A* __restrict x1, int64_t C, A a, A b, A c,
                       A d) {
  for (int l = 0; l < L; ++l) dst[l] = fma_(d, x1[l + C], fma_(c, x1[l], fma_(b, x0[l + C], a * x0[l])));
}

template <typename A>
inline void lerp_tail(A* __restrict dst, const A* __restrict x0, const A* __restrict x1, int64_t C, A a, A b, A c,
                      A d, int64_t len) {
  for (int64_t l = 0; l < len; ++l) dst[l] = fma_(d, x1[l + C], fma_(c, x1[l], fma_(b, x0[l + C], a * x0[l])));
}

// A run of len channels: 16-, 8- and 4-lane chunks, then the tail.
template <typename A>
inline void lerp_run(A* __restrict dst, const A* __restrict x0, const A* __restrict x1, int64_t C, A a, A b, A c,
                     A d, int64_t len) {
  int64_t ch = 0;
  for (; ch + 16 <= len; ch += 16) lerp_chunk<A, 16>(dst + ch, x0 + ch, x1 + ch, C, a, b, c, d);
  if (ch + 8 <= len) {
    lerp_chunk<A, 8>(dst + ch, x0 + ch, x1 + ch, C, a, b, c, d);
    ch += 8;
  }
  if (ch + 4 <= len) {
    lerp_chunk<A, 4>(dst + ch, x0 + ch, x1 + ch, C, a, b, c, d);
    ch += 4;
  }
  if (ch < len) lerp_tail<A>(dst + ch, x0 + ch, x1 + ch, C, a, b, c, d, len - ch);
}

// Backward of L channels: t.. += gcol * corner value (per lane), grad input corners += weight * gcol.
template <typename A, int L>
inline void back_chunk(const A* __restrict gc, const A* __restrict x0, const A* __restrict x1, A* __restrict g0,
                       A* __restrict g1, int64_t C, A a, A b, A c, A d, A* __restrict t00, A* __restrict t01,
                       A* __restrict t10, A* __restrict t11) {
  for (int l = 0; l < L; ++l) {
    const A v = gc[l];
    t00[l] = fma_(v, x0[l], t00[l]);
    t01[l] = fma_(v, x0[l + C], t01[l]);
    t10[l] = fma_(v, x1[l], t10[l]);
    t11[l] = fma_(v, x1[l + C], t11[l]);
    g0[l] = fma_(a, v, g0[l]);
    g0[l + C] = fma_(b, v, g0[l + C]);
    g1[l] = fma_(c, v, g1[l]);
    g1[l + C] = fma_(d, v, g1[l + C]);
  }
}

// Modulated columns of one (offset group, tap) for the block: colT[q * KC + run.col + tap * cin_g + c].
template <typename A>
void sample(const Geo& g, const A* xp, const Sten<A>& s, const Run* runs, int64_t nruns, int64_t tap, int64_t pb,
            A* colT) {
  const int64_t C = g.Cin, WpC = g.Wp * g.Cin;
  for (int64_t r = 0; r < nruns; ++r) {
    const Run& run = runs[r];
    const int64_t len = run.len;
    A* dst0 = colT + run.col + tap * g.cin_g;
    const A* src0 = xp + run.c0;
    for (int64_t q = 0; q < pb; ++q) {
      const A m = s.m[q];
      const A a = m * s.w00[q], b = m * s.w01[q], c = m * s.w10[q], d = m * s.w11[q];
      const A* x0 = src0 + s.idx[q];
      const A* x1 = x0 + WpC;
      A* dst = dst0 + q * g.KC;
      lerp_run<A>(dst, x0, x1, C, a, b, c, d, len);
    }
  }
}

// Modulated columns of one tap for the block, every offset group at once: pixel by pixel, so each pixel's columns
// of the tap (a contiguous span when groups == 1) are written in one go instead of one offset group's slice per pass
// over the block; st.at(o) holds offset group o's stencil of this tap, its weights premultiplied by the mask.
// L > 0: every run is L channels long (compile-time inner loop); L == 0: any lengths.
template <typename A, int L>
void sample_tap_runs(const Geo& g, const A* xp, const Sten<A>* sv, const Run* runs, int64_t nruns, int64_t tap,
                     int64_t pb, A* colT) {
  const int64_t C = g.Cin, WpC = g.Wp * g.Cin;
  for (int64_t q = 0; q < pb; ++q) {
    A* dstq = colT + q * g.KC + tap * g.cin_g;
    for (int64_t r = 0; r < nruns; ++r) {
      const Run& run = runs[r];
      const Sten<A>& s = sv[run.og];
      const A a = s.w00[q], b = s.w01[q], c = s.w10[q], d = s.w11[q];
      const A* x0 = xp + run.c0 + s.idx[q];
      const A* x1 = x0 + WpC;
      A* dst = dstq + run.col;
      if constexpr (L > 0) {
        lerp_chunk<A, L>(dst, x0, x1, C, a, b, c, d);
      } else {
        lerp_run<A>(dst, x0, x1, C, a, b, c, d, run.len);
      }
    }
  }
}

template <typename A>
void sample_tap(const Geo& g, const A* xp, StenStore<A>& st, const std::vector<Run>& runs, int64_t tap, int64_t pb,
                A* colT) {
  std::vector<Sten<A>> sv(static_cast<size_t>(g.og));
  for (int64_t o = 0; o < g.og; ++o) sv[static_cast<size_t>(o)] = st.at(o);
  const int64_t len = runs.front().len, nr = static_cast<int64_t>(runs.size());
  bool uniform = true;
  for (const Run& r : runs) uniform &= r.len == len;
  if (uniform && len == 8) return sample_tap_runs<A, 8>(g, xp, sv.data(), runs.data(), nr, tap, pb, colT);
  if (uniform && len == 16) return sample_tap_runs<A, 16>(g, xp, sv.data(), runs.data(), nr, tap, pb, colT);
  if (uniform && len == 4) return sample_tap_runs<A, 4>(g, xp, sv.data(), runs.data(), nr, tap, pb, colT);
  // 48 or 96 channels in 8 offset groups (the paper preset's encoder at C = 48)
  if (uniform && len == 6) return sample_tap_runs<A, 6>(g, xp, sv.data(), runs.data(), nr, tap, pb, colT);
  if (uniform && len == 12) return sample_tap_runs<A, 12>(g, xp, sv.data(), runs.data(), nr, tap, pb, colT);
  sample_tap_runs<A, 0>(g, xp, sv.data(), runs.data(), nr, tap, pb, colT);
}

// Backward of one (offset group, tap) for the block: grad offset / mask from the grad columns and the corner values,
// grad input scattered into the padded accumulator ga.
template <typename T, typename A>
void sample_backward(const Geo& g, const A* xp, A* ga, const Sten<A>& s, const Run* runs, int64_t nruns,
                     int64_t o, int64_t tap, int64_t n, int64_t p0, int64_t pb, const A* gcolT, T* goff,
                     const int64_t* sgo, T* gmsk, const int64_t* sgm) {
  const int64_t C = g.Cin, WpC = g.Wp * g.Cin;
  constexpr int L = 8;
  int64_t ho = p0 / g.Wo, wo = p0 % g.Wo;
  T* goy = goff + n * sgo[0] + 2 * (o * g.K + tap) * sgo[1];
  T* gox = goy + sgo[1];
  T* gm = gmsk ? gmsk + n * sgm[0] + (o * g.K + tap) * sgm[1] : nullptr;
  for (int64_t q = 0; q < pb; ++q) {
    const A m = s.m[q];
    const A a = m * s.w00[q], b = m * s.w01[q], c = m * s.w10[q], d = m * s.w11[q];
    const int64_t base = s.idx[q];
    A t00[L] = {}, t01[L] = {}, t10[L] = {}, t11[L] = {};
    for (int64_t r = 0; r < nruns; ++r) {
      const Run& run = runs[r];
      const int64_t len = run.len;
      const A* gc = gcolT + q * g.KC + run.col + tap * g.cin_g;
      const A* x0 = xp + base + run.c0;
      const A* x1 = x0 + WpC;
      A* g0 = ga + base + run.c0;
      A* g1 = g0 + WpC;
      int64_t ch = 0;
      for (; ch + L <= len; ch += L)
        back_chunk<A, L>(gc + ch, x0 + ch, x1 + ch, g0 + ch, g1 + ch, C, a, b, c, d, t00, t01, t10, t11);
      if (ch < len) {
        A u00[L] = {}, u01[L] = {}, u10[L] = {}, u11[L] = {};
        for (int64_t l = 0; ch + l < len; ++l) {
          const A v = gc[ch + l];
          u00[l] = v * x0[ch + l];
          u01[l] = v * x0[ch + l + C];
          u10[l] = v * x1[ch + l];
          u11[l] = v * x1[ch + l + C];
          g0[ch + l] = fma_(a, v, g0[ch + l]);
          g0[ch + l + C] = fma_(b, v, g0[ch + l + C]);
          g1[ch + l] = fma_(c, v, g1[ch + l]);
          g1[ch + l + C] = fma_(d, v, g1[ch + l + C]);
        }
        for (int l = 0; l < L; ++l) {
          t00[l] += u00[l];
          t01[l] += u01[l];
          t10[l] += u10[l];
          t11[l] += u11[l];
        }
      }
    }
    A s00 = 0, s01 = 0, s10 = 0, s11 = 0;
    for (int l = 0; l < L; ++l) {
      s00 += t00[l];
      s01 += t01[l];
      s10 += t10[l];
      s11 += t11[l];
    }
    const int64_t oo_o = ho * sgo[2] + wo * sgo[3];
    goy[oo_o] = static_cast<T>(m * (s.hx[q] * (s10 - s00) + s.lx[q] * (s11 - s01)));
    gox[oo_o] = static_cast<T>(m * (s.hy[q] * (s01 - s00) + s.ly[q] * (s11 - s10)));
    if (gm) {
      gm[ho * sgm[2] + wo * sgm[3]] = static_cast<T>(s.w00[q] * s00 + s.w01[q] * s01 + s.w10[q] * s10 + s.w11[q] * s11);
    }
    if (++wo == g.Wo) {
      wo = 0;
      ++ho;
    }
  }
}

// Sample n of x into the zero-padded channels-last plane xp [(H+3) x (W+2) x Cin] in the math dtype.
template <typename T, typename A>
void pad_sample(const Geo& g, const Src<T>& x, int64_t n, A* xp) {
  const int64_t C = g.Cin, WpC = g.Wp * C;
  std::fill(xp, xp + WpC, A(0));
  std::fill(xp + (g.H + 1) * WpC, xp + g.Hp * WpC, A(0));
  const T* xn = x.p + n * x.sn;
  for (int64_t h = 0; h < g.H; ++h) {
    A* row = xp + (h + 1) * WpC;
    std::fill(row, row + C, A(0));
    std::fill(row + (g.W + 1) * C, row + WpC, A(0));
    const T* xr = xn + h * x.sh;
    if (x.sc == 1 || x.sc < x.sw) {
      for (int64_t w = 0; w < g.W; ++w) {
        const T* px = xr + w * x.sw;
        A* d = row + (w + 1) * C;
        for (int64_t c = 0; c < C; ++c) d[c] = static_cast<A>(px[c * x.sc]);
      }
    } else {
      // NCHW: 16 channels at a time, pixel by pixel, so the reads are 16 sequential streams (one per channel plane,
      // each line reused for 16 pixels from L1) and the writes whole lines; a channel-by-channel loop reads 64
      // streams 9 KB apart that the prefetcher does not follow (measured 2 ns per element, 3.6% of the forward)
      for (int64_t c0 = 0; c0 < C; c0 += 16) {
        const int64_t cn = std::min<int64_t>(16, C - c0);
        const T* pc = xr + c0 * x.sc;
        A* d = row + C + c0;
        for (int64_t w = 0; w < g.W; ++w)
          for (int64_t cc = 0; cc < cn; ++cc) d[w * C + cc] = static_cast<A>(pc[cc * x.sc + w * x.sw]);
      }
    }
  }
}

// A thread's padded plane xp: sample n's, refilled only when n changes (a thread's work units are consecutive, so a
// sample is padded once per thread that works on it).
template <typename T, typename A>
struct PaddedSample {
  A* xp;
  int64_t cached = -1;
  void load(const Geo& g, const Src<T>& x, int64_t n) {
    if (n == cached) return;
    pad_sample<T, A>(g, x, n, xp);
    cached = n;
  }
};

template <typename A>
inline at::Tensor mat(A* p, int64_t r, int64_t c, int64_t sr, int64_t sc) {
  return at::from_blob(p, {r, c}, {sr, sc}, at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value));
}

// weight [Cout, cin_g, kh, kw] (any strides) as Wm [Cout, K * cin_g] in the column order (tap, channel).
template <typename T, typename A>
std::vector<A> weight_matrix(const Geo& g, const at::Tensor& weight) {
  std::vector<A> wm(static_cast<size_t>(g.Cout * g.KCg));
  const T* w = weight.const_data_ptr<T>();
  for (int64_t co = 0; co < g.Cout; ++co)
    for (int64_t ci = 0; ci < g.cin_g; ++ci)
      for (int64_t t = 0; t < g.K; ++t)
        wm[static_cast<size_t>(co * g.KCg + t * g.cin_g + ci)] = static_cast<A>(
            w[co * weight.stride(0) + ci * weight.stride(1) + (t / g.kw) * weight.stride(2) +
              (t % g.kw) * weight.stride(3)]);
  return wm;
}

template <typename A>
inline void slot_blocks(const Geo& g, int64_t s, int64_t* b0, int64_t* b1) {
  *b0 = s * g.nblocks / g.S;
  *b1 = (s + 1) * g.nblocks / g.S;
}

template <typename T>
void forward_impl(const Geo& g, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& mask, at::Tensor& y) {
  using A = acc_t<T>;
  const std::vector<Run> runs = make_runs(g);
  std::vector<A> wm = weight_matrix<T, A>(g, weight);
  std::vector<A> bv(static_cast<size_t>(g.Cout), A(0));
  if (bias.has_value()) {
    for (int64_t co = 0; co < g.Cout; ++co) bv[static_cast<size_t>(co)] = static_cast<A>(bias->data_ptr<T>()[co * bias->stride(0)]);
  }
  const Src<T> xs = src_of<T>(input), os = src_of<T>(offset);
  std::optional<Src<T>> ms;
  if (mask.has_value()) ms = src_of<T>(*mask);
  const bool cl = y.stride(1) == 1 && g.Cout > 1;  // channels_last output
  T* yp = y.mutable_data_ptr<T>();
  const int64_t ysn = y.stride(0), ysc = y.stride(1), ysh = y.stride(2), ysw = y.stride(3);
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value);
  // y is ours (forward() allocates it dense, NCHW or channels_last): its pixels are one stride apart, so in the math
  // dtype the GEMM writes it directly, and otherwise the epilogue addresses pixel p as p·ysw
  TORCH_INTERNAL_ASSERT(ysh == g.Wo * ysw, "deform_conv2d CPU forward: output pixels not one stride apart");
  const bool direct = std::is_same_v<T, A>;

  at::parallel_for(0, g.N * g.S, 1, [&](int64_t ub, int64_t ue) {
    SerialBlas serial_blas;
    at::Tensor xp_t = at::empty({g.Hp * g.Wp * g.Cin}, opts);
    at::Tensor col_t = at::empty({g.Pb * g.KC}, opts);
    at::Tensor ob_t = at::empty({g.Pb * g.Cout}, opts);
    A* xp = xp_t.mutable_data_ptr<A>();
    A* colT = col_t.mutable_data_ptr<A>();
    A* ob = ob_t.mutable_data_ptr<A>();
    StenStore<A> st;
    st.reset(g.og, g.Pb);
    PaddedSample<T, A> padded{xp};
    for (int64_t u = ub; u < ue; ++u) {
      const int64_t n = u / g.S, s = u % g.S;
      padded.load(g, xs, n);
      int64_t b0, b1;
      slot_blocks<A>(g, s, &b0, &b1);
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t p0 = blk * g.Pb, pb = std::min(g.Pb, g.P - p0);
        for (int64_t tap = 0; tap < g.K; ++tap) {
          if (tap + 1 < g.K) {
            prefetch_tap<T>(g, os, ms ? &*ms : nullptr, n, 0, g.og, tap + 1, p0, pb);
          } else if (blk + 1 < b1) {
            const int64_t p1 = p0 + g.Pb;
            prefetch_tap<T>(g, os, ms ? &*ms : nullptr, n, 0, g.og, 0, p1, std::min(g.Pb, g.P - p1));
          }
          for (int64_t o = 0; o < g.og; ++o)
            stencil<T, A, false>(g, os, ms ? &*ms : nullptr, n, o, tap, p0, pb, st.at(o), st.scratch.data());
          sample_tap<A>(g, xp, st, runs, tap, pb, colT);
        }
        T* yn = yp + n * ysn;
        if (direct) {
          // the GEMM writes the block's outputs in place: rows (cl) or columns (NCHW) p0.. of sample n, onto the
          // bias written first (beta = 1)
          for (int64_t gr = 0; gr < g.groups; ++gr) {
            A* wg = wm.data() + gr * g.cout_g * g.KCg;
            A* yg = reinterpret_cast<A*>(yn) + gr * g.cout_g * ysc + p0 * ysw;
            at::Tensor out = cl ? mat(yg, pb, g.cout_g, ysw, 1) : mat(yg, g.cout_g, pb, ysc, 1);
            at::Tensor lhs = cl ? mat(colT + gr * g.KCg, pb, g.KCg, g.KC, 1) : mat(wg, g.cout_g, g.KCg, g.KCg, 1);
            at::Tensor rhs = cl ? mat(wg, g.KCg, g.cout_g, 1, g.KCg) : mat(colT + gr * g.KCg, g.KCg, pb, 1, g.KC);
            if (bias.has_value()) {
              const A* bg = bv.data() + gr * g.cout_g;
              if (cl) {
                for (int64_t q = 0; q < pb; ++q) std::memcpy(yg + q * ysw, bg, sizeof(A) * g.cout_g);
              } else {
                for (int64_t co = 0; co < g.cout_g; ++co) std::fill(yg + co * ysc, yg + co * ysc + pb, bg[co]);
              }
            }
            cpu_gemm::mm(out, lhs, rhs, bias.has_value() ? 1.0f : 0.0f);
          }
          continue;
        }
        for (int64_t gr = 0; gr < g.groups; ++gr) {
          A* wg = wm.data() + gr * g.cout_g * g.KCg;
          if (cl) {  // ob [pb, Cout]
            at::Tensor out = mat(ob + gr * g.cout_g, pb, g.cout_g, g.Cout, 1);
            cpu_gemm::mm(out, mat(colT + gr * g.KCg, pb, g.KCg, g.KC, 1), mat(wg, g.KCg, g.cout_g, 1, g.KCg), 0.0f);
          } else {  // ob [Cout, pb]
            at::Tensor out = mat(ob + gr * g.cout_g * pb, g.cout_g, pb, pb, 1);
            cpu_gemm::mm(out, mat(wg, g.cout_g, g.KCg, g.KCg, 1), mat(colT + gr * g.KCg, g.KCg, pb, 1, g.KC), 0.0f);
          }
        }
        // y's pixels are one stride apart (forward() allocates it), so pixel q of the block is yn + (p0 + q)·ysw.
        // NCHW goes row by row of ob, each output channel's pixels in one run: pixel-by-pixel writes would be
        // Ho·Wo elements apart, a multiple of 4 KiB at 128² bf16, all in one L1 set (measured: og1 N1 C64 128² bf16
        // forward 28 ms against 13 ms in fp32).
        T* yb = yn + p0 * ysw;
        if (cl) {
          for (int64_t q = 0; q < pb; ++q) {
            const A* src = ob + q * g.Cout;
            T* yq = yb + q * ysw;
            for (int64_t co = 0; co < g.Cout; ++co) yq[co * ysc] = static_cast<T>(src[co] + bv[static_cast<size_t>(co)]);
          }
        } else {
          for (int64_t co = 0; co < g.Cout; ++co) {
            const A b = bv[static_cast<size_t>(co)];
            const A* src = ob + co * pb;
            T* yrow = yb + co * ysc;
            for (int64_t q = 0; q < pb; ++q) yrow[q * ysw] = static_cast<T>(src[q] + b);
          }
        }
      }
    }
  });
}

template <typename T>
at::Tensor forward(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                   int64_t dh, int64_t dw, const std::optional<at::Tensor>& mask) {
  const Geo g = make_geo(input, offset, weight, sh, sw, ph, pw, dh, dw);
  at::Tensor y = at::empty({g.N, g.Cout, g.Ho, g.Wo}, input.options().memory_format(out_format(input)));
  if (g.N == 0) return y;
  forward_impl<T>(g, input, offset, weight, bias, mask, y);
  return y;
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
    const std::optional<at::Tensor>& mask) {
  using A = acc_t<T>;
  const Geo g = make_geo(input, offset, weight, sh, sw, ph, pw, dh, dw);
  const auto fmt = out_format(input);
  at::Tensor gi = at::empty(input.sizes(), input.options().memory_format(fmt));
  at::Tensor goff = at::empty(offset.sizes(), offset.options().memory_format(fmt));
  at::Tensor gmsk = mask.has_value() ? at::empty(mask->sizes(), mask->options().memory_format(fmt))
                                     : at::empty({0}, input.options());
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value);
  std::vector<A> gw_tot(static_cast<size_t>(g.Cout * g.KCg), A(0)), gb_tot(static_cast<size_t>(g.Cout), A(0));
  if (g.N > 0) {
    const std::vector<Run> runs = make_runs(g);
    std::vector<int64_t> run_start(static_cast<size_t>(g.og + 1), 0);
    for (size_t r = 0; r < runs.size(); ++r) run_start[static_cast<size_t>(runs[r].og + 1)] = static_cast<int64_t>(r + 1);
    for (int64_t o = 1; o <= g.og; ++o)
      run_start[static_cast<size_t>(o)] = std::max(run_start[static_cast<size_t>(o)], run_start[static_cast<size_t>(o - 1)]);
    std::vector<A> wm = weight_matrix<T, A>(g, weight);
    const Src<T> xs = src_of<T>(input), os = src_of<T>(offset), gs = src_of<T>(grad);
    std::optional<Src<T>> ms;
    if (mask.has_value()) ms = src_of<T>(*mask);
    T* goffp = goff.mutable_data_ptr<T>();
    const int64_t sgo[4] = {goff.stride(0), goff.stride(1), goff.stride(2), goff.stride(3)};
    T* gmp = mask.has_value() ? gmsk.mutable_data_ptr<T>() : nullptr;
    int64_t sgm[4] = {0, 0, 0, 0};
    if (mask.has_value()) {
      for (int k = 0; k < 4; ++k) sgm[k] = gmsk.stride(k);
    }
    T* gip = gi.mutable_data_ptr<T>();
    const int64_t plane = g.Hp * g.Wp * g.Cin;
    const int64_t U = g.N * g.S;
    // S > 1 (small batch): one padded accumulator per unit, summed per sample in slot order afterwards
    at::Tensor unit_acc;
    if (g.S > 1) unit_acc = at::zeros({U, plane}, opts);
    constexpr int64_t WAVE = 16;  // units whose grad-weight partials are live at once (fixed: thread-independent)
    std::vector<A> gw_part(static_cast<size_t>(std::min(WAVE, U) * g.Cout * g.KCg));
    std::vector<A> gb_part(static_cast<size_t>(std::min(WAVE, U) * g.Cout));

    auto copy_out = [&](int64_t n, const A* acc, int64_t nacc) {
      T* gin = gip + n * gi.stride(0);
      const int64_t sc = gi.stride(1), shh = gi.stride(2), sww = gi.stride(3);
      for (int64_t h = 0; h < g.H; ++h) {
        for (int64_t w = 0; w < g.W; ++w) {
          const int64_t e = ((h + 1) * g.Wp + (w + 1)) * g.Cin;
          T* d = gin + h * shh + w * sww;
          for (int64_t c = 0; c < g.Cin; ++c) {
            A v = acc[e + c];
            for (int64_t k = 1; k < nacc; ++k) v += acc[k * plane + e + c];
            d[c * sc] = static_cast<T>(v);
          }
        }
      }
    };

    for (int64_t w0 = 0; w0 < U; w0 += WAVE) {
      const int64_t wn = std::min(WAVE, U - w0);
      std::fill(gw_part.begin(), gw_part.end(), A(0));
      std::fill(gb_part.begin(), gb_part.end(), A(0));
      at::parallel_for(w0, w0 + wn, 1, [&](int64_t ub, int64_t ue) {
        SerialBlas serial_blas;
        at::Tensor xp_t = at::empty({plane}, opts);
        at::Tensor col_t = at::empty({g.Pb * g.KC}, opts);
        at::Tensor gcol_t = at::empty({g.Pb * g.KC}, opts);
        at::Tensor gob_t = at::empty({g.Pb * g.Cout}, opts);
        at::Tensor acc_t_ = g.S > 1 ? at::Tensor() : at::empty({plane}, opts);
        A* xp = xp_t.mutable_data_ptr<A>();
        A* colT = col_t.mutable_data_ptr<A>();
        A* gcolT = gcol_t.mutable_data_ptr<A>();
        A* gob = gob_t.mutable_data_ptr<A>();
        StenStore<A> st;
        st.reset(g.og * g.K, g.Pb);
        PaddedSample<T, A> padded{xp};
        for (int64_t u = ub; u < ue; ++u) {
          const int64_t n = u / g.S, s = u % g.S;
          padded.load(g, xs, n);
          A* ga = g.S > 1 ? unit_acc.mutable_data_ptr<A>() + u * plane : acc_t_.mutable_data_ptr<A>();
          if (g.S == 1) std::fill(ga, ga + plane, A(0));
          A* gwp = gw_part.data() + (u - w0) * g.Cout * g.KCg;
          A* gbp = gb_part.data() + (u - w0) * g.Cout;
          at::Tensor gw_view = mat(gwp, g.Cout, g.KCg, g.KCg, 1);
          int64_t b0, b1;
          slot_blocks<A>(g, s, &b0, &b1);
          for (int64_t blk = b0; blk < b1; ++blk) {
            const int64_t p0 = blk * g.Pb, pb = std::min(g.Pb, g.P - p0);
            // grad_out block gob [Cout, pb]; grad bias partial
            {
              const T* gn = gs.p + n * gs.sn;
              int64_t ho = p0 / g.Wo, wo = p0 % g.Wo;
              for (int64_t q = 0; q < pb; ++q) {
                const T* gq = gn + ho * gs.sh + wo * gs.sw;
                for (int64_t co = 0; co < g.Cout; ++co) gob[co * pb + q] = static_cast<A>(gq[co * gs.sc]);
                if (++wo == g.Wo) {
                  wo = 0;
                  ++ho;
                }
              }
              for (int64_t co = 0; co < g.Cout; ++co) {
                A sacc = 0;
                for (int64_t q = 0; q < pb; ++q) sacc += gob[co * pb + q];
                gbp[co] += sacc;
              }
            }
            for (int64_t o = 0; o < g.og; ++o) {
              const Run* rr = runs.data() + run_start[static_cast<size_t>(o)];
              const int64_t nr = run_start[static_cast<size_t>(o + 1)] - run_start[static_cast<size_t>(o)];
              for (int64_t tap = 0; tap < g.K; ++tap) {
                const Sten<A> sv = st.at(o * g.K + tap);
                if (tap + 1 < g.K) {
                  prefetch_tap<T>(g, os, ms ? &*ms : nullptr, n, o, o + 1, tap + 1, p0, pb);
                } else if (o + 1 < g.og) {
                  prefetch_tap<T>(g, os, ms ? &*ms : nullptr, n, o + 1, o + 2, 0, p0, pb);
                }
                stencil<T, A, true>(g, os, ms ? &*ms : nullptr, n, o, tap, p0, pb, sv, st.scratch.data());
                sample<A>(g, xp, sv, rr, nr, tap, pb, colT);
              }
            }
            for (int64_t gr = 0; gr < g.groups; ++gr) {
              A* wg = wm.data() + gr * g.cout_g * g.KCg;
              A* gobg = gob + gr * g.cout_g * pb;
              // grad weight partial += gob_g [cout_g, pb] x colT_g [pb, KCg]
              at::Tensor gwg = gw_view.narrow(0, gr * g.cout_g, g.cout_g);
              cpu_gemm::mm(gwg, mat(gobg, g.cout_g, pb, pb, 1), mat(colT + gr * g.KCg, pb, g.KCg, g.KC, 1), 1.0f);
              // grad columns gcolT_g [pb, KCg] = gob_g^T x Wm_g
              at::Tensor gc = mat(gcolT + gr * g.KCg, pb, g.KCg, g.KC, 1);
              cpu_gemm::mm(gc, mat(gobg, pb, g.cout_g, 1, pb), mat(wg, g.cout_g, g.KCg, g.KCg, 1), 0.0f);
            }
            for (int64_t o = 0; o < g.og; ++o) {
              const Run* rr = runs.data() + run_start[static_cast<size_t>(o)];
              const int64_t nr = run_start[static_cast<size_t>(o + 1)] - run_start[static_cast<size_t>(o)];
              for (int64_t tap = 0; tap < g.K; ++tap) {
                const Sten<A> sv = st.at(o * g.K + tap);
                sample_backward<T, A>(g, xp, ga, sv, rr, nr, o, tap, n, p0, pb, gcolT, goffp, sgo, gmp, sgm);
              }
            }
          }
          if (g.S == 1) copy_out(n, ga, 1);
        }
      });
      for (int64_t k = 0; k < wn; ++k) {  // fixed order: unit order
        const A* pw_ = gw_part.data() + k * g.Cout * g.KCg;
        for (int64_t e = 0; e < g.Cout * g.KCg; ++e) gw_tot[static_cast<size_t>(e)] += pw_[e];
        const A* pb_ = gb_part.data() + k * g.Cout;
        for (int64_t e = 0; e < g.Cout; ++e) gb_tot[static_cast<size_t>(e)] += pb_[e];
      }
    }
    if (g.S > 1) {
      const A* acc = unit_acc.const_data_ptr<A>();
      at::parallel_for(0, g.N, 1, [&](int64_t nb, int64_t ne) {
        for (int64_t n = nb; n < ne; ++n) copy_out(n, acc + n * g.S * plane, g.S);
      });
    }
  }
  at::Tensor gw = at::empty({g.Cout, g.cin_g, g.kh, g.kw}, weight.options().memory_format(at::MemoryFormat::Contiguous));
  {
    T* d = gw.mutable_data_ptr<T>();
    for (int64_t co = 0; co < g.Cout; ++co)
      for (int64_t ci = 0; ci < g.cin_g; ++ci)
        for (int64_t t = 0; t < g.K; ++t)
          d[(co * g.cin_g + ci) * g.K + t] = static_cast<T>(gw_tot[static_cast<size_t>(co * g.KCg + t * g.cin_g + ci)]);
  }
  at::Tensor gb;
  if (bias.has_value()) {
    gb = at::empty({g.Cout}, bias->options().memory_format(at::MemoryFormat::Contiguous));
    T* d = gb.mutable_data_ptr<T>();
    for (int64_t co = 0; co < g.Cout; ++co) d[co] = static_cast<T>(gb_tot[static_cast<size_t>(co)]);
  } else {
    gb = at::empty({0}, input.options());
  }
  return {gi, goff, gw, gb, gmsk};
}

at::Tensor forward_entry(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                         int64_t dh, int64_t dw, const std::optional<at::Tensor>& mask) {
  at::Tensor y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "burstkern_deform_conv2d_cpu", [&] {
    y = forward<scalar_t>(input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_entry(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
    const std::optional<at::Tensor>& mask) {
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> r;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "burstkern_deform_conv2d_backward_cpu", [&] {
    r = backward<scalar_t>(grad, input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask);
  });
  return r;
}

}  // namespace BK_DCN_ISA
}  // namespace cpu
}  // namespace deform_conv
}  // namespace burstkern

#undef BK_DCN_FMA
#undef BK_DCN_FMAF
#endif  // BK_DCN_TYPES_ONLY
