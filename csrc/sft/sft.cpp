// Schemas of the burstkern_C sft ops (kernels: sft_cuda.cu for CUDA tensors, sft_cpu.cpp for CPU tensors, both
// from ops.h). The public ops are burstkern::sft_* (burstkern/ops/sft/op.py); its cuda backend
// (burstkern/ops/sft/cuda.py) calls these. act: 0 none, 1 silu, 2 relu, 3 leaky_relu(slope). Outputs an op does not
// produce are empty [0] placeholders.
#include <torch/library.h>

#include <atomic>
#include <cstdint>

TORCH_LIBRARY_FRAGMENT(burstkern_C, m) {
  // act(x·(1 + gamma) + beta); gamma [N, C|2C, H|1, W|1] (2C: merged gamma|beta, beta None).
  m.def("sft_modulate(Tensor x, Tensor gamma, Tensor? beta, int act, float slope) -> Tensor");
  // (grad_x, grad_gamma, grad_beta)
  m.def("sft_modulate_backward(Tensor grad, Tensor x, Tensor gamma, Tensor? beta, int act, float slope) -> "
        "(Tensor, Tensor, Tensor)");
  // (out, mean [N, G] fp32, rstd [N, G] fp32) of act(GroupNorm(x)·(1 + gamma) + beta)
  m.def("sft_group_norm(Tensor x, Tensor gamma, Tensor? beta, int num_groups, Tensor? weight, Tensor? bias, "
        "float eps, int act, float slope) -> (Tensor, Tensor, Tensor)");
  // (grad_x, grad_gamma, grad_beta, grad_weight, grad_bias), from x, mean, rstd (the normalised x is recomputed)
  m.def("sft_group_norm_backward(Tensor grad, Tensor x, Tensor gamma, Tensor? beta, int num_groups, "
        "Tensor? weight, Tensor? bias, Tensor mean, Tensor rstd, int act, float slope) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor)");
}

namespace burstkern {
namespace sft {
namespace {
std::atomic<int64_t> g_tile_elements{8192};

int64_t set_tile_elements(int64_t elements) {
  return elements > 0 ? g_tile_elements.exchange(elements) : g_tile_elements.load();
}
}  // namespace

int64_t tile_elements() { return g_tile_elements.load(std::memory_order_relaxed); }

}  // namespace sft
}  // namespace burstkern

TORCH_LIBRARY_FRAGMENT(burstkern_C, m) {
  // Test switch, no tensor arguments (one catch-all kernel for every device): the elements per block of the tile
  // walk (default 8192; tests shrink it so small inputs take the multi-chunk paths; <= 0 only reads it). Returns
  // the previous setting.
  m.def("sft_tile_elements(int elements) -> int", &burstkern::sft::set_tile_elements);
}
