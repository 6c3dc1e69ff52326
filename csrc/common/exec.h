// Executors: where an op's kernels run, and how every burstkern_C op is registered for that device.
//
// Each op folder (csrc/<op>/) has one host header <op>.h with the argument checks of every op and
//   template <class Exec> void register_impls(torch::Library& m)
// which registers Exec::<op name> for each op. An executor is a struct of function pointers, one per op, with the
// op's schema signature; <op>_cuda.cu and <op>_cpu.cpp only instantiate theirs and call register_impls:
//   CUDA: the CUDA kernels (<op>_kernels.cuh) on launch policy CudaLaunch (common/launch_cuda.cuh);
//   CPU:  the CPU kernels (<op>_cpu_kernels.h), after the shared checks (`checked`); in a testing build, while
//         burstkern_C::set_simt_emulation is on, the CUDA kernels themselves on the SIMT emulation instead.
// Device traits (the checks' view of an executor): check_device(t, name) and kDouble (whether float64 is taken).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/Device.h>

#include "testing/switches.h"

namespace burstkern {

struct CpuDevice {
  static constexpr bool kDouble = true;  // the CPU kernels compute float64 in float64
  static void check_device(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor here, got device ", t.device());
  }
};

struct CudaDevice {
  static constexpr bool kDouble = false;  // the CUDA kernels run float32/float16/bfloat16 (fp32 math)
  static void check_device(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  }
};

// The CUDA kernels on CPU tensors (the SIMT emulation of a testing build): CPU tensors, the CUDA kernels' dtypes.
struct EmulatedDevice : CpuDevice {
  static constexpr bool kDouble = false;
};

// checked<Check, Run>::call(args...): Check(args...) (the op's shared argument checks; its result is dropped), then
// Run(args...). For kernels that take validated arguments (the CPU kernels).
template <auto Check, auto Run>
struct checked;
template <class C, class R, class... A, C (*Check)(A...), R (*Run)(A...)>
struct checked<Check, Run> {
  static R call(A... a) {
    Check(a...);
    return Run(a...);
  }
};

#ifdef BURSTKERN_TESTING
// emulated_or<Cpu, Emu>::call(args...): Emu while the SIMT emulation is on, else Cpu.
template <auto Cpu, auto Emu>
struct emulated_or;
template <class R, class... A, R (*Cpu)(A...), R (*Emu)(A...)>
struct emulated_or<Cpu, Emu> {
  static R call(A... a) { return testing::simt_mode() != 0 ? Emu(a...) : Cpu(a...); }
};
#endif

// The CPU executor's entry for one op: the CPU kernel `cpu_fn` after the op's checks `check` (templated on the
// device), or in a testing build the kernels' host code `kernel_fn<EmuExec>` while the emulation is on (each
// <op>_cpu.cpp defines EmuExec under BURSTKERN_TESTING).
#ifdef BURSTKERN_TESTING
#define BURSTKERN_CPU_IMPL(check, cpu_fn, kernel_fn) \
  (&::burstkern::emulated_or<&::burstkern::checked<&check<CpuDevice>, &cpu_fn>::call, &kernel_fn<EmuExec>>::call)
#else
#define BURSTKERN_CPU_IMPL(check, cpu_fn, kernel_fn) (&::burstkern::checked<&check<CpuDevice>, &cpu_fn>::call)
#endif

// Each op family lists its ops once, in <op>.h, as BURSTKERN_<FAMILY>_OPS(X): X(op, check, kernels) for each op,
// its schema name, its shared checks (templated on the device traits) and the host code of its CUDA kernels
// (<op>_kernels.cuh, templated on the executor); its CPU kernel is cpu::op. The executors and register_impls are
// that list expanded with (BURSTKERN_DEFINE_REGISTER_IMPLS(OPS) defines the family's register_impls):
//   BURSTKERN_REGISTER_IMPL  in register_impls<Exec>(torch::Library& m): m.impl("op", Exec::op)
//   BURSTKERN_KERNEL_IMPL    in KernelImpls<L> (<op>_kernels.cuh): op = kernels<KernelLaunch<L>>
//   BURSTKERN_CPU_EXEC_IMPL  in CpuExec (<op>_cpu.cpp): op = BURSTKERN_CPU_IMPL(check, cpu::op, kernels)
#define BURSTKERN_REGISTER_IMPL(op, check, kernels) m.impl(#op, Exec::op);
#define BURSTKERN_DEFINE_REGISTER_IMPLS(OPS) \
  template <class Exec>                      \
  void register_impls(torch::Library& m) {   \
    OPS(BURSTKERN_REGISTER_IMPL)             \
  }
#define BURSTKERN_KERNEL_IMPL(op, check, kernels) static constexpr auto op = &kernels<KernelLaunch<L>>;
#define BURSTKERN_CPU_EXEC_IMPL(op, check, kernels) \
  static constexpr auto op = BURSTKERN_CPU_IMPL(check, cpu::op, kernels);

}  // namespace burstkern
