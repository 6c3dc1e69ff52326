// One functor per pass of the sft ops, around the element math of element.cuh. Tile functors (run by the tile walk
// of element.cuh in sft_cuda.cu's kernels and sft_cpu.cpp's loops) have
//   prepare(T, n, c0, lanes)               per-thread, per-channel parameters (read once per thread),
//   step(T, n, c0, hw, lanes, acc)         V lanes at position hw: elementwise outputs, and (kReduce) per-lane terms
//                                          added to acc[lane][0..K) that the block sums into per-(n, c, chunk)
//                                          partials [K][N][C][nchunk];
// finalize functors run once per index of a small range and sum those partials in a fixed order (deterministic:
// no float atomics anywhere).
#pragma once

#include "sft/element.cuh"

namespace burstkern {
namespace sft {

template <typename T>
BURSTKERN_HD float ldf(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

// gamma/beta of one call: spatial ([N, C, H, W]) or per-channel ([N, C, 1, 1], sHW = 0) strided views; b ==
// nullptr when there is no shift.
template <typename scalar_t>
struct ModIn {
  const scalar_t *g, *b;
  Strided gs, bs;
  bool g_sp, b_sp;
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

// ---------------------------------------------------------------------------------------------------------------
// sft_modulate
// ---------------------------------------------------------------------------------------------------------------
template <typename scalar_t, int V>
struct ModFwdFn {
  static constexpr int K = 1;
  static constexpr bool kReduce = false;
  using Lanes = ModLanes<V>;
  const scalar_t* x;
  scalar_t* out;
  ModIn<scalar_t> m;
  int act;
  float slope;

  template <bool CL>
  BURSTKERN_HD void prepare(const Tiling& T, int64_t n, int64_t c0, Lanes& L) const {
    mod_prepare<V, CL>(m, T, n, c0, L);
  }

  template <bool CL>
  BURSTKERN_HD void step(const Tiling& T, int64_t n, int64_t c0, int64_t hw, const Lanes& L, float (*)[K]) const {
    const int64_t off = dense_at<CL>(T, n, c0, hw);
    float xv[V], g1[V], b[V], o[V];
    load_lanes<V>(x, off, 1, V > 1, xv);
    mod_values<V, CL>(m, T, n, c0, hw, L, g1, b);
#pragma unroll
    for (int k = 0; k < V; ++k) o[k] = act_fwd(xv[k] * g1[k] + b[k], act, slope);
    store_lanes<V>(out, off, 1, V > 1, o);
  }
};

// dx elementwise; spatial dgamma/dbeta elementwise, per-channel ones as sums (acc[.][0] gamma, [1] beta).
template <typename scalar_t, int V>
struct ModBwdFn {
  static constexpr int K = 2;
  static constexpr bool kReduce = true;
  using Lanes = ModLanes<V>;
  const scalar_t *dy, *x;
  scalar_t *dx, *dg, *db;  // dg/db: views laid out as dgs/dbs (written here only when spatial)
  Strided dgs, dbs;
  ModIn<scalar_t> m;
  int act;
  float slope;

  template <bool CL>
  BURSTKERN_HD void prepare(const Tiling& T, int64_t n, int64_t c0, Lanes& L) const {
    mod_prepare<V, CL>(m, T, n, c0, L);
  }

  template <bool CL>
  BURSTKERN_HD void step(const Tiling& T, int64_t n, int64_t c0, int64_t hw, const Lanes& L, float (*acc)[K]) const {
    const int64_t off = dense_at<CL>(T, n, c0, hw);
    float xv[V], gv[V], g1[V], b[V], o[V], gg[V];
    load_lanes<V>(x, off, 1, V > 1, xv);
    load_lanes<V>(dy, off, 1, V > 1, gv);
    mod_values<V, CL>(m, T, n, c0, hw, L, g1, b);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      gv[k] = act_bwd(xv[k] * g1[k] + b[k], gv[k], act, slope);  // gradient wrt u
      o[k] = gv[k] * g1[k];
      gg[k] = gv[k] * xv[k];
    }
    store_lanes<V>(dx, off, 1, V > 1, o);
    if (m.g_sp) {
      store_lanes<V>(dg, dgs.at(n, c0, hw), CL ? dgs.sC : dgs.sHW, dgs.vec, gg);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) acc[lane<CL>(k)][0] += gg[k];
    }
    if (m.b != nullptr) {
      if (m.b_sp) {
        store_lanes<V>(db, dbs.at(n, c0, hw), CL ? dbs.sC : dbs.sHW, dbs.vec, gv);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) acc[lane<CL>(k)][1] += gv[k];
      }
    }
  }
};

// Per-channel dgamma/dbeta of sft_modulate: one index per (n, c), chunk partials summed in order.
template <typename scalar_t>
struct ModBwdFinalizeFn {
  const float* part;  // [2][N][C][nchunk]
  int64_t N, C, nchunk;
  scalar_t *dg, *db;  // nullptr: that gradient is spatial or absent
  Strided dgs, dbs;

