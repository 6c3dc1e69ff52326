// Host-side element access of the CPU kernels, once for every op family: a tensor's dtype code for the loops
// (common/cpu_isa.h, common/dispatch.h), one element of its storage read or written as double, and the memory
// format of x-like operands (channels_last when x is a channels_last, non-contiguous 4-D tensor, else contiguous).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "common/dispatch.h"

namespace burstkern {
namespace cpu_isa {

// t's dtype code (the ops' checks have let only float dtypes through)
inline int dt_of(const at::Tensor& t) {
  const int dt = dtype_code(t.scalar_type());
  TORCH_CHECK(dt >= 0, "burstkern CPU kernels: unsupported dtype ", t.scalar_type());
  return dt;
}

// element `off` of t's storage (t's dtype) as double / written from double
inline double rd(const at::Tensor& t, int64_t off) {
  const void* p = t.const_data_ptr();
  switch (t.scalar_type()) {
    case at::kDouble:
      return static_cast<const double*>(p)[off];
    case at::kHalf:
      return static_cast<float>(static_cast<const c10::Half*>(p)[off]);
    case at::kBFloat16:
      return static_cast<float>(static_cast<const c10::BFloat16*>(p)[off]);
    default:
      return static_cast<const float*>(p)[off];
  }
}

inline void wr(const at::Tensor& t, int64_t off, double v) {
  void* p = t.data_ptr();
  switch (t.scalar_type()) {
    case at::kDouble:
      static_cast<double*>(p)[off] = v;
      break;
    case at::kHalf:
      static_cast<c10::Half*>(p)[off] = static_cast<c10::Half>(static_cast<float>(v));
      break;
    case at::kBFloat16:
      static_cast<c10::BFloat16*>(p)[off] = static_cast<c10::BFloat16>(static_cast<float>(v));
      break;
    default:
      static_cast<float*>(p)[off] = static_cast<float>(v);
  }
}

inline at::MemoryFormat format_of(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

}  // namespace cpu_isa
}  // namespace burstkern
