// Element math shared by the CPU kernels of the sft and denoise ops, written for the compiler's auto-vectoriser:
// branch-free, no library calls in the float paths (a polynomial exp instead of expf), storage conversions of
// bfloat16 / half by bit arithmetic (the c10 algorithms), and fixed 16-lane partial sums for reductions (the
// vectoriser may not reassociate a float sum; 16 independent lanes it can, and the order is the same on every
// ISA). Included by each per-ISA translation unit inside its own namespace (BK_ISA, see sft_cpu_kernels_impl.h),
// so nothing here is an inline function shared across TUs compiled for different ISAs (no ODR mixing): this
// header only includes <cstdint>, <cstring> and <cmath>, which the TU includes before its target pragma.
//
// Not a standalone header: no include guard of its own, no namespace (the includer opens one).

struct bf16s {  // bit layout of c10::BFloat16
  uint16_t x;
};
struct f16s {  // bit layout of c10::Half
  uint16_t x;
};

static inline uint32_t f2u(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
static inline float u2f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// storage -> compute
static inline float to_c(float v) { return v; }
static inline double to_c(double v) { return v; }
static inline float to_c(bf16s v) { return u2f(static_cast<uint32_t>(v.x) << 16); }
static inline float to_c(f16s v) {
  // c10::detail::fp16_ieee_to_fp32_value (branch-free)
  const uint32_t w = static_cast<uint32_t>(v.x) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = u2f((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = u2f((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t r = sign | (two_w < (1u << 27) ? f2u(denormalized) : f2u(normalized));
  return u2f(r);
}

// compute -> storage (round to nearest even; NaN stays NaN)
template <class T>
struct St;
template <>
struct St<float> {
  static inline float from(float v) { return v; }
};
template <>
struct St<double> {
  static inline double from(double v) { return v; }
};
template <>
struct St<bf16s> {
  static inline bf16s from(float f) {
    const uint32_t u = f2u(f);
    const uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
    return bf16s{static_cast<uint16_t>(nan ? 0x7FC0u : r)};
  }
};
template <>
struct St<f16s> {
  static inline f16s from(float f) {
    // c10::detail::fp16_ieee_from_fp32_value (branch-free)
    float base = (__builtin_fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = f2u(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    bias = bias < 0x71000000u ? 0x71000000u : bias;
    base = u2f((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = f2u(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return f16s{static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign))};
  }
};

// compute type: double for double storage, float otherwise
template <class T>
struct CT {
  using type = float;
};
template <>
struct CT<double> {
  using type = double;
};

// builtins only (no std:: inline functions: an out-of-line copy compiled for another ISA could be the one the
// linker keeps)
static inline float absv(float v) { return __builtin_fabsf(v); }
static inline double absv(double v) { return __builtin_fabs(v); }
static inline float sqrtv(float v) { return __builtin_sqrtf(v); }
static inline double sqrtv(double v) { return __builtin_sqrt(v); }

static inline float mn(float a, float b) { return a < b ? a : b; }
static inline float mx(float a, float b) { return a > b ? a : b; }
static inline double mn(double a, double b) { return a < b ? a : b; }
static inline double mx(double a, double b) { return a > b ? a : b; }
static inline int64_t mn(int64_t a, int64_t b) { return a < b ? a : b; }

// e^t for t <= 0 (Cephes expf polynomial, ~1 ulp on [-87, 0]; below -87 it returns ~e^-87, which every caller
// here treats as 0 next to 1). Branch-free and library-free so loops over it vectorise.
static inline float exp_neg(float t) {
  t = t < -87.0f ? -87.0f : t;
  const float kRound = 12582912.0f;  // 1.5·2^23: adding and subtracting it rounds to an integer
  const float fx = (t * 1.44269504088896341f + kRound) - kRound;
  float r = t - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t n = static_cast<int32_t>(fx);
  return p * u2f(static_cast<uint32_t>(n + 127) << 23);
}
static inline double exp_neg(double t) { return __builtin_exp(t); }

// σ(u) through e^-|u| (never overflows); silu(u) = u·σ(u); silu'(u) = σ(1 + u(1 − σ)).
template <class A>
static inline A sigmoid(A u) {
  const A e = exp_neg(-absv(u));
  const A r = A(1) / (A(1) + e);
  return u >= A(0) ? r : e * r;
}

enum : int { kActNone = 0, kActSilu = 1, kActRelu = 2, kActLeaky = 3 };

template <int ACT, class A>
static inline A act_fwd(A u, A slope) {
  if constexpr (ACT == kActSilu) {
    return u * sigmoid(u);
  } else if constexpr (ACT == kActRelu) {
    return u > A(0) ? u : (u != u ? u : A(0));  // NaN stays NaN
  } else if constexpr (ACT == kActLeaky) {
    return u > A(0) ? u : u * slope;
  } else {
    return u;
  }
}

// d act(u)/du · dy, torch's one-sided values at 0 (relu' = 0, leaky' = slope)
template <int ACT, class A>
static inline A act_bwd(A u, A dy, A slope) {
  if constexpr (ACT == kActSilu) {
    const A s = sigmoid(u);
    return dy * s * (A(1) + u * (A(1) - s));
  } else if constexpr (ACT == kActRelu) {
    return u > A(0) ? dy : A(0);
  } else if constexpr (ACT == kActLeaky) {
    return u > A(0) ? dy : dy * slope;
  } else {
    return dy;
  }
}

// n values of a strided run (stride 1: a plain converting copy; 0: a broadcast; else a gather) as compute type
template <class T, class A>
static inline void load_run(const T* __restrict p, int64_t stride, int64_t n, A* __restrict out) {
  if (stride == 1) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<A>(to_c(p[i]));
  } else if (stride == 0) {
    const A v = static_cast<A>(to_c(p[0]));
    for (int64_t i = 0; i < n; ++i) out[i] = v;
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<A>(to_c(p[i * stride]));
  }
}

template <class T, class A>
static inline void store_run(T* __restrict p, int64_t stride, int64_t n, const A* __restrict in) {
  if (stride == 1) {
    for (int64_t i = 0; i < n; ++i) p[i] = St<T>::from(in[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) p[i * stride] = St<T>::from(in[i]);
  }
}

constexpr int kLanes = 16;

// acc[k] += v[i] for i ≡ k (mod 16), in double: a fixed order on every ISA, vectorisable
template <class A>
static inline void lane_add(double* __restrict acc, const A* __restrict v, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) acc[k] += static_cast<double>(v[i + k]);
  }
  for (int k = 0; i < n; ++i, ++k) acc[k] += static_cast<double>(v[i]);
}

// acc[k] += a[i]·b[i], same lanes
template <class A>
static inline void lane_add_prod(double* __restrict acc, const A* __restrict a, const A* __restrict b, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) acc[k] += static_cast<double>(a[i + k]) * static_cast<double>(b[i + k]);
  }
  for (int k = 0; i < n; ++i, ++k) acc[k] += static_cast<double>(a[i]) * static_cast<double>(b[i]);
}

static inline double lane_total(const double* acc) {
  double s = 0.0;
  for (int k = 0; k < kLanes; ++k) s += acc[k];
  return s;
}
