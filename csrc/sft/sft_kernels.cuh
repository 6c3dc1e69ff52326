// The CUDA kernels of the burstkern_C sft ops, their launches and host code, written once: nvcc builds them for the
// GPU (sft_cuda.cu, launch policy CudaLaunch), the C++ compiler for the SIMT emulation of the tests (sft_cpu.cpp in
// a testing build, EmuLaunch). Argument checks: sft.h; element math: element.cuh.
//
// The tile functors below run by one tile kernel (a block per (n, c, HW chunk) in NCHW, per (n, channel tile, pixel
// chunk) in channels_last, 16-byte vectors where aligned, 64-bit indices), the per-block sums of reducing passes written as fixed-order partials
// and summed in a fixed order by a small finalize kernel: deterministic, no float atomics. fp32 math for
// float/half/bfloat16 storage.
//
// Launches: sft_modulate 1; its backward 1 (+1 finalize for per-channel gamma/beta); sft_group_norm 3 (statistics,
// finalize, apply); its backward 3 (sums + spatial dgamma/dbeta, finalize, dx). Registers (sm_90, nvcc 13.0): the
// NCHW kernels 28-80 (forward 28-48: full occupancy); channels_last keeps V channels' parameters and sums per
// thread, up to 165 for the bf16 GroupNorm backward (one 256-thread block per SM: a known cost, not yet tuned).
//
// Functors: one per pass, around the element math of element.cuh. Tile functors (run by the tile walk) derive
// TileFn<K, kReduce> and have
//   prepare(T, n, c0, lanes)               per-thread, per-channel parameters (read once per thread),
//   step(T, n, c0, hw, lanes, acc)         V lanes at position hw: elementwise outputs, and (kReduce) per-lane terms
//                                          added to acc[lane][0..K) that the block sums into per-(n, c, chunk)
//                                          partials [K][N][C][nchunk];
// finalize functors run once per index of a small range and sum those partials in a fixed order (deterministic:
// no float atomics anywhere).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <tuple>

#include "common/alloc.h"
#include "common/dispatch.h"
#include "common/load.h"
#include "common/simt.h"
#include "sft/element.cuh"
#include "sft/sft.h"

namespace burstkern {
namespace sft {
// internal linkage: nvcc and the C++ compiler build different bodies under the same names
namespace {

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

// gamma/beta of one call: spatial ([N, C, H, W]) or per-channel ([N, C, 1, 1], sHW = 0) strided views; b ==
// nullptr when there is no shift. act, slope: the activation after the modulation.
template <typename scalar_t>
struct ModIn {
  const scalar_t *g, *b;
  Strided gs, bs;
  bool g_sp, b_sp;
  int act;
  float slope;
};

// The gamma/beta gradients of one call, laid out as dgs/dbs: written by the passes where spatial, else by the
// finalize from per-channel sums; db == nullptr without beta.
template <typename scalar_t>
struct ModGrads {
  scalar_t *dg, *db;
  Strided dgs, dbs;
};

template <int V>
struct ModLanes {
  float g[V], b[V];  // per-channel gamma/beta of the thread's lanes (unused when spatial)
};

template <int V, bool CL, typename scalar_t>
BURSTKERN_HD void mod_prepare(const ModIn<scalar_t>& m, const Tiling&, int64_t n, int64_t c0, ModLanes<V>& L) {
  // per-channel: lanes are channels in channels_last (stride sC), one channel in NCHW (broadcast)
  if (!m.g_sp) load_lanes<V>(m.g, m.gs.at(n, c0, 0), CL ? m.gs.sC : 0, CL && m.gs.vec, L.g);
  if (m.b != nullptr && !m.b_sp) {
    load_lanes<V>(m.b, m.bs.at(n, c0, 0), CL ? m.bs.sC : 0, CL && m.bs.vec, L.b);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) L.b[k] = 0.0f;
  }
}

// (1 + gamma) and beta of the V lanes at hw.
template <int V, bool CL, typename scalar_t>
BURSTKERN_HD void mod_values(const ModIn<scalar_t>& m, const Tiling&, int64_t n, int64_t c0, int64_t hw,
                             const ModLanes<V>& L, float (&g1)[V], float (&b)[V]) {
  if (m.g_sp) {
    load_lanes<V>(m.g, m.gs.at(n, c0, hw), CL ? m.gs.sC : m.gs.sHW, m.gs.vec, g1);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) g1[k] = L.g[lane<CL>(k)];
  }
#pragma unroll
  for (int k = 0; k < V; ++k) g1[k] += 1.0f;
  if (m.b != nullptr && m.b_sp) {
    load_lanes<V>(m.b, m.bs.at(n, c0, hw), CL ? m.bs.sC : m.bs.sHW, m.bs.vec, b);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) b[k] = L.b[lane<CL>(k)];
  }
}

