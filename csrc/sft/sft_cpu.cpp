// The CPU executor of the burstkern_C sft ops: the CPU kernels (sft_cpu_kernels.h) after the shared checks; in a
// testing build, under burstkern_C::set_simt_emulation, the CUDA kernels on the SIMT emulation.
#include <torch/library.h>

#include "common/exec.h"
#include "common/library.h"
#include "sft/sft.h"
#include "sft/sft_cpu_kernels.h"
#ifdef BURSTKERN_TESTING
#include "sft/sft_kernels.cuh"  // under the C++ compiler: the SIMT emulation (testing/simt_emu.h)
namespace burstkern::sft {
using EmuExec = KernelLaunch<simt::EmuLaunch>;  // the kernels BURSTKERN_CPU_IMPL runs while the emulation is on
}
#endif

namespace burstkern {
namespace sft {
namespace {

struct CpuExec {
  static constexpr auto sft_modulate = BURSTKERN_CPU_IMPL(check_modulate, cpu::sft_modulate, modulate);
  static constexpr auto sft_modulate_backward =
      BURSTKERN_CPU_IMPL(check_modulate_backward, cpu::sft_modulate_backward, modulate_backward);
  static constexpr auto sft_group_norm = BURSTKERN_CPU_IMPL(check_group_norm, cpu::sft_group_norm, group_norm);
  static constexpr auto sft_group_norm_backward =
      BURSTKERN_CPU_IMPL(check_group_norm_backward, cpu::sft_group_norm_backward, group_norm_backward);
};

const CpuKernels kRegistered("sft", &cpu::cpu_path);

}  // namespace
}  // namespace sft
}  // namespace burstkern

TORCH_LIBRARY_IMPL(burstkern_C, CPU, m) { burstkern::sft::register_impls<burstkern::sft::CpuExec>(m); }
