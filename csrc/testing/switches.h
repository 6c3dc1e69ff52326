// Test switch shared by every op's host code: when on, every output buffer is NaN-filled before the kernels write it,
// so an element a kernel forgets shows up as NaN instead of stale memory. Off by default (it costs a fill per output).
// Set from Python with burstkern_C::set_poison_outputs (burstkern.ops._common.set_poison_outputs flips it too).
#pragma once

#include <ATen/ATen.h>

#include <limits>

namespace burstkern {

bool poison_outputs_enabled();

inline at::Tensor poisoned(at::Tensor t) {
  if (poison_outputs_enabled() && t.numel() > 0) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

}  // namespace burstkern
