// Counter-based normals shared by every op that draws noise in-kernel: Philox 4x32-10 + Triton's uint->float +
// Box-Muller, i.e. exactly `tl.randn(seed, offset)` (the spec and its derivation: burstkern/ops/denoise/rng.py).
// Everything is __host__ __device__ and free of CUDA builtins, so the CPU kernels draw the very words the CUDA
// kernels draw and the tests can pin them to the spec on a machine without a GPU.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/hd.h"

namespace burstkern {
namespace philox {

constexpr uint32_t kRoundA = 0xD2511F53u;
constexpr uint32_t kRoundB = 0xCD9E8D57u;
constexpr uint32_t kKeyA = 0x9E3779B9u;
constexpr uint32_t kKeyB = 0xBB67AE85u;
constexpr int kRounds = 10;
// Triton's uint32 -> [0, 1) scale: the largest float with INT32_MAX * scale < 1 (bits 0x2FFFFFFF).
constexpr float kUniformScale = 4.6566127342e-10f;
constexpr float kTwoPi = 6.283185307179586f;

BURSTKERN_HD uint32_t mulhi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

struct Words {
  uint32_t c0, c1, c2, c3;
};

// Philox 4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1).
BURSTKERN_HD Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < kRounds; ++round) {
    const uint32_t hi_b = mulhi(kRoundB, c2), lo_b = kRoundB * c2;
    const uint32_t hi_a = mulhi(kRoundA, c0), lo_a = kRoundA * c0;
    c0 = hi_b ^ c1 ^ k0;
    c1 = lo_b;
    c2 = hi_a ^ c3 ^ k1;
    c3 = lo_a;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return {c0, c1, c2, c3};
}

// tl.randint4x(seed, offset) for an int64 offset: counter (offset lo, offset hi, 0, 0), key (seed lo, seed hi).
BURSTKERN_HD Words words(int64_t seed, int64_t offset) {
  const uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  return philox4x32_10(static_cast<uint32_t>(o), static_cast<uint32_t>(o >> 32), 0u, 0u, static_cast<uint32_t>(s),
                       static_cast<uint32_t>(s >> 32));
}

// Triton's uint_to_uniform_float for 32-bit words: bitcast to int32, negative v -> ~v, then v * scale in fp32.
BURSTKERN_HD float uniform(uint32_t r) {
  int32_t v = static_cast<int32_t>(r);
  v = v < 0 ? ~v : v;
  return static_cast<float>(v) * kUniformScale;
}

// tl.randn(seed, offset): Box-Muller on the first two words, cosine branch, float32 throughout.
BURSTKERN_HD float normal(int64_t seed, int64_t offset) {
  const Words w = words(seed, offset);
  float u1 = uniform(w.c0);
  const float u2 = uniform(w.c1);
  u1 = u1 < 1.0e-7f ? 1.0e-7f : u1;
  const float th = kTwoPi * u2;
  const float r = sqrtf(-2.0f * logf(u1));
  return r * cosf(th);
}

}  // namespace philox
}  // namespace burstkern
