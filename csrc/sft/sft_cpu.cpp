// CPU implementations of the burstkern_C sft ops: the functors of functors.cuh (the code the CUDA kernels run) in
// loops that walk the elements the way the GPU blocks do (every block's 256 threads one after the other, then the
// same shared-memory tree, level by level, and the same partials). They exist so the compiled element code
// (math, addressing, vector lanes, reduction order, dtypes) is tested on machines without a GPU; the `cuda`
// backend itself stays GPU-only. When the tests switch the SIMT emulation on, the CUDA kernels themselves run.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/exec.h"
#include "sft/ops.h"
// last: under the C++ compiler this brings the SIMT emulation's stand-ins for the CUDA keywords (common/simt.h)
#include "sft/kernels.cuh"

namespace burstkern {
namespace sft {
namespace {

// The loops below, or under burstkern_C::set_simt_emulation the CUDA kernels themselves (kernels.cuh) on the SIMT
// emulation.
struct CpuExec : CpuExecBase {
  using Emu = KernelLaunch<simt::EmuLaunch>;

  template <int V, class F>
  static void tile(const F& fn, const Tiling& T, float* part) {
    if (simt::mode() != 0) {
      Emu::tile<V>(fn, T, part);
    } else if (T.cl) {
      tile_as<V, true>(fn, T, part);
    } else {
      tile_as<V, false>(fn, T, part);
    }
  }

  template <int V, bool CL, class F>
  static void tile_as(const F& fn, const Tiling& T, float* part) {
    const bool reduce = F::kReduce && part != nullptr;  // nullptr: nothing to reduce in this call
    at::parallel_for(0, T.blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> sm(reduce ? static_cast<size_t>(kThreads) * V * F::K : 0);
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t t = 0; t < kThreads; ++t) {
          float acc[V][F::K];
          thread_run<V, CL>(fn, T, b, t, acc);
          if (reduce) block_store<V, F::K, CL>(t, acc, sm.data());
        }
        if (reduce) {
          for (int64_t half = T.rows() / 2; half >= 1; half >>= 1) {
            for (int64_t t = 0; t < kThreads; ++t) block_level<V, F::K, CL>(T, t, half, sm.data());
          }
          for (int64_t t = 0; t < kThreads; ++t) block_write<V, F::K, CL>(T, b, t, sm.data(), part);
        }
      }
    });
  }

  template <class F>
  static void each(const F& fn, int64_t count) {
    if (simt::mode() != 0) return Emu::each(fn, count);
    at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) fn(i);
    });
  }
};

}  // namespace
}  // namespace sft
}  // namespace burstkern

TORCH_LIBRARY_IMPL(burstkern_C, CPU, m) {
  using burstkern::sft::CpuExec;
  namespace s = burstkern::sft;
  m.impl("sft_modulate", &s::modulate<CpuExec>);
  m.impl("sft_modulate_backward", &s::modulate_backward<CpuExec>);
  m.impl("sft_group_norm", &s::group_norm<CpuExec>);
  m.impl("sft_group_norm_backward", &s::group_norm_backward<CpuExec>);
}