// The gamma/beta gradients gg, gb of the V lanes at hw: stored where spatial, else summed into acc[.][KG] (gamma)
// and acc[.][KG + 1] (beta).
template <int KG, int V, bool CL, int K, typename scalar_t>
BURSTKERN_HD void mod_grads(const ModIn<scalar_t>& m, const ModGrads<scalar_t>& d, int64_t n, int64_t c0, int64_t hw,
                            const float (&gg)[V], const float (&gb)[V], float (*acc)[K]) {
  if (m.g_sp) {
    store_lanes<V>(d.dg, d.dgs.at(n, c0, hw), CL ? d.dgs.sC : d.dgs.sHW, d.dgs.vec, gg);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) acc[lane<CL>(k)][KG] += gg[k];
  }
  if (m.b != nullptr) {
    if (m.b_sp) {
      store_lanes<V>(d.db, d.dbs.at(n, c0, hw), CL ? d.dbs.sC : d.dbs.sHW, d.dbs.vec, gb);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) acc[lane<CL>(k)][KG + 1] += gb[k];
    }
  }
}

// The inputs of a modulated step at hw: x's V lanes, (1 + gamma) and beta; returns the lanes' dense offset.
template <int V, bool CL, typename scalar_t>
BURSTKERN_HD int64_t mod_step_in(const scalar_t* x, const ModIn<scalar_t>& m, const ModLanes<V>& ml, const Tiling& T,
                                 int64_t n, int64_t c0, int64_t hw, float (&xv)[V], float (&g1)[V], float (&b)[V]) {
  const int64_t off = dense_at<CL>(T, n, c0, hw);
  load_lanes<V>(x, off, 1, V > 1, xv);
  mod_values<V, CL>(m, T, n, c0, hw, ml, g1, b);
  return off;
}

// The walk's traits of a tile functor: K terms per lane, summed by the block into partials when kReduce.
template <int K_, bool kReduce_>
struct TileFn {
  static constexpr int K = K_;
  static constexpr bool kReduce = kReduce_;
};

// ---------------------------------------------------------------------------------------------------------------
// sft_modulate
// ---------------------------------------------------------------------------------------------------------------
template <typename scalar_t, int V>
struct ModFwdFn : TileFn<1, false> {
  using Lanes = ModLanes<V>;
  ModIn<scalar_t> m;
  const scalar_t* x;
  scalar_t* out;

  template <bool CL>
  BURSTKERN_HD void prepare(const Tiling& T, int64_t n, int64_t c0, Lanes& L) const {
    mod_prepare<V, CL>(m, T, n, c0, L);
  }

  template <bool CL>
  BURSTKERN_HD void step(const Tiling& T, int64_t n, int64_t c0, int64_t hw, const Lanes& L, float (*)[K]) const {
    float xv[V], g1[V], b[V], o[V];
    const int64_t off = mod_step_in<V, CL>(x, m, L, T, n, c0, hw, xv, g1, b);
#pragma unroll
    for (int k = 0; k < V; ++k) o[k] = act_fwd(xv[k] * g1[k] + b[k], m.act, m.slope);
    store_lanes<V>(out, off, 1, V > 1, o);
  }
};

// dx elementwise; spatial dgamma/dbeta elementwise, per-channel ones as sums (acc[.][0] gamma, [1] beta).
template <typename scalar_t, int V>
struct ModBwdFn : TileFn<2, true> {
  using Lanes = ModLanes<V>;
  ModIn<scalar_t> m;
  const scalar_t *dy, *x;
  scalar_t* dx;
  ModGrads<scalar_t> d;

  template <bool CL>
  BURSTKERN_HD void prepare(const Tiling& T, int64_t n, int64_t c0, Lanes& L) const {
    mod_prepare<V, CL>(m, T, n, c0, L);
  }

  template <bool CL>
  BURSTKERN_HD void step(const Tiling& T, int64_t n, int64_t c0, int64_t hw, const Lanes& L, float (*acc)[K]) const {
    float xv[V], gv[V], g1[V], b[V], o[V], gg[V];
    const int64_t off = mod_step_in<V, CL>(x, m, L, T, n, c0, hw, xv, g1, b);
    load_lanes<V>(dy, off, 1, V > 1, gv);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      gv[k] = act_bwd(xv[k] * g1[k] + b[k], gv[k], m.act, m.slope);  // gradient wrt u
      o[k] = gv[k] * g1[k];
      gg[k] = gv[k] * xv[k];
    }
    store_lanes<V>(dx, off, 1, V > 1, o);
    mod_grads<0, V, CL>(m, d, n, c0, hw, gg, gv, acc);
  }
};

// Per-channel dgamma/dbeta of sft_modulate: one index per (n, c), chunk partials summed in order.
template <typename scalar_t>
struct ModBwdFinalizeFn {
  const float* part;  // [2][N][C][nchunk]
  int64_t N, C, nchunk;
  ModGrads<scalar_t> d;  // dg/db nullptr: that gradient is spatial or absent

