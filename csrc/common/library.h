// What build_flags (common/library.cpp) reports about the CPU executors: each <op>_cpu.cpp records, at load time,
// whether its family runs real CPU kernels and which vector path they picked (their cpu_path()), or nullptr when it
// has none yet.
#pragma once

namespace burstkern {

struct CpuKernels {
  CpuKernels(const char* family, const char* (*cpu_path)());
};

}  // namespace burstkern
