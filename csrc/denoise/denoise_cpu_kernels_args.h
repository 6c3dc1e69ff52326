// Plain argument record between the host code of the denoise CPU kernels (denoise_cpu_kernels.cpp, ATen) and the
// per-ISA loops (denoise_cpu_kernels_impl.h, compiled once per ISA, no ATen).
#pragma once

#include <cstdint>

#include "common/cpu_isa.h"

namespace burstkern {
namespace denoise {
namespace cpu {
namespace detail {

using namespace ::burstkern::cpu_isa;  // the dtype codes (Dt)

enum Op : int {
  kCombine = 0,     // in: x, F            out: D, d?            ps: c_skip, c_out, σ, (1 − c_skip)/σ, −c_out/σ
  kCombineBwd = 1,  // in: gD, gd?, x, F   out: gx, gF; red Σt   ps: c_skip, c_out, a, b, dc_skip, dc_out, da, db
                    //   (d = a·x − b·F, element.cuh d_coeffs)
  kEuler = 2,       // in: x, F            out: x_next, d        ps: (1 − c_skip)/σ, −c_out/σ, σ, σ_next
  kHeun = 3,        // in: x̂, d, x_n, F_n  out: out              ps: h1, h2, h3 (x̂ + h1·d + h2·x_n + h3·F_n), -, pos
  kAddNoise = 4,    // in: x, noise?       out: out              ps: scale
  kCm = 5,          // in: x, F, noise?    out: out              ps: c_skip, c_out, scale (σ_next)
  kCmBwd = 6,       // in: g, x, F         out: gx, gF           ps: c_skip, c_out
  kLoss = 7,        // in: x, F, y         red Σ(D − y)²         ps: c_skip, c_out
  kLossBwd = 8,     // in: x, F, y         out: gx, gF, gy       ps: c_skip, c_out, k = 2·g·λ/M
  kRandn = 9,       // (normals at explicit offsets: see randn)
};

struct Args {
  int op, dt;
  int64_t N, M;      // samples, elements per sample (flat, memory order)
  bool cl;           // channels_last storage: a sample's memory order is (hw, c)
  int64_t C, HW;     // channels_last: for the logical (row-major) index of in-kernel noise
  const void* in[4];
  void* out[3];
  const double* ps[8];  // per-sample scalars [N]
  bool has_d, has_noise, has_next, has_clamp, draw;  // draw: in-kernel noise from seed
  int64_t seed;
  double clamp;
  int64_t chunk;     // elements per unit; units = N · ceil(M / chunk)
  double* red;       // [units] partial sums (reducing ops)
};

struct Table {
  const char* name;
  void (*run)(const Args&, int64_t, int64_t);                    // units [u0, u1)
  void (*randn)(int64_t seed, const int64_t* offsets, float* out, int64_t n);
};

BURSTKERN_CPU_ISA_TABLES(Table);

}  // namespace detail
}  // namespace cpu
}  // namespace denoise
}  // namespace burstkern