  BURSTKERN_HD void operator()(int64_t i) const {
    const int64_t n = i / C, c = i % C;
    const int64_t plane = N * C * nchunk;
    float sg = 0.0f, sb = 0.0f;
    for (int64_t j = 0; j < nchunk; ++j) {
      sg += part[i * nchunk + j];
      sb += part[plane + i * nchunk + j];
    }
    if (dg != nullptr) dg[dgs.at(n, c, 0)] = static_cast<scalar_t>(sg);
    if (db != nullptr) db[dbs.at(n, c, 0)] = static_cast<scalar_t>(sb);
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
struct GnStatsFn {
  static constexpr int K = 2;
  static constexpr bool kReduce = true;
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
      L.p[k] = ldf(x, dense_at<CL>(T, n, (c / Cg) * Cg, 0));
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
    mean[i] = ldf(x, T.cl ? dense_at<true>(T, n, g * Cg, 0) : dense_at<false>(T, n, g * Cg, 0)) + mu;
    rstd[i] = 1.0f / sqrtf(var + eps);
  }
};

// Per-lane GroupNorm parameters: mean, rstd of the lane's group, weight, bias (1, 0 when absent).
template <int V>
struct NormLanes {
  float mean[V], rstd[V], w[V], bias[V];
};

template <int V, bool CL, typename scalar_t>
BURSTKERN_HD void norm_prepare(const Tiling&, int64_t n, int64_t c0, int64_t G, int64_t Cg, const float* mean,
                               const float* rstd, const scalar_t* w, int64_t ws, const scalar_t* bias, int64_t bs,
                               NormLanes<V>& L) {
#pragma unroll
  for (int k = 0; k < (CL ? V : 1); ++k) {
    const int64_t c = CL ? c0 + k : c0;
    const int64_t ng = n * G + c / Cg;
    L.mean[k] = mean[ng];
    L.rstd[k] = rstd[ng];
    L.w[k] = w != nullptr ? ldf(w, c * ws) : 1.0f;
    L.bias[k] = bias != nullptr ? ldf(bias, c * bs) : 0.0f;
  }
}

// normalise + affine + modulate + act in one pass.
template <typename scalar_t, int V>
struct GnFwdFn {
  static constexpr int K = 1;
  static constexpr bool kReduce = false;
  struct Lanes {
    NormLanes<V> nl;
    ModLanes<V> ml;
  };
  const scalar_t* x;
  scalar_t* out;
  ModIn<scalar_t> m;
  const float *mean, *rstd;
  const scalar_t *w, *bias;
  int64_t ws, bs, G, Cg;
  int act;
  float slope;

  template <bool CL>
  BURSTKERN_HD void prepare(const Tiling& T, int64_t n, int64_t c0, Lanes& L) const {
    norm_prepare<V, CL>(T, n, c0, G, Cg, mean, rstd, w, ws, bias, bs, L.nl);
#pragma unroll
    for (int k = 0; k < (CL ? V : 1); ++k) L.nl.rstd[k] *= L.nl.w[k];  // (x − mean)·(rstd·w) + bias
    mod_prepare<V, CL>(m, T, n, c0, L.ml);
  }

  template <bool CL>
  BURSTKERN_HD void step(const Tiling& T, int64_t n, int64_t c0, int64_t hw, const Lanes& L, float (*)[K]) const {
    const int64_t off = dense_at<CL>(T, n, c0, hw);
    float xv[V], g1[V], b[V], o[V];
    load_lanes<V>(x, off, 1, V > 1, xv);
    mod_values<V, CL>(m, T, n, c0, hw, L.ml, g1, b);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float h = (xv[k] - L.nl.mean[lane<CL>(k)]) * L.nl.rstd[lane<CL>(k)] + L.nl.bias[lane<CL>(k)];
      o[k] = act_fwd(h * g1[k] + b[k], act, slope);
    }
    store_lanes<V>(out, off, 1, V > 1, o);
  }
};

// Backward pass 1: recompute h = (x − mean)·rstd, h_aff = h·w + bias, u, gu = dL/du, g_haff = gu·(1 + gamma);
// sums per (n, c): [0] Σ g_haff, [1] Σ g_haff·h, [2] Σ gu·h_aff (per-channel gamma), [3] Σ gu (per-channel
// beta); spatial dgamma/dbeta written here.
template <typename scalar_t, int V>
struct GnBwdFn {
  static constexpr int K = 4;
  static constexpr bool kReduce = true;
  struct Lanes {
    NormLanes<V> nl;
    ModLanes<V> ml;
  };
  const scalar_t *dy, *x;
  scalar_t *dg, *db;
  Strided dgs, dbs;
  ModIn<scalar_t> m;
  const float *mean, *rstd;
  const scalar_t *w, *bias;
  int64_t ws, bs, G, Cg;
  int act;
  float slope;

  template <bool CL>
  BURSTKERN_HD void prepare(const Tiling& T, int64_t n, int64_t c0, Lanes& L) const {
    norm_prepare<V, CL>(T, n, c0, G, Cg, mean, rstd, w, ws, bias, bs, L.nl);
    mod_prepare<V, CL>(m, T, n, c0, L.ml);
  }

