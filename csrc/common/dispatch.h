// The one dtype dispatch of csrc/: f(scalar_t{}) for float, half, bfloat16, and double only where the caller takes
// it (kDouble), so no kernel is instantiated for a dtype its op rejects. Other dtypes: a clear error naming `what`.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/cpu_isa.h"

namespace burstkern {

template <bool kDouble, class F>
void dispatch_floating(at::ScalarType dt, const char* what, F&& f) {
  switch (dt) {
    case at::kFloat:
      return f(float{});
    case at::kHalf:
      return f(c10::Half{});
    case at::kBFloat16:
      return f(c10::BFloat16{});
    case at::kDouble:
      if constexpr (kDouble) return f(double{});
      [[fallthrough]];
    default:
      TORCH_CHECK(false, what, ": no kernel for ", dt, " (float32, float16, bfloat16", kDouble ? ", float64" : "",
                  ")");
  }
}

// The code of a float dtype for kernels that take it as a number (the CPU loops' cpu_isa::Dt, the CUDA denoise
// kernels' ScalarKind: the same values); -1 for any other dtype.
inline int dtype_code(at::ScalarType dt) {
  switch (dt) {
    case at::kFloat:
      return cpu_isa::kF32;
    case at::kDouble:
      return cpu_isa::kF64;
    case at::kHalf:
      return cpu_isa::kF16;
    case at::kBFloat16:
      return cpu_isa::kBF16;
    default:
      return -1;
  }
}

}  // namespace burstkern

// AT_DISPATCH-style: BURSTKERN_DISPATCH_FLOATING(kDouble, dtype, "what", [&] { ... scalar_t ... });
#define BURSTKERN_DISPATCH_FLOATING(DOUBLE, TYPE, NAME, ...)                      \
  ::burstkern::dispatch_floating<DOUBLE>(TYPE, NAME, [&](auto burstkern_tag_) { \
    using scalar_t = decltype(burstkern_tag_);                                    \
    return __VA_ARGS__();                                                         \
  })
