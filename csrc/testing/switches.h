// The test switches the op code reads: output poisoning, the SIMT emulation mode and the sft tile size. They exist
// only in a testing build (BURSTKERN_TESTING, csrc/testing/switches.cpp and simt_emu.cpp, flipped from Python with
// the burstkern_C test ops); in a default build each is a compile-time constant, so the kernels pay nothing for it.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>

namespace burstkern {
namespace testing {

constexpr int64_t kSftTileElements = 8192;  // the sft tile walk's elements per block

#ifdef BURSTKERN_TESTING
// NaN-fill every output before its kernels write it, so an element a kernel forgets shows up as NaN.
bool poison_outputs();
// The CPU tensors of the burstkern_C ops run the CUDA kernels on the SIMT emulation (1 in order, 2 reversed) or not (0).
int simt_mode();
// The sft tile walk's elements per block (tests shrink it so small inputs reach the multi-chunk paths).
int64_t sft_tile_elements();
#else
constexpr bool poison_outputs() { return false; }
constexpr int simt_mode() { return 0; }
constexpr int64_t sft_tile_elements() { return kSftTileElements; }
#endif

inline at::Tensor poisoned(at::Tensor t) {
  if (poison_outputs() && t.numel() > 0) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

}  // namespace testing
}  // namespace burstkern
