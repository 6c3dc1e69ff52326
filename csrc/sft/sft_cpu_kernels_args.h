// Plain argument records between the host code of the sft CPU kernels (sft_cpu_kernels.cpp, ATen) and the per-ISA
// loop code (sft_cpu_kernels_impl.h, compiled once per ISA: no ATen there). Pointers are raw; dtypes are codes.
#pragma once

#include <cstdint>

#include "common/cpu_isa.h"

namespace burstkern {
namespace sft {
namespace cpu {
namespace detail {

using namespace ::burstkern::cpu_isa;  // the dtype codes (Dt)

// A [N, C, H·W] view read or written in place through its strides (sHW = 0: per channel).
struct View {
  const void* p;
  int64_t sN, sC, sHW;
};

// x-like tensors are dense: NCHW rows are (n, c) of HW elements, channels_last rows are (n, hw) of C elements.
// Per-(n, c) coefficient arrays are [N·C] in the compute type (float, double for fp64).
// What every record starts with: x's dtype code and layout, its [N, C, H·W] geometry, and x itself (dense).
struct XArgs {
  int dt;
  bool cl;
  int64_t N, C, HW;
  const void* x;
};

// ... and of the modulating passes: the activation (code, leaky_relu slope) and spatial gamma/beta, read in place
struct ModArgs : XArgs {
  int act;
  double slope;
  View g, bt;
  bool g_sp, bt_sp;
};

struct ApplyArgs : ModArgs {
  void* out;
  // u = ((x − M)·A + B)·(1 + g) + (spatial beta | Tc | 0); without spatial g (folded into A, B): (x − M)·A + B (+ beta)
  const void *M, *Mlo, *A, *B, *Tc;  // the mean as M + Mlo (two compute-type parts)
  bool tc;
};

struct StatsArgs : XArgs {
  int64_t G;
  const void* pivot;  // [N·C] compute type: the pivot of each channel's group
  double* out;        // NCHW: [N·G][2] (Σd, Σd², d = x − pivot); channels_last: [units][2][C]
  int64_t chunk;      // channels_last: pixels per unit
};

struct Bwd1Args : ModArgs {
  bool gn;  // gn: GroupNorm (sums 0, 1 and a compute-type gha); else sft_modulate (dx = gha in x's dtype)
  const void* dy;
  const void *mean, *rstd, *w, *bias, *g1c, *btc;  // [N·C] compute type
  void* gha;  // dense x-layout: compute type (gn) or x's dtype (modulate)
  View dg, db;
  bool write_dg, write_db;
  double* sums;  // NCHW: [N·C][4]; channels_last: [units][4][C]; (Σgha, Σgha·h, Σgu·ha, Σgu)
  int64_t chunk;
};

struct Bwd2Args : XArgs {
  const void* gha;  // compute type
  void* dx;
  const void *P, *Q, *R, *mean;  // dx = P·gha + Q + R·(x − mean), [N·C] compute type
};

struct Table {
  const char* name;
  void (*apply)(const ApplyArgs&, int64_t, int64_t);
  void (*stats)(const StatsArgs&, int64_t, int64_t);
  void (*bwd1)(const Bwd1Args&, int64_t, int64_t);
  void (*bwd2)(const Bwd2Args&, int64_t, int64_t);
};

BURSTKERN_CPU_ISA_TABLES(Table);

}  // namespace detail
}  // namespace cpu
}  // namespace sft
}  // namespace burstkern
