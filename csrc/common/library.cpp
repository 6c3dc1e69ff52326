// The op library of the compiled backend. Kernel entry points live in the `burstkern_C` namespace; the public
// ops (`burstkern::*`, defined from Python with torch.library) dispatch to them when the cuda backend is active.
// Each op folder adds its schemas with TORCH_LIBRARY_FRAGMENT(burstkern_C, m) and its CUDA impls with
// TORCH_LIBRARY_IMPL(burstkern_C, CUDA, m). This file defines the namespace once, and the switches every op shares.
#include <torch/library.h>

#include <atomic>

#include "poison.h"

namespace burstkern {
namespace {
std::atomic<bool> g_poison_outputs{false};

bool set_poison_outputs(bool enable) { return g_poison_outputs.exchange(enable); }
}  // namespace

bool poison_outputs_enabled() { return g_poison_outputs.load(std::memory_order_relaxed); }

}  // namespace burstkern

TORCH_LIBRARY(burstkern_C, m) {
  // Fill a floating tensor with NaN (and other dtypes with all-ones bytes): tests poison outputs with it.
  m.def("poison_(Tensor(a!) self) -> ()");
  // Test switch (poison.h): NaN-fill every output of every op before its kernels write it. Returns the previous
  // setting. No tensor arguments, so one catch-all kernel serves every device.
  m.def("set_poison_outputs(bool enable) -> bool", &burstkern::set_poison_outputs);
}