  template <bool CL>
  BURSTKERN_HD void step(const Tiling& T, int64_t n, int64_t c0, int64_t hw, const Lanes& L, float (*acc)[K]) const {
    const int64_t off = dense_at<CL>(T, n, c0, hw);
    float xv[V], gv[V], g1[V], b[V], gg[V];
    load_lanes<V>(x, off, 1, V > 1, xv);
    load_lanes<V>(dy, off, 1, V > 1, gv);
    mod_values<V, CL>(m, T, n, c0, hw, L.ml, g1, b);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float h = (xv[k] - L.nl.mean[lane<CL>(k)]) * L.nl.rstd[lane<CL>(k)];
      const float ha = h * L.nl.w[lane<CL>(k)] + L.nl.bias[lane<CL>(k)];
      gv[k] = act_bwd(ha * g1[k] + b[k], gv[k], act, slope);
      const float gha = gv[k] * g1[k];
      acc[lane<CL>(k)][0] += gha;
      acc[lane<CL>(k)][1] += gha * h;
      gg[k] = gv[k] * ha;
    }
    if (m.g_sp) {
      store_lanes<V>(dg, dgs.at(n, c0, hw), CL ? dgs.sC : dgs.sHW, dgs.vec, gg);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) acc[lane<CL>(k)][2] += gg[k];
    }
    if (m.b != nullptr) {
      if (m.b_sp) {
        store_lanes<V>(db, dbs.at(n, c0, hw), CL ? dbs.sC : dbs.sHW, dbs.vec, gv);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) acc[lane<CL>(k)][3] += gv[k];
      }
    }
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
  scalar_t *dw, *dbias, *dg, *db;  // nullptr: not wanted (dg/db: spatial or absent)
  Strided dgs, dbs;

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
        const float wc = w != nullptr ? ldf(w, c * ws) : 1.0f;
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
      if (dg != nullptr) dg[dgs.at(n, c, 0)] = static_cast<scalar_t>(row_sum(2, n, c));
      if (db != nullptr) db[dbs.at(n, c, 0)] = static_cast<scalar_t>(row_sum(3, n, c));
    }
  }
};

// Backward pass 2: dx = rstd·(w·g_haff − coef0 − h·coef1), recomputing h and g_haff from x (nothing stored).
template <typename scalar_t, int V>
struct GnBwdDxFn {
  static constexpr int K = 1;
  static constexpr bool kReduce = false;
  struct Lanes {
    NormLanes<V> nl;
    ModLanes<V> ml;
    float m0[V], m1[V];
  };
  const scalar_t *dy, *x;
  scalar_t* dx;
  ModIn<scalar_t> m;
  const float *mean, *rstd, *coef;
  const scalar_t *w, *bias;
  int64_t ws, bs, G, Cg;
  int act;
  float slope;

  template <bool CL>
  BURSTKERN_HD void prepare(const Tiling& T, int64_t n, int64_t c0, Lanes& L) const {
    norm_prepare<V, CL>(T, n, c0, G, Cg, mean, rstd, w, ws, bias, bs, L.nl);
    mod_prepare<V, CL>(m, T, n, c0, L.ml);
#pragma unroll
    for (int k = 0; k < (CL ? V : 1); ++k) {
      const int64_t ng = n * G + (CL ? c0 + k : c0) / Cg;
      L.m0[k] = coef[ng];
      L.m1[k] = coef[T.N * G + ng];
    }
  }

  template <bool CL>
  BURSTKERN_HD void step(const Tiling& T, int64_t n, int64_t c0, int64_t hw, const Lanes& L, float (*)[K]) const {
    const int64_t off = dense_at<CL>(T, n, c0, hw);
    float xv[V], gv[V], g1[V], b[V];
    load_lanes<V>(x, off, 1, V > 1, xv);
    load_lanes<V>(dy, off, 1, V > 1, gv);
    mod_values<V, CL>(m, T, n, c0, hw, L.ml, g1, b);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float h = (xv[k] - L.nl.mean[lane<CL>(k)]) * L.nl.rstd[lane<CL>(k)];
      const float ha = h * L.nl.w[lane<CL>(k)] + L.nl.bias[lane<CL>(k)];
      const float gha = act_bwd(ha * g1[k] + b[k], gv[k], act, slope) * g1[k];
      const int l = lane<CL>(k);
      gv[k] = L.nl.rstd[l] * (L.nl.w[l] * gha - L.m0[l] - h * L.m1[l]);
    }
    store_lanes<V>(dx, off, 1, V > 1, gv);
  }
};

// ---------------------------------------------------------------------------------------------------------------
// the block reduction, shared by both builds: each thread's lane sums go to shared memory (NCHW: lane 0 only, the
// lanes are one channel), a fixed tree sums them (NCHW: all threads; channels_last: the rows of each
// column), and row 0 writes the block's partial of each channel. The CUDA kernel runs the levels with
// __syncthreads() between them, the CPU loop one level after the other: the same sums in the same order.
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

}  // namespace sft
}  // namespace burstkern