  BURSTKERN_HD void operator()(int64_t i) const {
    const int64_t n = i / C, c = i % C;
    const int64_t plane = N * C * nchunk;
    float sg = 0.0f, sb = 0.0f;
    for (int64_t j = 0; j < nchunk; ++j) {
      sg += part[i * nchunk + j];
      sb += part[plane + i * nchunk + j];
    }
    if (d.dg != nullptr) d.dg[d.dgs.at(n, c, 0)] = static_cast<scalar_t>(sg);
    if (d.db != nullptr) d.db[d.dbs.at(n, c, 0)] = static_cast<scalar_t>(sb);
  }
};

// ---------------------------------------------------------------------------------------------------------------
// sft_group_norm
// ---------------------------------------------------------------------------------------------------------------
// Statistics: per lane, Σ(x − p) and Σ(x − p)² about a pivot p = the group's first element of that sample (the
// shifted-data form of Welford's update: a pivot drawn from the data keeps the sums O(std), so a mean of 1e4 with
// std 1 cancels nothing, and no per-element division is needed); per (n, c, chunk) partials [2][N][C][nchunk],
// merged by GnStatsFinalizeFn with Chan's formula.
template <typename scalar_t, int V>
struct GnStatsFn : TileFn<2, true> {
  struct Lanes {
    float p[V];
  };
  const scalar_t* x;
  int64_t Cg;

  template <bool CL>
  BURSTKERN_HD void prepare(const Tiling& T, int64_t n, int64_t c0, Lanes& L) const {
#pragma unroll
    for (int k = 0; k < (CL ? V : 1); ++k) {
      const int64_t c = CL ? c0 + k : c0;
      L.p[k] = ld(x, dense_at<CL>(T, n, (c / Cg) * Cg, 0));
    }
  }

  template <bool CL>
  BURSTKERN_HD void step(const Tiling& T, int64_t n, int64_t c0, int64_t hw, const Lanes& L, float (*acc)[K]) const {
    float xv[V];
    load_lanes<V>(x, dense_at<CL>(T, n, c0, hw), 1, V > 1, xv);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float d = xv[k] - L.p[lane<CL>(k)];
      acc[lane<CL>(k)][0] += d;
      acc[lane<CL>(k)][1] += d * d;
    }
  }
};

// mean/rstd [N, G] (fp32): each (channel, chunk) partial becomes (count, mean, M2) (M2 = Σd² − (Σd)²/count, from
// the shifted sums, so it cancels nothing), and the partials are merged with Chan's parallel formula, channels then
// chunks in a fixed order: exact for partial means that differ, whatever the pivot. One index per (n, g).
template <typename scalar_t>
struct GnStatsFinalizeFn {
  const float* part;
  const scalar_t* x;
  Tiling T;
  int64_t G, Cg;
  float eps;
  float *mean, *rstd;

  BURSTKERN_HD void operator()(int64_t i) const {
    const int64_t n = i / G, g = i % G;
    const int64_t plane = T.N * T.C * T.nchunk;
    int64_t cnt = 0;
    float mu = 0.0f, m2 = 0.0f;  // mean about the pivot, sum of squared deviations
    for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
      const int64_t row = (n * T.C + c) * T.nchunk;
      for (int64_t j = 0; j < T.nchunk; ++j) {
        // a chunk covers T.chunk positions of its row (NCHW) or pixels (channels_last), the last one the rest
        const int64_t left = T.HW - j * T.chunk;
        const int64_t nj = left < T.chunk ? left : T.chunk;
        const int64_t tot = cnt + nj;
        const float s1 = part[row + j], s2 = part[plane + row + j];
        const float mj = s1 / static_cast<float>(nj);
        const float m2j = s2 - s1 * mj;
        const float delta = mj - mu;
        const float wj = static_cast<float>(nj) / static_cast<float>(tot);
        mu += delta * wj;
        m2 += (m2j > 0.0f ? m2j : 0.0f) + delta * delta * static_cast<float>(cnt) * wj;
        cnt = tot;
      }
    }
    const float var = m2 / static_cast<float>(cnt);
    mean[i] = ld(x, T.cl ? dense_at<true>(T, n, g * Cg, 0) : dense_at<false>(T, n, g * Cg, 0)) + mu;
    rstd[i] = 1.0f / sqrtf(var + eps);
  }
};

// Per-lane GroupNorm parameters: mean, rstd of the lane's group, weight, bias (1, 0 when absent).
template <int V>
struct NormLanes {
  float mean[V], rstd[V], w[V], bias[V];
};

// The GroupNorm of one call: the [N, G] statistics and the optional weight/bias (strides ws, bs), G groups of Cg.
template <typename scalar_t>
struct NormIn {
  const float *mean, *rstd;
  const scalar_t *w, *bias;
  int64_t ws, bs, G, Cg;
};

// The lanes of the GroupNorm passes: their normalisation and their modulation.
template <int V>
struct GnLanes {
  NormLanes<V> nl;
  ModLanes<V> ml;
};

