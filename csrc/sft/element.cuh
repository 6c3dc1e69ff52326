// Per-element math and the tile walk of the sft ops (burstkern/ops/sft/reference.py is the spec; DESIGN.md "SFT").
// Every function here is __host__ __device__: the CUDA kernels (sft_cuda.cu) and the CPU loops of the burstkern_C
// ops (sft_cpu.cpp) run the very same code, so the CPU build pins the math, the addressing and the reduction order
// on a machine without a GPU. All math is fp32 whatever the storage dtype (float, half, bfloat16).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

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

BURSTKERN_HD float act_fwd(float u, int act, float slope) {
  switch (act) {
    case kActSilu:
      return u * sigmoid(u);
    case kActRelu:
      return u > 0.0f ? u : 0.0f;
    case kActLeaky:
      return u > 0.0f ? u : u * slope;
    default:
      return u;
  }
}

// d act(u)/du · dy, with torch's one-sided values at u == 0 (relu' = 0, leaky' = slope).
BURSTKERN_HD float act_bwd(float u, float dy, int act, float slope) {
  switch (act) {
    case kActSilu: {
      const float s = sigmoid(u);
      return dy * s * (1.0f + u * (1.0f - s));
    }
    case kActRelu:
      return u > 0.0f ? dy : 0.0f;
    case kActLeaky:
      return u > 0.0f ? dy : dy * slope;
    default:
      return dy;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// addressing: x-like tensors are dense [N, C, HW] in one of two orders (NCHW: (n·C + c)·HW + hw; channels_last:
// (n·HW + hw)·C + c); gamma/beta and their gradients are strided views (sN, sC, sHW), sHW = 0 for per-channel
// [N, C, 1, 1], channel slices of a merged [N, 2C, ...] tensor read and written in place.
// ---------------------------------------------------------------------------------------------------------------
struct Strided {
  int64_t sN, sC, sHW;
  bool vec;  // lane stride 1, 16-byte aligned base and outer strides: V lanes are one aligned vector

  BURSTKERN_HD int64_t at(int64_t n, int64_t c, int64_t hw) const { return n * sN + c * sC + hw * sHW; }
};

template <typename T, int V>
struct alignas(sizeof(T) * V) Packed {
  T v[V];
};

// V lanes at p[off + k·stride]: one 16-byte load when vec, one load broadcast when stride is 0.
template <int V, typename T>
BURSTKERN_HD void load_lanes(const T* p, int64_t off, int64_t stride, bool vec, float (&out)[V]) {
  if (V > 1 && vec) {
    const Packed<T, V> pk = *reinterpret_cast<const Packed<T, V>*>(p + off);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = static_cast<float>(pk.v[k]);
  } else if (stride == 0) {
    const float v = static_cast<float>(p[off]);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = v;
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = static_cast<float>(p[off + k * stride]);
  }
}

template <int V, typename T>
BURSTKERN_HD void store_lanes(T* p, int64_t off, int64_t stride, bool vec, const float (&in)[V]) {
  if (V > 1 && vec) {
    Packed<T, V> pk;
#pragma unroll
    for (int k = 0; k < V; ++k) pk.v[k] = static_cast<T>(in[k]);
    *reinterpret_cast<Packed<T, V>*>(p + off) = pk;
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) p[off + k * stride] = static_cast<T>(in[k]);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// the tile walk: one block of kThreads threads covers (n, a chunk of HW, all or a tile of the channels)
//   NCHW:          block = (n, c, HW chunk); thread t takes V consecutive hw at h0 + t·V, h0 + (t + T)·V, ...
//   channels_last: block = (n, channel tile, pixel chunk); threads form rows × cols, thread (row, col) takes the
//                  V consecutive channels c0 + col·V at pixels p0 + row, p0 + row + rows, ...
// so every thread's channels are fixed for the whole walk (per-channel parameters are read once per thread) and
// V lanes are one 16-byte vector of every x-like tensor (inner length divisible by V, else V = 1).
// ---------------------------------------------------------------------------------------------------------------
constexpr int kThreads = 256;

struct Tiling {
  int64_t N, C, HW;
  bool cl;         // channels_last
  int64_t chunk;   // elements along HW (NCHW) or pixels (channels_last) per block
  int64_t nchunk;  // chunks per (n, c) row (NCHW) or per (n, channel tile) (channels_last)
  int64_t cols;    // channels_last: vector columns per block (power of two), rows = kThreads / cols
  int64_t nctile;  // channels_last: channel tiles per sample
  int64_t blocks;

  BURSTKERN_HD int64_t rows() const { return cl ? kThreads / cols : kThreads; }
};

// Where thread t of block b works: sample n, first channel c0 (lane k is channel c0 + k in channels_last, c0 in
// NCHW), its first position, end, and step along HW; active false for a channels_last column past C.
struct ThreadWalk {
  int64_t n, c0, chunk, first, end, step;
  bool active;
};

template <int V, bool CL>
BURSTKERN_HD ThreadWalk thread_walk(const Tiling& T, int64_t b, int64_t t) {
  ThreadWalk w{};
  w.chunk = b % T.nchunk;
  const int64_t r = b / T.nchunk;
  const int64_t lo = w.chunk * T.chunk;
  w.end = lo + T.chunk < T.HW ? lo + T.chunk : T.HW;
  if constexpr (!CL) {
    w.n = r / T.C;
    w.c0 = r % T.C;
    w.first = lo + t * V;
    w.step = static_cast<int64_t>(kThreads) * V;
    w.active = true;
  } else {
    w.n = r / T.nctile;
    const int64_t col = t % T.cols, row = t / T.cols;
    w.c0 = ((r % T.nctile) * T.cols + col) * V;
    w.first = lo + row;
    w.step = kThreads / T.cols;
    w.active = w.c0 < T.C;
  }
  return w;
}

// Memory offset of (n, c, hw) in a dense x-like tensor.
template <bool CL>
BURSTKERN_HD int64_t dense_at(const Tiling& T, int64_t n, int64_t c, int64_t hw) {
  return CL ? (n * T.HW + hw) * T.C + c : (n * T.C + c) * T.HW + hw;
}

// The layout is a template parameter of the walk: in NCHW a thread's V lanes are one channel, so its per-channel
// parameters and sums live in lane 0 only (fewer registers, more resident blocks); in channels_last lane k is
// channel c0 + k.
template <bool CL>
BURSTKERN_HD constexpr int lane(int k) {
  return CL ? k : 0;
}

}  // namespace sft
}  // namespace burstkern
