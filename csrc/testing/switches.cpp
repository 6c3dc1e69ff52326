// The test switches of testing/switches.h and the test ops that flip them (testing builds only).
#include <torch/library.h>

#include <atomic>

#include "testing/switches.h"

namespace burstkern {
namespace testing {
namespace {
std::atomic<bool> g_poison{false};
std::atomic<int64_t> g_tile{kSftTileElements};

bool set_poison_outputs(bool enable) { return g_poison.exchange(enable); }
int64_t set_sft_tile_elements(int64_t elements) { return elements > 0 ? g_tile.exchange(elements) : g_tile.load(); }
}  // namespace

bool poison_outputs() { return g_poison.load(std::memory_order_relaxed); }
int64_t sft_tile_elements() { return g_tile.load(std::memory_order_relaxed); }

}  // namespace testing
}  // namespace burstkern

// No tensor arguments: one catch-all kernel serves every device. Each returns the previous setting.
TORCH_LIBRARY_FRAGMENT(burstkern_C, m) {
  // NaN-fill every output of every op before its kernels write it.
  m.def("set_poison_outputs(bool enable) -> bool", &burstkern::testing::set_poison_outputs);
  // The elements per block of the sft tile walk (default 8192; <= 0 only reads it).
  m.def("sft_tile_elements(int elements) -> int", &burstkern::testing::set_sft_tile_elements);
  // Fill a tensor with all-ones bytes (NaN for every float dtype); CUDA kernel: poison.cu.
  m.def("poison_(Tensor(a!) self) -> ()");
}