template <int V, bool CL, typename scalar_t>
BURSTKERN_HD void gn_prepare(const Tiling& T, int64_t n, int64_t c0, const NormIn<scalar_t>& p,
                             const ModIn<scalar_t>& m, GnLanes<V>& L) {
#pragma unroll
  for (int k = 0; k < (CL ? V : 1); ++k) {
    const int64_t c = CL ? c0 + k : c0;
    const int64_t ng = n * p.G + c / p.Cg;
    L.nl.mean[k] = p.mean[ng];
    L.nl.rstd[k] = p.rstd[ng];
    L.nl.w[k] = p.w != nullptr ? ld(p.w, c * p.ws) : 1.0f;
    L.nl.bias[k] = p.bias != nullptr ? ld(p.bias, c * p.bs) : 0.0f;
  }
  mod_prepare<V, CL>(m, T, n, c0, L.ml);
}

// The pre-activation gradient of lane k at x: h = (x − mean)·rstd, h_aff = h·w + bias, gu = act'(h_aff·g1 + b)·gy.
template <bool CL, int V>
BURSTKERN_HD float gn_grad_u(const GnLanes<V>& L, int k, float x, float g1, float b, float gy, int act, float slope,
                             float& h, float& ha) {
  h = (x - L.nl.mean[lane<CL>(k)]) * L.nl.rstd[lane<CL>(k)];
  ha = h * L.nl.w[lane<CL>(k)] + L.nl.bias[lane<CL>(k)];
  return act_bwd(ha * g1 + b, gy, act, slope);
}

// normalise + affine + modulate + act in one pass.
template <typename scalar_t, int V>
struct GnFwdFn : TileFn<1, false> {
  using Lanes = GnLanes<V>;
  ModIn<scalar_t> m;
  NormIn<scalar_t> nm;
  const scalar_t* x;
  scalar_t* out;

  template <bool CL>
  BURSTKERN_HD void prepare(const Tiling& T, int64_t n, int64_t c0, Lanes& L) const {
    gn_prepare<V, CL>(T, n, c0, nm, m, L);
#pragma unroll
    for (int k = 0; k < (CL ? V : 1); ++k) L.nl.rstd[k] *= L.nl.w[k];  // (x − mean)·(rstd·w) + bias
  }

  template <bool CL>
  BURSTKERN_HD void step(const Tiling& T, int64_t n, int64_t c0, int64_t hw, const Lanes& L, float (*)[K]) const {
    float xv[V], g1[V], b[V], o[V];
    const int64_t off = mod_step_in<V, CL>(x, m, L.ml, T, n, c0, hw, xv, g1, b);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float h = (xv[k] - L.nl.mean[lane<CL>(k)]) * L.nl.rstd[lane<CL>(k)] + L.nl.bias[lane<CL>(k)];
      o[k] = act_fwd(h * g1[k] + b[k], m.act, m.slope);
    }
    store_lanes<V>(out, off, 1, V > 1, o);
  }
};

// Backward pass 1: recompute h = (x − mean)·rstd, h_aff = h·w + bias, u, gu = dL/du, g_haff = gu·(1 + gamma);
// sums per (n, c): [0] Σ g_haff, [1] Σ g_haff·h, [2] Σ gu·h_aff (per-channel gamma), [3] Σ gu (per-channel
// beta); spatial dgamma/dbeta written here.
template <typename scalar_t, int V>
struct GnBwdFn : TileFn<4, true> {
  using Lanes = GnLanes<V>;
  ModIn<scalar_t> m;
  NormIn<scalar_t> nm;
  const scalar_t *dy, *x;
  ModGrads<scalar_t> d;

  template <bool CL>
  BURSTKERN_HD void prepare(const Tiling& T, int64_t n, int64_t c0, Lanes& L) const {
    gn_prepare<V, CL>(T, n, c0, nm, m, L);
  }

  template <bool CL>
  BURSTKERN_HD void step(const Tiling& T, int64_t n, int64_t c0, int64_t hw, const Lanes& L, float (*acc)[K]) const {
    float xv[V], gv[V], g1[V], b[V], gg[V];
    const int64_t off = mod_step_in<V, CL>(x, m, L.ml, T, n, c0, hw, xv, g1, b);
    load_lanes<V>(dy, off, 1, V > 1, gv);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float h, ha;
      gv[k] = gn_grad_u<CL>(L, k, xv[k], g1[k], b[k], gv[k], m.act, m.slope, h, ha);
      const float gha = gv[k] * g1[k];
      acc[lane<CL>(k)][0] += gha;
      acc[lane<CL>(k)][1] += gha * h;
      gg[k] = gv[k] * ha;
    }
    mod_grads<2, V, CL>(m, d, n, c0, hw, gg, gv, acc);
  }
};

