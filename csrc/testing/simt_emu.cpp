// The scheduler of the SIMT emulation (simt_emu.h): the threads of a block are fibers on the calling thread, run
// to their next barrier in thread order (or reverse order), released together when every live thread of the block
// (or warp) has arrived. Also the test switch burstkern_C::set_simt_emulation and its counters.
#include <torch/library.h>
#include <ucontext.h>

#include <atomic>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "testing/simt_emu.h"
#include "testing/switches.h"

namespace burstkern {
namespace simt {

thread_local uint3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0};
thread_local dim3 blockDim, gridDim;

namespace {

std::atomic<int> g_mode{0};
std::atomic<int64_t> g_launches{0}, g_blocks{0}, g_barriers{0};
std::mutex g_launch_mutex;  // one emulated launch at a time: __shared__ variables are static

constexpr size_t kStack = 256 * 1024;  // per emulated thread; the kernels keep small register-like arrays

enum class State { kReady, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  State state = State::kReady;
};

struct Runner {
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  std::vector<uint64_t> slots;  // one exchange word per thread (shuffles)
  ucontext_t sched;
  int cur = 0;
  std::exception_ptr error;
  std::string fault;  // a kernel's fail() message
};

thread_local Runner* g_runner = nullptr;

Runner& runner() {
  if (g_runner == nullptr) {
    throw std::logic_error("burstkern simt emulation: a device builtin was called outside an emulated kernel");
  }
  return *g_runner;
}

void fiber_entry() {
  Runner& r = *g_runner;
  try {
    (*r.body)();
  } catch (...) {
    if (!r.error) r.error = std::current_exception();
  }
  r.fibers[r.cur].state = State::kDone;
  swapcontext(&r.fibers[r.cur].ctx, &r.sched);
}

void wait_as(State s) {
  Runner& r = runner();
  r.fibers[r.cur].state = s;
  g_barriers.fetch_add(1, std::memory_order_relaxed);
  swapcontext(&r.fibers[r.cur].ctx, &r.sched);
}

std::string where(const uint3& b) {
  return "block (" + std::to_string(b.x) + ", " + std::to_string(b.y) + ", " + std::to_string(b.z) + ")";
}

void run_block(Runner& r, int nthreads, bool reverse) {
  for (int t = 0; t < nthreads; ++t) {
    Fiber& f = r.fibers[t];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
    f.state = State::kReady;
  }
  const dim3 bd = blockDim;
  while (true) {
    for (int i = 0; i < nthreads; ++i) {
      const int t = reverse ? nthreads - 1 - i : i;
      if (r.fibers[t].state != State::kReady) continue;
      r.cur = t;
      threadIdx = uint3{t % bd.x, (t / bd.x) % bd.y, t / (bd.x * bd.y)};
      swapcontext(&r.sched, &r.fibers[t].ctx);
    }
    if (r.error) return;
    int live = 0, at_block = 0;
    for (const Fiber& f : r.fibers) {
      live += f.state != State::kDone;
      at_block += f.state == State::kAtBlockBarrier;
    }
    if (live == 0) return;
    if (at_block == live) {  // __syncthreads: every thread still running has arrived (exited ones count as arrived)
      for (Fiber& f : r.fibers)
        if (f.state == State::kAtBlockBarrier) f.state = State::kReady;
      continue;
    }
    bool released = false;
    for (int w0 = 0; w0 < nthreads; w0 += 32) {  // warp barriers: every live lane of the warp has arrived
      const int w1 = std::min(nthreads, w0 + 32);
      bool all = true, any = false;
      for (int t = w0; t < w1; ++t) {
        const State s = r.fibers[t].state;
        if (s == State::kDone) continue;
        any = true;
        all = all && s == State::kAtWarpBarrier;
      }
      if (any && all) {
        for (int t = w0; t < w1; ++t)
          if (r.fibers[t].state == State::kAtWarpBarrier) r.fibers[t].state = State::kReady;
        released = true;
      }
    }
    if (!released) {
      throw std::runtime_error("burstkern simt emulation: in " + where(blockIdx) + ", " + std::to_string(at_block) +
                               " of " + std::to_string(live) +
                               " live threads wait at __syncthreads and the rest at a warp barrier (shuffle) "
                               "that not all lanes of their warp reach: divergent barrier");
    }
  }
}

}  // namespace

Stats stats() { return Stats{g_launches.load(), g_blocks.load(), g_barriers.load()}; }

void block_barrier() { wait_as(State::kAtBlockBarrier); }
void warp_barrier() { wait_as(State::kAtWarpBarrier); }

uint64_t& lane_slot() {
  Runner& r = runner();
  return r.slots[r.cur];
}

uint64_t lane_slot_of(int lane) {
  Runner& r = runner();
  const size_t t = static_cast<size_t>((r.cur & ~31) + lane);
  if (t >= r.slots.size()) fail("shuffle from a lane beyond the block");
  return r.slots[t];
}

void fail(const char* what) {
  Runner& r = runner();
  r.fault = std::string(what) + " (" + where(blockIdx) + ", thread " + std::to_string(r.cur) + ")";
  throw std::runtime_error(r.fault);
}

void run(dim3 grid, dim3 block, const std::function<void()>& body) {
  const int64_t nthreads = static_cast<int64_t>(block.x) * block.y * block.z;
  TORCH_CHECK(nthreads >= 1 && nthreads <= 1024, "simt emulation: a block of ", nthreads, " threads");
  TORCH_CHECK(g_runner == nullptr, "simt emulation: a kernel launched from inside a kernel");
  const std::lock_guard<std::mutex> lock(g_launch_mutex);
  Runner r;
  r.body = &body;
  r.fibers.resize(static_cast<size_t>(nthreads));
  for (Fiber& f : r.fibers) f.stack.reset(new char[kStack]);
  r.slots.assign(static_cast<size_t>(nthreads), 0);
  g_runner = &r;
  blockDim = block;
  gridDim = grid;
  const bool reverse = testing::simt_mode() == 2;
  g_launches.fetch_add(1, std::memory_order_relaxed);
  try {
    for (unsigned int z = 0; z < grid.z; ++z)
      for (unsigned int y = 0; y < grid.y; ++y)
        for (unsigned int x = 0; x < grid.x; ++x) {
          blockIdx = uint3{x, y, z};
          run_block(r, static_cast<int>(nthreads), reverse);
          g_blocks.fetch_add(1, std::memory_order_relaxed);
          if (r.error) std::rethrow_exception(r.error);
        }
  } catch (...) {
    g_runner = nullptr;
    throw;
  }
  g_runner = nullptr;
}

namespace {

int64_t set_mode(int64_t m) {
  TORCH_CHECK(m >= 0 && m <= 2, "set_simt_emulation: mode must be 0 (off), 1 (threads in order) or 2 (reverse), got ",
              m);
  return g_mode.exchange(static_cast<int>(m));
}

std::vector<int64_t> stats_op() {
  const Stats s = stats();
  return {s.launches, s.blocks, s.barriers};
}

}  // namespace
}  // namespace simt

int testing::simt_mode() { return simt::g_mode.load(std::memory_order_relaxed); }

}  // namespace burstkern

TORCH_LIBRARY_FRAGMENT(burstkern_C, m) {
  // Test switch: CPU tensors of the burstkern_C ops run the CUDA kernels under the SIMT emulation (1: threads of a
  // block in order, 2: in reverse order) instead of the CPU kernels (0). Returns the previous mode.
  m.def("set_simt_emulation(int mode) -> int", &burstkern::simt::set_mode);
  // [launches, blocks, barriers] emulated since the process started.
  m.def("simt_emulation_stats() -> int[]", &burstkern::simt::stats_op);
}
