// Argument checks shared by every op's host code (csrc/<op>/<op>.h), once here. Exec: an executor's device traits
// (common/exec.h).
#pragma once

#include <ATen/ATen.h>

namespace burstkern {

// t is float32, float16 or bfloat16, or float64 where the executor takes it.
template <class Exec>
void check_floating(const at::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  const bool ok = dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || (Exec::kDouble && dt == at::kDouble);
  TORCH_CHECK(ok, name, " must be float32, float16 or bfloat16", Exec::kDouble ? " or float64" : "", ", got ", dt,
              Exec::kDouble ? "" : " (the CUDA kernels compute in fp32; float64 runs on the CPU kernels or the reference)");
}

// t is on the executor's device, on ref's device, and of ref's dtype.
template <class Exec>
void check_same(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  Exec::check_device(t, name);
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(), " but ", ref_name, " has ",
              ref.scalar_type());
}

}  // namespace burstkern