// Backward finalize, one index range in one launch:
//   [0, N·G):            coef[0][n, g] = Σ_c w_c Σ g_haff / M,  coef[1][n, g] = Σ_c w_c Σ g_haff·h / M  (M = Cg·HW)
//   [N·G, N·G + C):      dweight[c] = Σ_n Σ g_haff·h,  dbias[c] = Σ_n Σ g_haff
//   [N·G + C, ... + N·C): per-channel dgamma[n, c] = Σ gu·h_aff, dbeta[n, c] = Σ gu
// each sum in a fixed order (rows of chunk partials, then rows in order).
template <typename scalar_t>
struct GnBwdFinalizeFn {
  const float* part;  // [4][N][C][nchunk]
  Tiling T;
  int64_t G, Cg;
  const scalar_t* w;
  int64_t ws;
  float* coef;  // [2][N][G]
  scalar_t *dw, *dbias;  // nullptr: not wanted
  ModGrads<scalar_t> d;  // dg/db nullptr: spatial or absent

  BURSTKERN_HD float row_sum(int k, int64_t n, int64_t c) const {
    const float* p = part + k * (T.N * T.C * T.nchunk) + (n * T.C + c) * T.nchunk;
    float s = 0.0f;
    for (int64_t j = 0; j < T.nchunk; ++j) s += p[j];
    return s;
  }

  BURSTKERN_HD void operator()(int64_t i) const {
    const int64_t NG = T.N * G;
    if (i < NG) {
      const int64_t n = i / G, g = i % G;
      float s0 = 0.0f, s1 = 0.0f;
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        const float wc = w != nullptr ? ld(w, c * ws) : 1.0f;
        s0 += wc * row_sum(0, n, c);
        s1 += wc * row_sum(1, n, c);
      }
      const float inv = 1.0f / static_cast<float>(Cg * T.HW);
      coef[i] = s0 * inv;
      coef[NG + i] = s1 * inv;
    } else if (i < NG + T.C) {
      const int64_t c = i - NG;
      float sa = 0.0f, sb = 0.0f;
      for (int64_t n = 0; n < T.N; ++n) {
        sa += row_sum(0, n, c);
        sb += row_sum(1, n, c);
      }
      if (dw != nullptr) dw[c] = static_cast<scalar_t>(sb);
      if (dbias != nullptr) dbias[c] = static_cast<scalar_t>(sa);
    } else {
      const int64_t r = i - NG - T.C;
      const int64_t n = r / T.C, c = r % T.C;
      if (d.dg != nullptr) d.dg[d.dgs.at(n, c, 0)] = static_cast<scalar_t>(row_sum(2, n, c));
      if (d.db != nullptr) d.db[d.dbs.at(n, c, 0)] = static_cast<scalar_t>(row_sum(3, n, c));
    }
  }
};

// Backward pass 2: dx = rstd·(w·g_haff − coef0 − h·coef1), recomputing h and g_haff from x (nothing stored).
template <typename scalar_t, int V>
struct GnBwdDxFn : TileFn<1, false> {
  struct Lanes : GnLanes<V> {
    float m0[V], m1[V];
  };
  ModIn<scalar_t> m;
  NormIn<scalar_t> nm;
  const float* coef;
  const scalar_t *dy, *x;
  scalar_t* dx;

  template <bool CL>
  BURSTKERN_HD void prepare(const Tiling& T, int64_t n, int64_t c0, Lanes& L) const {
    gn_prepare<V, CL>(T, n, c0, nm, m, L);
#pragma unroll
    for (int k = 0; k < (CL ? V : 1); ++k) {
      const int64_t ng = n * nm.G + (CL ? c0 + k : c0) / nm.Cg;
      L.m0[k] = coef[ng];
      L.m1[k] = coef[T.N * nm.G + ng];
    }
  }

  template <bool CL>
  BURSTKERN_HD void step(const Tiling& T, int64_t n, int64_t c0, int64_t hw, const Lanes& L, float (*)[K]) const {
    float xv[V], gv[V], g1[V], b[V];
    const int64_t off = mod_step_in<V, CL>(x, m, L.ml, T, n, c0, hw, xv, g1, b);
    load_lanes<V>(dy, off, 1, V > 1, gv);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float h, ha;
      const float gha = gn_grad_u<CL>(L, k, xv[k], g1[k], b[k], gv[k], m.act, m.slope, h, ha) * g1[k];
      const int l = lane<CL>(k);
      gv[k] = L.nl.rstd[l] * (L.nl.w[l] * gha - L.m0[l] - h * L.m1[l]);
    }
    store_lanes<V>(dx, off, 1, V > 1, gv);
  }
};

// ---------------------------------------------------------------------------------------------------------------
// the block reduction: each thread's lane sums go to shared memory (NCHW: lane 0 only, the lanes are one channel),
// a fixed tree sums them (NCHW: all threads; channels_last: the rows of each column) with __syncthreads() between
// the levels, and row 0 writes the block's partial of each channel.
// ---------------------------------------------------------------------------------------------------------------
template <int V, int K, bool CL>
BURSTKERN_HD void block_store(int64_t t, const float (*acc)[K], float* sm) {
  float* s = sm + t * V * K;
  if constexpr (!CL) {  // the thread's lanes are one channel, summed into lane 0 by step
#pragma unroll
    for (int j = 0; j < K; ++j) s[j] = acc[0][j];
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) {
#pragma unroll
      for (int j = 0; j < K; ++j) s[k * K + j] = acc[lane<CL>(k)][j];
    }
  }
}

