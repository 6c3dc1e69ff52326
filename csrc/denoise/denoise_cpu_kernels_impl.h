// The loops of the denoise CPU kernels, compiled once per ISA (see sft/sft_cpu_kernels_impl.h for the scheme: the
// includer defines BK_ISA, BK_ISA_NAME, BK_ISA_TABLE, BK_ISA_FP64 and includes <cstdint>, <cstring>, <cmath>,
// <type_traits> and denoise_cpu_kernels_args.h first). One pass per op over units (n, chunk of a sample) fixed by
// the shapes: each unit's partial sums have a fixed order, so results do not depend on the thread count.
//
// In-kernel noise: the Philox 4x32-10 stream of common/philox.cuh and burstkern/ops/denoise/rng.py (counter = the
// element's logical row-major index, key = the seed), the same words as the GPU kernels, then Triton's
// uint -> float and Box-Muller with vectorisable Cephes log / cos (within a few ulp of the float32 libm values).

#pragma GCC push_options
#pragma GCC optimize("no-math-errno")  // sqrt of a non-negative value: vsqrtps, no errno branch
// the 64-byte vector helpers below are internal and inlined: no ABI crosses a TU boundary (GCC reports -Wpsabi at the
// end of the TU, so the setting cannot be popped)
#pragma GCC diagnostic ignored "-Wpsabi"

