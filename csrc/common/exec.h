// The device part of an executor: each op's host code (csrc/<op>/ops.h) is a template over an executor that says
// where kernels run. The CUDA executor and the CPU one (which runs the same element code in loops, so the tests
// cover it without a GPU) share these two members; their launch functions are the op's own.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/Device.h>

namespace burstkern {

struct CpuExecBase {
  struct Guard {
    explicit Guard(c10::Device) {}
  };

  static void check_device(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor for the CPU build of the burstkern_C op, got device ",
                t.device());
  }
};

}  // namespace burstkern
