// CPU implementations of the burstkern_C denoise ops: the functors of functors.cuh (the code the CUDA kernels
// run) in plain loops. They exist so the compiled element code (math, RNG bits, sample indexing, dtypes) is
// tested on machines without a GPU; the `cuda` backend itself stays GPU-only. When the tests switch the SIMT
// emulation on, the CUDA kernels themselves run.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/exec.h"
#include "denoise/ops.h"
// last: under the C++ compiler this brings the SIMT emulation's stand-ins for the CUDA keywords (common/simt.h)
#include "denoise/kernels.cuh"

namespace burstkern {
namespace denoise {
namespace {

// The loops below, or under burstkern_C::set_simt_emulation the CUDA kernels themselves (kernels.cuh) on the SIMT
// emulation.
struct CpuExec : CpuExecBase {
  using Emu = KernelLaunch<simt::EmuLaunch>;

  // Emulates a grid-stride launch of kThreads threads, the walk of the CUDA kernels; kThreads is prime so that in
  // the tests thread strides straddle sample boundaries both within and across samples.
  static constexpr int64_t kThreads = 61;

  template <class F>
  static void elementwise(const F& fn, int64_t total, int64_t M) {
    if (simt::mode() != 0) return Emu::elementwise(fn, total, M);
    const int64_t threads = std::min<int64_t>(kThreads, total);
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        for (SampleCursor c(t, threads, M); c.i < total; c.advance()) fn(c.i, c.n, c.r);
      }
    });
  }

  // Per-group sums in fixed chunks (float partials, then the partials in order), as the CUDA reduction does.
  static constexpr int64_t kChunk = 2048;

  template <class F>
  static void reduce(const F& fn, int64_t groups, int64_t group_size, int64_t M, const Tensor& like) {
    if (simt::mode() != 0) return Emu::reduce(fn, groups, group_size, M, like);
    const int64_t nblk = std::max<int64_t>(1, (group_size + kChunk - 1) / kChunk);
    std::vector<float> partials(static_cast<size_t>(groups * nblk), 0.0f);
    at::parallel_for(0, groups * nblk, 1, [&](int64_t begin, int64_t end) {
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t g = blk / nblk, r0 = (blk % nblk) * kChunk;
        const int64_t count = std::min<int64_t>(kChunk, group_size - r0);
        float acc = 0.0f;
        if (count > 0) {
          SampleCursor c(g * group_size + r0, 1, M);
          for (int64_t k = 0; k < count; ++k, c.advance()) acc += fn(c.i, c.n, c.r);
        }
        partials[static_cast<size_t>(blk)] = acc;
      }
    });
    for (int64_t g = 0; g < groups; ++g) {
      float sum = 0.0f;
      for (int64_t b = 0; b < nblk; ++b) sum += partials[static_cast<size_t>(g * nblk + b)];
      fn.finalize(g, sum);
    }
  }
};

}  // namespace
}  // namespace denoise
}  // namespace burstkern

TORCH_LIBRARY_IMPL(burstkern_C, CPU, m) {
  using burstkern::denoise::CpuExec;
  namespace dn = burstkern::denoise;
  m.impl("denoise_scalings", &dn::scalings<CpuExec>);
  m.impl("denoise_combine", &dn::combine<CpuExec>);
  m.impl("denoise_combine_backward", &dn::combine_backward<CpuExec>);
  m.impl("edm_euler_update", &dn::euler<CpuExec>);
  m.impl("edm_heun_update", &dn::heun<CpuExec>);
  m.impl("add_noise", &dn::add_noise<CpuExec>);
  m.impl("cm_update", &dn::cm_update<CpuExec>);
  m.impl("cm_update_backward", &dn::cm_update_backward<CpuExec>);
  m.impl("edm_loss", &dn::edm_loss<CpuExec>);
  m.impl("edm_loss_backward", &dn::edm_loss_backward<CpuExec>);
  m.impl("denoise_randn", &dn::randn<CpuExec>);
}