namespace burstkern {
namespace denoise {
namespace cpu {
namespace detail {
namespace BK_ISA {
namespace {  // internal linkage: no symbol of this ISA's code is visible to other TUs

#include "sft/sft_cpu_kernels_math.h"

constexpr int64_t kB = 256;

template <class T, class A>
static inline const A* src(const T* p, int64_t m, A* buf) {
  if constexpr (std::is_same<T, A>::value) return p;
  load_run(p, int64_t(1), m, buf);
  return buf;
}

template <class T, class A>
static inline A* dst(T* p, A* buf) {
  if constexpr (std::is_same<T, A>::value) return p;
  return buf;
}

template <class T, class A>
static inline void put(T* p, int64_t m, const A* v) {
  if constexpr (!std::is_same<T, A>::value) store_run(p, int64_t(1), m, v);
}

// ---------------------------------------------------------------------------------------------------------------
// RNG
// ---------------------------------------------------------------------------------------------------------------
static inline float uniform(uint32_t r) {
  int32_t v = static_cast<int32_t>(r);
  v = v < 0 ? ~v : v;
  return static_cast<float>(v) * 4.6566127342e-10f;
}

// Philox 4x32-10 of 16 counters at once in GCC vector types (compiled to the TU's widest registers: zmm with
// AVX-512, ymm pairs with AVX2), the 32x32 -> 64-bit products as zero-extended 64-bit lanes (vpmuludq). The scalar
// per-element loop it replaces was not vectorised by GCC and took ~90 cycles per normal (add_noise of
// [1, 3, 384, 384] 10 ms at one thread, 2% of an EBSRD("tiny") one-step call).
typedef uint32_t vu32x16 __attribute__((vector_size(64)));
typedef uint64_t vu64x16 __attribute__((vector_size(128)));

static inline void philox16(uint32_t k0, uint32_t k1, const int64_t* __restrict off, float* __restrict u1,
                            float* __restrict u2) {
  vu64x16 o;
  std::memcpy(&o, off, sizeof o);
  vu32x16 c0 = __builtin_convertvector(o, vu32x16), c1 = __builtin_convertvector(o >> 32, vu32x16);
  vu32x16 c2 = vu32x16{}, c3 = vu32x16{};
  const vu64x16 mb = vu64x16{} + static_cast<uint64_t>(0xCD9E8D57u), ma = vu64x16{} + static_cast<uint64_t>(0xD2511F53u);
#pragma GCC unroll 10
  for (int r = 0; r < 10; ++r) {
    const vu64x16 pb = __builtin_convertvector(c2, vu64x16) * mb;
    const vu64x16 pa = __builtin_convertvector(c0, vu64x16) * ma;
    c0 = __builtin_convertvector(pb >> 32, vu32x16) ^ c1 ^ k0;
    c1 = __builtin_convertvector(pb, vu32x16);
    c2 = __builtin_convertvector(pa >> 32, vu32x16) ^ c3 ^ k1;
    c3 = __builtin_convertvector(pa, vu32x16);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  for (int i = 0; i < 16; ++i) {
    u1[i] = uniform(c0[i]);
    u2[i] = uniform(c1[i]);
  }
}

// ln x for normal x > 0 (Cephes logf) and cos x for 0 <= x < 2^20 (Cephes cosf), 16 lanes at a time, written in
// vector types because GCC did not vectorise the scalar forms' selects (branches per element).
typedef float vf32x16 __attribute__((vector_size(64)));
typedef int32_t vi32x16 __attribute__((vector_size(64)));

static inline vf32x16 log_unit16(vf32x16 x) {
  vu32x16 b;
  std::memcpy(&b, &x, sizeof b);
  vi32x16 e = __builtin_convertvector(b >> 23, vi32x16) - 126;
  const vu32x16 mb = (b & 0x007FFFFFu) | 0x3F000000u;
  vf32x16 m;
  std::memcpy(&m, &mb, sizeof m);
  const vi32x16 small = m < 0.707106781186547524f;  // lanes -1 / 0
  e = e + small;
  m = small ? m + m - 1.0f : m - 1.0f;
  const vf32x16 z = m * m;
  vf32x16 y = vf32x16{} + 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const vf32x16 fe = __builtin_convertvector(e, vf32x16);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  vf32x16 r = m + y;
  r += 0.693359375f * fe;
  return r;
}

static inline vf32x16 cos_pos16(vf32x16 x) {
  vi32x16 j = __builtin_convertvector(x * 1.27323954473516f, vi32x16);
  j = (j + 1) & ~1;
  const vf32x16 y = __builtin_convertvector(j, vf32x16);
  x = ((x - y * 0.78515625f) - y * 2.4187564849853515625e-4f) - y * 3.77489497744594108e-8f;
  j &= 7;
  const vi32x16 flip = j > 3;
  j = flip ? j - 4 : j;
  const vi32x16 neg = flip != (j > 1);
  const vf32x16 z = x * x;
  const vf32x16 c = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
                    0.5f * z + 1.0f;
  const vf32x16 s = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * x + x;
  const vf32x16 v = ((j == 1) | (j == 2)) ? s : c;
  return neg ? -v : v;
}

// normals of Philox(seed, off[i]) for i < m (m <= kB)
static void normals(int64_t seed, const int64_t* __restrict off, int64_t m, float* __restrict out) {
  alignas(64) float u1[kB], u2[kB];
  const uint32_t k0s = static_cast<uint32_t>(static_cast<uint64_t>(seed));
  const uint32_t k1s = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
  int64_t i = 0;
  for (; i + 16 <= m; i += 16) philox16(k0s, k1s, off + i, u1 + i, u2 + i);
  if (i < m) {  // the tail's counters through a padded copy (off may end at m); its 16 lanes fit in u1 / u2
    alignas(64) int64_t pad[16] = {};
    std::memcpy(pad, off + i, sizeof(int64_t) * static_cast<size_t>(m - i));
    philox16(k0s, k1s, pad, u1 + i, u2 + i);
  }
  const int64_t mv = (m + 15) / 16 * 16;
  for (int64_t k = 0; k < mv; k += 16) {  // Box-Muller: u1 becomes -2 ln u1, u2 cos(2π u2)
    vf32x16 a, t;
    std::memcpy(&a, u1 + k, sizeof a);
    std::memcpy(&t, u2 + k, sizeof t);
    a = a < 1.0e-7f ? vf32x16{} + 1.0e-7f : a;
    a = -2.0f * log_unit16(a);
    t = cos_pos16(6.283185307179586f * t);
    std::memcpy(u1 + k, &a, sizeof a);
    std::memcpy(u2 + k, &t, sizeof t);
  }
  for (int64_t k = 0; k < m; ++k) out[k] = sqrtv(u1[k]) * u2[k];
}

void randn_entry(int64_t seed, const int64_t* offsets, float* out, int64_t n) {
  for (int64_t i0 = 0; i0 < n; i0 += kB) normals(seed, offsets + i0, mn(kB, n - i0), out + i0);
}

// ε of the block [base + r0, base + r0 + m) of sample n (memory order): the noise tensor, or drawn at the logical
// indices (channels_last: memory (hw, c) -> logical c·HW + hw)
template <class T, class A>
static inline const A* noise_block(const Args& a, int64_t n, int64_t r0, int64_t m, A* buf, float* fbuf) {
  const int64_t base = n * a.M;
  if (!a.draw) return src(static_cast<const T*>(a.in[3]) + base + r0, m, buf);
  alignas(64) int64_t off[kB];
  if (!a.cl) {
    for (int64_t i = 0; i < m; ++i) off[i] = base + r0 + i;
  } else {
    int64_t hw = r0 / a.C, c = r0 % a.C;
    for (int64_t i = 0; i < m; ++i) {
      off[i] = base + c * a.HW + hw;
      if (++c == a.C) {
        c = 0;
        ++hw;
      }
    }
  }
  normals(a.seed, off, m, fbuf);
  if constexpr (std::is_same<A, float>::value) {
    return fbuf;
  } else {
    for (int64_t i = 0; i < m; ++i) buf[i] = static_cast<A>(fbuf[i]);
    return buf;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// the ops: one unit = a chunk of one sample
// ---------------------------------------------------------------------------------------------------------------
template <class T>
void run_units(const Args& a, int64_t u0, int64_t u1) {
  using A = typename CT<T>::type;
  const int64_t nch = (a.M + a.chunk - 1) / a.chunk;
  alignas(64) A b0[kB], b1[kB], b2[kB], b3[kB], o0[kB], o1[kB], o2[kB];
  alignas(64) float fb[kB];
  const T* in0 = static_cast<const T*>(a.in[0]);
  const T* in1 = static_cast<const T*>(a.in[1]);
  const T* in2 = static_cast<const T*>(a.in[2]);
  const T* in3 = static_cast<const T*>(a.in[3]);
  T* out0 = static_cast<T*>(a.out[0]);
  T* out1 = static_cast<T*>(a.out[1]);
  T* out2 = static_cast<T*>(a.out[2]);
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t n = u / nch, j = u % nch;
    const int64_t r_begin = j * a.chunk, r_end = mn(a.M, r_begin + a.chunk);
    auto ps = [&](int k) { return static_cast<A>(a.ps[k][n]); };
    alignas(64) double acc[kLanes] = {};
    for (int64_t r0 = r_begin; r0 < r_end; r0 += kB) {
      const int64_t m = mn(kB, r_end - r0);
      const int64_t f = n * a.M + r0;  // flat offset of the block
      switch (a.op) {
        case kCombine: {
          const A cs = ps(0), co = ps(1), e1 = ps(3), e2 = ps(4);  // d = e1·x + e2·F = (x − D)/σ
          const A* x = src(in0 + f, m, b0);
          const A* F = src(in1 + f, m, b1);
          A* D = dst(out0 + f, o0);
          for (int64_t i = 0; i < m; ++i) D[i] = cs * x[i] + co * F[i];
          if (a.has_d) {
            A* d = dst(out1 + f, o1);
            for (int64_t i = 0; i < m; ++i) d[i] = e1 * x[i] + e2 * F[i];
            put(out1 + f, m, d);
          }
          put(out0 + f, m, D);
          break;
        }
        case kCombineBwd: {
          const A cs = ps(0), co = ps(1), ka = ps(2), kb = ps(3), dcs = ps(4), dco = ps(5), kda = ps(6), kdb = ps(7);
          const A* gD = src(in0 + f, m, b0);
          const A* x = src(in2 + f, m, b2);
          const A* F = src(in3 + f, m, b3);
          A* gx = dst(out0 + f, o0);
          A* gF = dst(out1 + f, o1);
          if (a.has_d) {
            const A* gd = src(in1 + f, m, b1);
            for (int64_t i = 0; i < m; ++i) {
              gx[i] = gD[i] * cs + gd[i] * ka;
              gF[i] = gD[i] * co - gd[i] * kb;
            }
            if (a.red != nullptr) {
              A* t = o2;
              for (int64_t i = 0; i < m; ++i)
                t[i] = gD[i] * (dcs * x[i] + dco * F[i]) + gd[i] * (kda * x[i] - kdb * F[i]);
              lane_add(acc, t, m);
            }
          } else {
            for (int64_t i = 0; i < m; ++i) {
              gx[i] = gD[i] * cs;
              gF[i] = gD[i] * co;
            }
            if (a.red != nullptr) {
              A* t = o2;
              for (int64_t i = 0; i < m; ++i) t[i] = gD[i] * (dcs * x[i] + dco * F[i]);
              lane_add(acc, t, m);
            }
          }
          put(out0 + f, m, gx);
          put(out1 + f, m, gF);
          break;
        }
        case kEuler: {
          const A e1 = ps(0), e2 = ps(1), step = ps(3) - ps(2);  // d = e1·x + e2·F = (x − D)/σ
          const A* x = src(in0 + f, m, b0);
          const A* F = src(in1 + f, m, b1);
          A* xn = dst(out0 + f, o0);
          A* d = dst(out1 + f, o1);
          for (int64_t i = 0; i < m; ++i) {
            const A dv = e1 * x[i] + e2 * F[i];
            d[i] = dv;
            xn[i] = x[i] + step * dv;
          }
          put(out0 + f, m, xn);
          put(out1 + f, m, d);
          break;
        }
        case kHeun: {
          // x̂ + (σn − σ̂)/2·(d + (x_n − D(x_n; σn))/σn) = x̂ + h1·d + h2·x_n + h3·F_n
          const A h1 = ps(0), h2 = ps(1), h3 = ps(2);
          const bool pos = a.ps[4][n] != 0.0;
          const A* xn = src(in2 + f, m, b2);
          A* o = dst(out0 + f, o0);
          if (pos) {
            const A* xh = src(in0 + f, m, b0);
            const A* d = src(in1 + f, m, b1);
            const A* Fn = src(in3 + f, m, b3);
            for (int64_t i = 0; i < m; ++i) o[i] = xh[i] + h1 * d[i] + h2 * xn[i] + h3 * Fn[i];
          } else {
            for (int64_t i = 0; i < m; ++i) o[i] = xn[i];
          }
          put(out0 + f, m, o);
          break;
        }
        case kAddNoise: {
          const A sc = ps(0);
          const A* x = src(in0 + f, m, b0);
          const A* e = noise_block<T, A>(a, n, r0, m, b3, fb);
          A* o = dst(out0 + f, o0);
          for (int64_t i = 0; i < m; ++i) o[i] = x[i] + sc * e[i];
          put(out0 + f, m, o);
          break;
        }
        case kCm: {
          const A cs = ps(0), co = ps(1), sc = ps(2), c = static_cast<A>(a.clamp);
          const A* x = src(in0 + f, m, b0);
          const A* F = src(in1 + f, m, b1);
          A* o = dst(out0 + f, o0);
          for (int64_t i = 0; i < m; ++i) {
            A v = cs * x[i] + co * F[i];
            if (a.has_clamp) v = v < -c ? -c : (v > c ? c : v);  // compare-and-select keeps NaN
            o[i] = v;
          }
          if (a.has_next) {
            const A* e = noise_block<T, A>(a, n, r0, m, b3, fb);
            for (int64_t i = 0; i < m; ++i) o[i] = o[i] + sc * e[i];
          }
          put(out0 + f, m, o);
          break;
        }
        case kCmBwd: {
          const A cs = ps(0), co = ps(1), c = static_cast<A>(a.clamp);
          const A* g = src(in0 + f, m, b0);
          A* gx = dst(out0 + f, o0);
          A* gF = dst(out1 + f, o1);
          if (a.has_clamp) {
            const A* x = src(in1 + f, m, b1);
            const A* F = src(in2 + f, m, b2);
            for (int64_t i = 0; i < m; ++i) {
              const A v = cs * x[i] + co * F[i];
              const A gv = (v >= -c && v <= c) ? g[i] : A(0);
              gx[i] = gv * cs;
              gF[i] = gv * co;
            }
          } else {
            for (int64_t i = 0; i < m; ++i) {
              gx[i] = g[i] * cs;
              gF[i] = g[i] * co;
            }
          }
          put(out0 + f, m, gx);
          put(out1 + f, m, gF);
          break;
        }
        case kLoss: {
          const A cs = ps(0), co = ps(1);
          const A* x = src(in0 + f, m, b0);
          const A* F = src(in1 + f, m, b1);
          const A* y = src(in2 + f, m, b2);
          for (int64_t i = 0; i < m; ++i) {
            const A r = cs * x[i] + co * F[i] - y[i];
            o0[i] = r * r;
          }
          lane_add(acc, o0, m);
          break;
        }
        case kLossBwd: {
          const A cs = ps(0), co = ps(1), k = ps(2);
          const A* x = src(in0 + f, m, b0);
          const A* F = src(in1 + f, m, b1);
          const A* y = src(in2 + f, m, b2);
          A* gx = dst(out0 + f, o0);
          A* gF = dst(out1 + f, o1);
          A* gy = dst(out2 + f, o2);
          for (int64_t i = 0; i < m; ++i) {
            const A r = k * (cs * x[i] + co * F[i] - y[i]);
            gx[i] = r * cs;
            gF[i] = r * co;
            gy[i] = -r;
          }
          put(out0 + f, m, gx);
          put(out1 + f, m, gF);
          put(out2 + f, m, gy);
          break;
        }
        default:
          break;
      }
    }
    if (a.red != nullptr) a.red[u] = lane_total(acc);
  }
  (void)in3;
}

void run_entry(const Args& a, int64_t u0, int64_t u1) {
  switch (a.dt) {
#if BK_ISA_FP64
    case kF64:
      run_units<double>(a, u0, u1);
      break;
#endif
    case kF16:
      run_units<f16s>(a, u0, u1);
      break;
    case kBF16:
      run_units<bf16s>(a, u0, u1);
      break;
    default:
      run_units<float>(a, u0, u1);
  }
}

}  // namespace
}  // namespace BK_ISA

const Table& BK_ISA_TABLE() {
  static const Table t{BK_ISA_NAME, &BK_ISA::run_entry, &BK_ISA::randn_entry};
  return t;
}

}  // namespace detail
}  // namespace cpu
}  // namespace denoise
}  // namespace burstkern

#pragma GCC pop_options