// One tree level: rows [0, half) add rows [half, 2·half) (a row is one thread in NCHW).
template <int V, int K, bool CL>
BURSTKERN_HD void block_level(const Tiling& T, int64_t t, int64_t half, float* sm) {
  const int64_t cols = CL ? T.cols : 1;
  if (t / cols >= half) return;
  const int width = CL ? V * K : K;
  float* a = sm + t * V * K;
  const float* b = sm + (t + half * cols) * V * K;
  for (int j = 0; j < width; ++j) a[j] += b[j];
}

template <int V, int K, bool CL>
BURSTKERN_HD void block_write(const Tiling& T, int64_t b, int64_t t, const float* sm, float* part) {
  const int64_t cols = CL ? T.cols : 1;
  if (t >= cols) return;
  const ThreadWalk w = thread_walk<V, CL>(T, b, t);
  if (!w.active) return;
  const int64_t plane = T.N * T.C * T.nchunk;
  const float* s = sm + t * V * K;
  for (int k = 0; k < (CL ? V : 1); ++k) {
    const int64_t idx = (w.n * T.C + w.c0 + k) * T.nchunk + w.chunk;
    for (int j = 0; j < K; ++j) part[j * plane + idx] = s[k * K + j];
  }
}

// The per-thread part of a tile kernel: prepare, walk, accumulate.
template <int V, bool CL, class F>
BURSTKERN_HD void thread_run(const F& fn, const Tiling& T, int64_t b, int64_t t, float (*acc)[F::K]) {
#pragma unroll
  for (int k = 0; k < V; ++k) {
#pragma unroll
    for (int j = 0; j < F::K; ++j) acc[lane<CL>(k)][j] = 0.0f;
  }
  const ThreadWalk w = thread_walk<V, CL>(T, b, t);
  if (!w.active || w.first >= w.end) return;
  typename F::Lanes L;
  fn.template prepare<CL>(T, w.n, w.c0, L);
  for (int64_t hw = w.first; hw < w.end; hw += w.step) fn.template step<CL>(T, w.n, w.c0, hw, L, acc);
}

template <int V, bool CL, class F>
__global__ void __launch_bounds__(kThreads) tile_kernel(const F fn, const Tiling T, float* __restrict__ part) {
  const int64_t b = blockIdx.x, t = threadIdx.x;
  float acc[V][F::K];
  thread_run<V, CL>(fn, T, b, t, acc);
  if constexpr (F::kReduce) {
    if (part == nullptr) return;  // nothing to reduce in this call (e.g. spatial gamma and beta): whole block
    // V·K floats per thread: at most 8·4·256·4 B = 32 KiB
    __shared__ float sm[kThreads * V * F::K];
    block_store<V, F::K, CL>(t, acc, sm);
    __syncthreads();
    for (int64_t half = T.rows() / 2; half >= 1; half >>= 1) {
      block_level<V, F::K, CL>(T, t, half, sm);
      __syncthreads();
    }
    block_write<V, F::K, CL>(T, b, t, sm, part);
  }
}

template <class F>
__global__ void __launch_bounds__(kThreads) each_kernel(const F fn, int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) fn(i);
}

// The launches of the kernels above on launch policy L (CudaLaunch, or the SIMT emulation's EmuLaunch): the
// executor functions the host code below calls.
template <class L>
struct KernelLaunch : L {
  template <int V, class F>
  static void tile(const F& fn, const Tiling& T, float* part) {
    if (T.blocks == 0) return;
    const dim3 grid(static_cast<unsigned int>(T.blocks));
    if (T.cl) {
      L::launch(tile_kernel<V, true, F>, grid, dim3(kThreads), fn, T, part);
    } else {
      L::launch(tile_kernel<V, false, F>, grid, dim3(kThreads), fn, T, part);
    }
  }

  template <class F>
  static void each(const F& fn, int64_t count) {
    if (count == 0) return;
    const int64_t blocks = std::min<int64_t>((count + kThreads - 1) / kThreads, 65535);
    L::launch(each_kernel<F>, dim3(static_cast<unsigned int>(blocks)), dim3(kThreads), fn, count);
  }
};

// ---------------------------------------------------------------------------------------------------------------
// host code: layouts, outputs, tiling, dtype/vector-width dispatch. Exec: KernelLaunch<L> (device traits, Guard,
// tile<V>(fn, tiling, partials): the tile walk over tiling.blocks blocks, partials [K][N][C][nchunk] written when
// F::kReduce and partials != nullptr; each(fn, count): fn(i) for i in [0, count)).
// Passes: sft_modulate: tile(ModFwd); backward: tile(ModBwd) [+ each(ModBwdFinalize) for per-channel
// gamma/beta]; sft_group_norm: tile(GnStats), each(GnStatsFinalize), tile(GnFwd); backward: tile(GnBwd),
// each(GnBwdFinalize), tile(GnBwdDx).
// ---------------------------------------------------------------------------------------------------------------
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

