// Schemas of the burstkern_C deform_conv2d ops (kernels: deform_conv_fwd_cuda.cu / deform_conv_bwd_cuda.cu for CUDA
// tensors, deform_conv_cpu.cpp for CPU tensors, both from ops.h). The public op is burstkern::deform_conv2d
// (burstkern/ops/deform_conv/op.py); its cuda backend (burstkern/ops/deform_conv/cuda.py) calls these.
#include <torch/library.h>

#include <atomic>

TORCH_LIBRARY_FRAGMENT(burstkern_C, m) {
  // [N, Cout, Ho, Wo] in input's layout (channels_last when input is channels_last and not contiguous).
  m.def("deform_conv2d(Tensor input, Tensor offset, Tensor weight, Tensor? bias, int stride_h, int stride_w, "
        "int pad_h, int pad_w, int dil_h, int dil_w, Tensor? mask) -> Tensor");
  // (grad_input, grad_offset, grad_weight, grad_bias, grad_mask); [0] placeholders for an absent bias / mask.
  // Deterministic (no float atomics on grad input) when torch.are_deterministic_algorithms_enabled().
  m.def("deform_conv2d_backward(Tensor grad, Tensor input, Tensor offset, Tensor weight, Tensor? bias, "
        "int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, Tensor? mask) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor)");
}

namespace burstkern {
namespace deform_conv {
namespace {
std::atomic<bool> g_poison_outputs{false};

bool set_poison_outputs(bool enable) { return g_poison_outputs.exchange(enable); }
}  // namespace

bool poison_outputs_enabled() { return g_poison_outputs.load(std::memory_order_relaxed); }

}  // namespace deform_conv
}  // namespace burstkern

TORCH_LIBRARY_FRAGMENT(burstkern_C, m) {
  // Test switch: poison (NaN-fill) every output of the deform_conv2d ops before the kernels write it. Returns the
  // previous setting.
  m.def("deform_conv2d_poison_outputs(bool enable) -> bool", &burstkern::deform_conv::set_poison_outputs);
}
