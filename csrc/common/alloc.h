// Output allocation, once for every op: outputs take the layout memory_format_of(input) picks, the rule of the
// Python fake impls (burstkern/ops/_common.py memory_format_of): channels_last when the input is channels_last and
// not contiguous, else contiguous. In a testing build, with the poison switch on, they start NaN (testing/switches.h).
#pragma once

#include <ATen/ATen.h>

#include "testing/switches.h"

namespace burstkern {

inline at::MemoryFormat memory_format_of(const at::Tensor& x) {
  return (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ? at::MemoryFormat::ChannelsLast
                                                                                 : at::MemoryFormat::Contiguous;
}

// A new output of `sizes` with `like`'s options (dtype, device) in memory format fmt.
inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& like, at::MemoryFormat fmt) {
  return testing::poisoned(at::empty(sizes, like.memory_format(fmt)));
}

// The empty [0] placeholder an op returns for an output it does not produce.
inline at::Tensor placeholder(const at::Tensor& like) { return at::empty({0}, like.options()); }

}  // namespace burstkern
