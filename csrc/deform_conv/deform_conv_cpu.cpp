// The CPU executor of the burstkern_C deform_conv2d ops: the CPU kernels (deform_conv_cpu_kernels.h) after the
// shared checks; in a testing build, under burstkern_C::set_simt_emulation, the CUDA kernels on the SIMT emulation.
#include <torch/library.h>

#include "common/exec.h"
#include "common/library.h"
#include "deform_conv/deform_conv.h"
#include "deform_conv/deform_conv_cpu_kernels.h"
#ifdef BURSTKERN_TESTING
#include "deform_conv/deform_conv_kernels.cuh"  // under the C++ compiler: the SIMT emulation (testing/simt_emu.h)
namespace burstkern::deform_conv {
using EmuExec = KernelLaunch<simt::EmuLaunch>;  // the kernels BURSTKERN_CPU_IMPL runs while the emulation is on
}
#endif

namespace burstkern {
namespace deform_conv {
namespace {

struct CpuExec {
  static constexpr auto deform_conv2d = BURSTKERN_CPU_IMPL(check_forward, cpu::deform_conv2d, forward);
  static constexpr auto deform_conv2d_backward = BURSTKERN_CPU_IMPL(check_backward, cpu::deform_conv2d_backward,
                                                                    backward);
};

const CpuKernels kRegistered("deform_conv", &cpu::cpu_path);

}  // namespace
}  // namespace deform_conv
}  // namespace burstkern

TORCH_LIBRARY_IMPL(burstkern_C, CPU, m) {
  burstkern::deform_conv::register_impls<burstkern::deform_conv::CpuExec>(m);
}
