// Per-element math of the sft ops (burstkern/ops/sft/reference.py is the spec), __host__ __device__ and free of CUDA
// builtins: the CUDA kernels (sft_kernels.cuh) run it, and plain C++ may include it. fp32 math.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/hd.h"

namespace burstkern {
namespace sft {

// Activation codes of reference.ACT_CODES.
enum Act : int { kActNone = 0, kActSilu = 1, kActRelu = 2, kActLeaky = 3 };

// 1/(1 + e^-u) through e^-|u| only: never overflows (1/(1 + expf(-u)) is inf/NaN-prone for u < -88).
BURSTKERN_HD float sigmoid(float u) {
  const float e = expf(-fabsf(u));
  const float r = 1.0f / (1.0f + e);
  return u >= 0.0f ? r : e * r;
}

// a times the slope at u of a piecewise-linear act (relu, leaky, none): act(u) for a = u, act'(u)·dy for a = dy,
// with torch's one-sided values at u == 0 (relu' = 0, leaky' = slope).
BURSTKERN_HD float act_linear(float u, float a, int act, float slope) {
  switch (act) {
    case kActRelu:
      return u > 0.0f ? a : 0.0f;
    case kActLeaky:
      return u > 0.0f ? a : a * slope;
    default:
      return a;
  }
}

BURSTKERN_HD float act_fwd(float u, int act, float slope) {
  return act == kActSilu ? u * sigmoid(u) : act_linear(u, u, act, slope);
}

// d act(u)/du · dy
BURSTKERN_HD float act_bwd(float u, float dy, int act, float slope) {
  if (act == kActSilu) {
    const float s = sigmoid(u);
    return dy * s * (1.0f + u * (1.0f - s));
  }
  return act_linear(u, dy, act, slope);
}

}  // namespace sft
}  // namespace burstkern
