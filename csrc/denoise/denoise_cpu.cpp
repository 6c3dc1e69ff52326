// The CPU executor of the burstkern_C denoise ops: the CPU kernels (denoise_cpu_kernels.h) after the shared checks;
// in a testing build, under burstkern_C::set_simt_emulation, the CUDA kernels on the SIMT emulation.
#include <torch/library.h>

#include "common/exec.h"
#include "common/library.h"
#include "denoise/denoise.h"
#include "denoise/denoise_cpu_kernels.h"
#ifdef BURSTKERN_TESTING
#include "denoise/denoise_kernels.cuh"  // under the C++ compiler: the SIMT emulation (testing/simt_emu.h)
namespace burstkern::denoise {
using EmuExec = KernelLaunch<simt::EmuLaunch>;  // the kernels BURSTKERN_CPU_IMPL runs while the emulation is on
}
#endif

namespace burstkern {
namespace denoise {
namespace {

struct CpuExec {
  static constexpr auto denoise_scalings = BURSTKERN_CPU_IMPL(check_scalings, cpu::denoise_scalings, scalings);
  static constexpr auto denoise_combine = BURSTKERN_CPU_IMPL(check_combine, cpu::denoise_combine, combine);
  static constexpr auto denoise_combine_backward =
      BURSTKERN_CPU_IMPL(check_combine_backward, cpu::denoise_combine_backward, combine_backward);
  static constexpr auto edm_euler_update = BURSTKERN_CPU_IMPL(check_euler, cpu::edm_euler_update, euler);
  static constexpr auto edm_heun_update = BURSTKERN_CPU_IMPL(check_heun, cpu::edm_heun_update, heun);
  static constexpr auto add_noise = BURSTKERN_CPU_IMPL(check_add_noise, cpu::add_noise, denoise::add_noise);
  static constexpr auto cm_update = BURSTKERN_CPU_IMPL(check_cm_update, cpu::cm_update, denoise::cm_update);
  static constexpr auto cm_update_backward =
      BURSTKERN_CPU_IMPL(check_cm_update_backward, cpu::cm_update_backward, denoise::cm_update_backward);
  static constexpr auto edm_loss = BURSTKERN_CPU_IMPL(check_edm_loss, cpu::edm_loss, denoise::edm_loss);
  static constexpr auto edm_loss_backward =
      BURSTKERN_CPU_IMPL(check_edm_loss_backward, cpu::edm_loss_backward, denoise::edm_loss_backward);
};

const CpuKernels kRegistered("denoise", &cpu::cpu_path);

}  // namespace
}  // namespace denoise
}  // namespace burstkern

TORCH_LIBRARY_IMPL(burstkern_C, CPU, m) { burstkern::denoise::register_impls<burstkern::denoise::CpuExec>(m); }
