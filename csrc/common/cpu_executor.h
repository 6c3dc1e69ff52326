// The CPU executor of one op family: the whole of csrc/<family>/<family>_cpu.cpp is
//   #define BK_EXEC_FAMILY <family>  // denoise, sft or deform_conv
//   #define BK_EXEC_OPS BURSTKERN_<FAMILY>_OPS
//   #include "common/cpu_executor.h"
// It defines <family>::CpuExec, the family's CPU kernels (cpu::op, <family>_cpu_kernels.h) after the shared checks,
// or in a testing build, while burstkern_C::set_simt_emulation is on, the CUDA kernels (<family>_kernels.cuh) on the
// SIMT emulation (common/exec.h); records the family's vector path for build_flags (common/library.h); and
// registers CpuExec for the CPU dispatch key.
#include <torch/library.h>

#include "common/exec.h"
#include "common/library.h"

#define BK_EXEC_STR_(...) #__VA_ARGS__
#define BK_EXEC_STR(...) BK_EXEC_STR_(__VA_ARGS__)
#define BK_EXEC_CAT_(a, b) a##b
#define BK_EXEC_CAT(a, b) BK_EXEC_CAT_(a, b)
#define BK_EXEC_HEADER(part, ext) BK_EXEC_STR(BK_EXEC_FAMILY/BK_EXEC_CAT(BK_EXEC_FAMILY, part).ext)

#include BK_EXEC_HEADER(, h)
#include BK_EXEC_HEADER(_cpu_kernels, h)
#ifdef BURSTKERN_TESTING
#include BK_EXEC_HEADER(_kernels, cuh)  // under the C++ compiler: the SIMT emulation (testing/simt_emu.h)
namespace burstkern::BK_EXEC_FAMILY {
using EmuExec = KernelLaunch<simt::EmuLaunch>;  // the kernels BURSTKERN_CPU_IMPL runs while the emulation is on
}
#endif

namespace burstkern::BK_EXEC_FAMILY {
namespace {

struct CpuExec {
  BK_EXEC_OPS(BURSTKERN_CPU_EXEC_IMPL)
};

const CpuKernels kRegistered(BK_EXEC_STR(BK_EXEC_FAMILY), &cpu::cpu_path);

}  // namespace
}  // namespace burstkern::BK_EXEC_FAMILY

TORCH_LIBRARY_IMPL(burstkern_C, CPU, m) {
  burstkern::BK_EXEC_FAMILY::register_impls<burstkern::BK_EXEC_FAMILY::CpuExec>(m);
}

#undef BK_EXEC_STR_
#undef BK_EXEC_STR
#undef BK_EXEC_CAT_
#undef BK_EXEC_CAT
#undef BK_EXEC_HEADER
