// deform_conv2d CPU kernels: the portable build of deform_conv_cpu_kernels_impl.h, and the choice of vector path
// (this file's, or the AVX2 / AVX-512 builds of the same code in deform_conv_cpu_kernels_avx2.cpp / _avx512.cpp).
#include "deform_conv/deform_conv_cpu_kernels.h"

#include "common/cpu_isa.h"

#define BK_ISA_FAMILY deform_conv
#define BK_ISA_BUILD base
#include "common/cpu_isa_build.h"  // the portable build (namespace cpu::base); undefines its macros again

#if defined(__x86_64__) && defined(__GNUC__)
#define BK_DCN_X86 1
namespace burstkern {
namespace deform_conv {
namespace cpu {
#define BK_DCN_DECLARE(ns)                                                                                       \
  namespace ns {                                                                                                 \
  at::Tensor forward_entry(const at::Tensor&, const at::Tensor&, const at::Tensor&,                              \
                           const std::optional<at::Tensor>&, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, \
                           const std::optional<at::Tensor>&);                                                    \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_entry(                          \
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,                                \
      const std::optional<at::Tensor>&, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,                    \
      const std::optional<at::Tensor>&);                                                                         \
  }
BK_DCN_DECLARE(avx2)
BK_DCN_DECLARE(avx512)
#undef BK_DCN_DECLARE
}  // namespace cpu
}  // namespace deform_conv
}  // namespace burstkern
#endif

namespace burstkern {
namespace deform_conv {
namespace cpu {
namespace {

int path() {
  static const int p = cpu_isa::detect(/*avx2_f16c=*/false);
  return p;
}

}  // namespace

const char* cpu_path() { return cpu_isa::isa_name(static_cast<cpu_isa::Isa>(path())); }

at::Tensor deform_conv2d(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                         int64_t pad_w, int64_t dil_h, int64_t dil_w, const std::optional<at::Tensor>& mask) {
#ifdef BK_DCN_X86
  switch (path()) {
    case cpu_isa::kAvx512:
      return avx512::forward_entry(input, offset, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, mask);
    case cpu_isa::kAvx2:
      return avx2::forward_entry(input, offset, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, mask);
    default: break;
  }
#endif
  return base::forward_entry(input, offset, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dil_h, int64_t dil_w, const std::optional<at::Tensor>& mask) {
#ifdef BK_DCN_X86
  switch (path()) {
    case cpu_isa::kAvx512:
      return avx512::backward_entry(grad, input, offset, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                                    mask);
    case cpu_isa::kAvx2:
      return avx2::backward_entry(grad, input, offset, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                                  mask);
    default: break;
  }
#endif
  return base::backward_entry(grad, input, offset, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, mask);
}

}  // namespace cpu
}  // namespace deform_conv
}  // namespace burstkern