template <typename scalar_t>
ModIn<scalar_t> mod_in(const Split& s, int V, bool cl, int64_t act, double slope) {
  ModIn<scalar_t> m{};
  m.act = static_cast<int>(act);
  m.slope = static_cast<float>(slope);
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

// The gradient buffers' views the kernels write (db: only with beta).
template <typename scalar_t>
ModGrads<scalar_t> mod_grads_of(const GradBufs& gb, int V, bool cl) {
  ModGrads<scalar_t> d{};
  d.dg = gb.dg.mutable_data_ptr<scalar_t>();
  d.dgs = strided_of(gb.dg, "grad_gamma", V, cl);
  if (gb.db.defined()) {
    d.db = gb.db.mutable_data_ptr<scalar_t>();
    d.dbs = strided_of(gb.db, "grad_beta", V, cl);
  }
  return d;
}

// The GroupNorm of a call with G groups of Cg channels, [N, G] statistics mean/rstd.
template <typename scalar_t>
NormIn<scalar_t> norm_in(const Tensor& mean, const Tensor& rstd, const std::optional<Tensor>& weight,
                         const std::optional<Tensor>& bias, int64_t G, int64_t Cg) {
  NormIn<scalar_t> p{};
  p.mean = mean.const_data_ptr<float>();
  p.rstd = rstd.const_data_ptr<float>();
  p.w = weight.has_value() ? weight->const_data_ptr<scalar_t>() : nullptr;
  p.ws = weight.has_value() ? weight->stride(0) : 0;
  p.bias = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
  p.bs = bias.has_value() ? bias->stride(0) : 0;
  p.G = G;
  p.Cg = Cg;
  return p;
}

inline int64_t next_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// NCHW: blocks of (n, c, chunk of ~E positions); channels_last: (n, channel tile, chunk of pixels), the tile's
// channels as power-of-two vector columns and the rest of the 256 threads as pixel rows.
inline Tiling make_tiling(const XLayout& L, int V) {
  const int64_t E = std::max<int64_t>(1, testing::sft_tile_elements());
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

// Calls body.template operator()<scalar_t, V>() for x's dtype (float, half, bfloat16) and the chosen vector width
// (1 or 16 bytes).
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
  BURSTKERN_DISPATCH_FLOATING(false, x.scalar_type(), "sft", [&] { with_width<scalar_t>(V, body); });
}

inline Tensor float_ws(int64_t n, const Tensor& like) { return at::empty({n}, like.options().dtype(at::kFloat)); }

// ---------------------------------------------------------------------------------------------------------------
// sft_modulate
// ---------------------------------------------------------------------------------------------------------------
template <class Exec>
Tensor modulate(const Tensor& x, const Tensor& gamma, const std::optional<Tensor>& beta, int64_t act, double slope) {
  const Checked c = check_modulate<Exec>(x, gamma, beta, act, slope);
  const XLayout& L = c.L;
  const Split& s = c.s;
  typename Exec::Guard guard(x.device());
  Tensor out = new_output(x.sizes(), x.options(), L.fmt);
  if (L.N == 0) return out;
  const int V = vec_width(L, x.element_size(), {&x, &out});
  const Tiling T = make_tiling(L, V);
  dispatch(x, V, [&]<typename scalar_t, int kV>() {
    ModFwdFn<scalar_t, kV> fn{{}, mod_in<scalar_t>(s, kV, L.cl, act, slope), x.const_data_ptr<scalar_t>(),
                              out.mutable_data_ptr<scalar_t>()};
    Exec::template tile<kV>(fn, T, nullptr);
  });
  return out;
}

template <class Exec>
std::tuple<Tensor, Tensor, Tensor> modulate_backward(const Tensor& grad, const Tensor& x, const Tensor& gamma,
                                                     const std::optional<Tensor>& beta, int64_t act, double slope) {
  const Checked c = check_modulate_backward<Exec>(grad, x, gamma, beta, act, slope);
  const XLayout& L = c.L;
  const Split& s = c.s;
  typename Exec::Guard guard(x.device());
  Tensor dx = new_output(x.sizes(), x.options(), L.fmt);
  GradBufs gb = grad_bufs(x, L.fmt, L.C, gamma, beta, s.merged);
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
    fn.d = mod_grads_of<scalar_t>(gb, kV, L.cl);
    fn.m = mod_in<scalar_t>(s, kV, L.cl, act, slope);
    Exec::template tile<kV>(fn, T, part.defined() ? part.mutable_data_ptr<float>() : nullptr);
    if (part.defined()) {
      ModBwdFinalizeFn<scalar_t> fin{part.const_data_ptr<float>(), L.N, L.C, T.nchunk,
                                     {g_chan ? fn.d.dg : nullptr, b_chan ? fn.d.db : nullptr, fn.d.dgs, fn.d.dbs}};
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
  const Checked c = check_group_norm<Exec>(x, gamma, beta, G, weight, bias, eps, act, slope);
  const XLayout& L = c.L;
  const Split& s = c.s;
  typename Exec::Guard guard(x.device());
  Tensor out = new_output(x.sizes(), x.options(), L.fmt);
  const auto contiguous = at::MemoryFormat::Contiguous;
  Tensor mean = new_output({L.N, G}, x.options().dtype(at::kFloat), contiguous);
  Tensor rstd = new_output({L.N, G}, x.options().dtype(at::kFloat), contiguous);
  if (L.N == 0) return {out, mean, rstd};
  const int V = vec_width(L, x.element_size(), {&x, &out});
  const Tiling T = make_tiling(L, V);
  const int64_t Cg = L.C / G;
  Tensor part = float_ws(2 * L.N * L.C * T.nchunk, x);
  dispatch(x, V, [&]<typename scalar_t, int kV>() {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    GnStatsFn<scalar_t, kV> stats{{}, xp, Cg};
    Exec::template tile<kV>(stats, T, part.mutable_data_ptr<float>());
    GnStatsFinalizeFn<scalar_t> fin{part.const_data_ptr<float>(), xp, T, G, Cg, static_cast<float>(eps),
                                    mean.mutable_data_ptr<float>(), rstd.mutable_data_ptr<float>()};
    Exec::each(fin, L.N * G);
    GnFwdFn<scalar_t, kV> fn{};
    fn.x = xp;
    fn.out = out.mutable_data_ptr<scalar_t>();
    fn.m = mod_in<scalar_t>(s, kV, L.cl, act, slope);
    fn.nm = norm_in<scalar_t>(mean, rstd, weight, bias, G, Cg);
    Exec::template tile<kV>(fn, T, nullptr);
  });
  return {out, mean, rstd};
}

template <class Exec>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> group_norm_backward(
    const Tensor& grad, const Tensor& x, const Tensor& gamma, const std::optional<Tensor>& beta, int64_t G,
    const std::optional<Tensor>& weight, const std::optional<Tensor>& bias, const Tensor& mean, const Tensor& rstd,
    double eps, int64_t act, double slope) {
  const Checked c = check_group_norm_backward<Exec>(grad, x, gamma, beta, G, weight, bias, mean, rstd, eps, act,
                                                    slope);
  const XLayout& L = c.L;
  const Split& s = c.s;
  typename Exec::Guard guard(x.device());
  Tensor dx = new_output(x.sizes(), x.options(), L.fmt);
  GradBufs gb = grad_bufs(x, L.fmt, L.C, gamma, beta, s.merged);
  auto param_grad = [&](const std::optional<Tensor>& t) {
    return t.has_value() ? new_output(t->sizes(), t->options(), at::MemoryFormat::Contiguous) : placeholder(x);
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
    GnBwdFn<scalar_t, kV> p1{};
    p1.dy = grad.const_data_ptr<scalar_t>();
    p1.x = x.const_data_ptr<scalar_t>();
    p1.d = mod_grads_of<scalar_t>(gb, kV, L.cl);
    p1.m = mod_in<scalar_t>(s, kV, L.cl, act, slope);
    p1.nm = norm_in<scalar_t>(mean, rstd, weight, bias, G, Cg);
    Exec::template tile<kV>(p1, T, part.mutable_data_ptr<float>());
    GnBwdFinalizeFn<scalar_t> fin{part.const_data_ptr<float>(),
                                  T,
                                  G,
                                  Cg,
                                  p1.nm.w,
                                  p1.nm.ws,
                                  coef.mutable_data_ptr<float>(),
                                  weight.has_value() ? dw.mutable_data_ptr<scalar_t>() : nullptr,
                                  bias.has_value() ? dbias.mutable_data_ptr<scalar_t>() : nullptr,
                                  {g_chan ? p1.d.dg : nullptr, b_chan ? p1.d.db : nullptr, p1.d.dgs, p1.d.dbs}};
    Exec::each(fin, L.N * G + L.C + L.N * L.C);
    GnBwdDxFn<scalar_t, kV> p2{};
    p2.dy = p1.dy;
    p2.x = p1.x;
    p2.dx = dx.mutable_data_ptr<scalar_t>();
    p2.m = p1.m;
    p2.nm = p1.nm;
    p2.coef = coef.const_data_ptr<float>();
    Exec::template tile<kV>(p2, T, nullptr);
  });
  return {dx, gb.dgamma, gb.dbeta, dw, dbias};
}

// The executor of the CUDA kernels on launch policy L (register_impls).
template <class L>
struct KernelImpls {
  BURSTKERN_SFT_OPS(BURSTKERN_KERNEL_IMPL)
};

}  // namespace
}  // namespace sft
}  // namespace burstkern
