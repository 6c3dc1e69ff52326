// The op library of the compiled backend. Kernel entry points live in the `burstkern_C` namespace; the public ops
// (`burstkern::*`, defined from Python with torch.library) dispatch to them when the native backend runs a call.
// Each op folder adds its schemas with TORCH_LIBRARY_FRAGMENT(burstkern_C, m) (csrc/<op>/<op>.cpp) and its kernels
// with TORCH_LIBRARY_IMPL for CPU (<op>_cpu.cpp) and CUDA (<op>_cuda.cu); the test-only ops come from csrc/testing/
// in a testing build. This file defines the namespace once, and build_flags.
#include "common/library.h"

#include "common/cpu_gemm.h"

#include <torch/library.h>

#include <string>
#include <utility>
#include <vector>

namespace burstkern {
namespace {

std::vector<std::pair<std::string, const char* (*)()>>& cpu_families() {
  static std::vector<std::pair<std::string, const char* (*)()>> families;
  return families;
}

// What this library was built with, space-separated key=value words, e.g.
//   "testing=0 cuda=1 cpu_kernels=1 cpu_vec=avx2 cpu_ops=deform_conv,denoise,sft"
// testing: the test machinery of csrc/testing/ is in; cuda: the CUDA kernels are in; cpu_kernels: every op family
// runs real CPU kernels on CPU tensors; cpu_vec: their vector path on this machine (default, avx2, avx512;
// "family:path,..." if the families differ; "none" without CPU kernels); cpu_ops: the families that have them;
// cpu_gemm: the library of the kernels' fp32 block GEMMs (onednn or aten, common/cpu_gemm.h).
std::string build_flags() {
#ifdef BURSTKERN_TESTING
  std::string flags = "testing=1";
#else
  std::string flags = "testing=0";
#endif
#ifdef BURSTKERN_WITH_CUDA
  flags += " cuda=1";
#else
  flags += " cuda=0";
#endif
  bool all = !cpu_families().empty();
  std::string ops, first, vec;
  bool same = true;
  for (const auto& [family, path] : cpu_families()) {
    if (path == nullptr) {
      all = false;
      continue;
    }
    const std::string p = path();
    ops += (ops.empty() ? "" : ",") + family;
    vec += (vec.empty() ? "" : ",") + family + ":" + p;
    if (first.empty()) first = p;
    same = same && p == first;
  }
  flags += all ? " cpu_kernels=1" : " cpu_kernels=0";
  flags += " cpu_vec=" + (ops.empty() ? std::string("none") : same ? first : vec);
  flags += " cpu_ops=" + (ops.empty() ? std::string("none") : ops);
  return flags + " cpu_gemm=" + cpu_gemm::fp32_library();
}

}  // namespace

CpuKernels::CpuKernels(const char* family, const char* (*cpu_path)()) {
  auto& f = cpu_families();
  auto at = f.begin();
  while (at != f.end() && at->first < family) ++at;  // sorted, whatever the static initialisation order
  f.insert(at, {family, cpu_path});
}

}  // namespace burstkern

TORCH_LIBRARY(burstkern_C, m) {
  // No tensor arguments: one catch-all kernel serves every device.
  m.def("build_flags() -> str", &burstkern::build_flags);
}
