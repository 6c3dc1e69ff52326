// Real CPU kernels of the burstkern_C deform_conv2d ops (DCNv2, torchvision.ops.deform_conv2d semantics), for the
// CPU dispatch key (registered in deform_conv_cpu.cpp). Signatures are exactly the burstkern_C schemas
// (deform_conv.cpp). Inputs arrive validated, with any strides; outputs are channels_last iff input is channels_last
// and not contiguous (ops.h format_of). float32 / float64 / bfloat16 / float16 (fp32 math for the half types).
//
// Algorithm (deform_conv_cpu_kernels_impl.h): per (sample, block of output pixels) the sample's input is copied
// once, channels-last, zero-padded and in the math dtype; each tap's bilinear stencil is computed once per offset
// group and shared by the group's channels; the block's modulated columns [P_block, Cin*K] are multiplied by the
// weights with at::mm (per weight group). Backward: grad columns by GEMM, grad offset / mask / input from them,
// grad weight accumulated per block by GEMM; deterministic and independent of the thread count.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace burstkern {
namespace deform_conv {
namespace cpu {

at::Tensor deform_conv2d(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                         int64_t pad_w, int64_t dil_h, int64_t dil_w, const std::optional<at::Tensor>& mask);

// (grad_input, grad_offset, grad_weight, grad_bias, grad_mask); empty [0] placeholders for an absent bias / mask.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dil_h, int64_t dil_w, const std::optional<at::Tensor>& mask);

// The vector path the kernels run: "avx512", "avx2" or "default" (portable C++, auto-vectorised). Chosen once from
// what the CPU supports; BURSTKERN_CPU_PATH=default|avx2|avx512 forces a (supported) one, e.g. for tests.
const char* cpu_path();

}  // namespace cpu
}  // namespace deform_conv
}  // namespace burstkern
