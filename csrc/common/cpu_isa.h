// The CPU kernels' vector builds, once for every op family (denoise, sft, deform_conv). Each family compiles its
// loops three times: the portable build (in <family>_cpu_kernels.cpp, which also runs float64) and the AVX2 and
// AVX-512 builds of the same code (<family>_cpu_kernels_<isa>.cpp, common/cpu_isa_build.h). Which one runs is picked
// once per process: the widest the CPU has, capped by BURSTKERN_CPU_PATH (default, avx2 or avx512; never a build the
// CPU lacks). No ATen here: the per-ISA loops include this (for the dtype codes) with their wider target.
#pragma once

#include <cstdlib>
#include <cstring>

namespace burstkern {
namespace cpu_isa {

// How the host code names a tensor's dtype to the loops (the CUDA kernels' denoise ScalarKind has the same values).
enum Dt : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

enum Isa : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

inline const char* isa_name(Isa isa) { return isa == kAvx512 ? "avx512" : isa == kAvx2 ? "avx2" : "default"; }

// The build to run. avx2_f16c: the family's AVX2 build also needs F16C (denoise and sft convert halves with it).
inline Isa detect(bool avx2_f16c) {
  Isa best = kDefault;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      (!avx2_f16c || __builtin_cpu_supports("f16c")))
    best = kAvx2;
  if (best == kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    best = kAvx512;
#else
  (void)avx2_f16c;
#endif
  const char* want = std::getenv("BURSTKERN_CPU_PATH");
  if (want != nullptr && *want != '\0') {
    Isa w = best;
    if (!std::strcmp(want, "default")) w = kDefault;
    else if (!std::strcmp(want, "avx2")) w = kAvx2;
    else if (!std::strcmp(want, "avx512")) w = kAvx512;
    if (w < best) best = w;
  }
  return best;
}

// The table of the picked build, for a family with one table of loops per build (Table::name: the build's name).
// Float64 always runs the portable build (the reference-precision path, not a fast one): table(dt).
template <class Table, const Table& (*Default)(), const Table& (*Avx2)(), const Table& (*Avx512)()>
struct Tables {
  static const Table& picked() {
    static const Table& t = []() -> const Table& {
      switch (detect(true)) {
        case kAvx512:
          return Avx512();
        case kAvx2:
          return Avx2();
        default:
          return Default();
      }
    }();
    return t;
  }
  static const Table& table(int dt) { return dt == kF64 ? Default() : picked(); }
};

}  // namespace cpu_isa
}  // namespace burstkern

// In a family's namespace: its builds' table functions (common/cpu_isa_build.h defines table_<build>) and
// Builds, the pick among them (Builds::table(dt), Builds::picked()).
#define BURSTKERN_CPU_ISA_TABLES(Table)                                                                   \
  const Table& table_default();                                                                          \
  const Table& table_avx2();                                                                             \
  const Table& table_avx512();                                                                           \
  using Builds = ::burstkern::cpu_isa::Tables<Table, &table_default, &table_avx2, &table_avx512>
