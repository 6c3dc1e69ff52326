// deform_conv2d CPU kernels: the portable build of deform_conv_cpu_kernels_impl.h, and the choice of vector path
// (this file's, or the AVX2 / AVX-512 builds of the same code in deform_conv_cpu_kernels_avx2.cpp / _avx512.cpp).
#include "deform_conv/deform_conv_cpu_kernels.h"

#include <cstdlib>
#include <cstring>

#define BK_DCN_ISA base
#include "deform_conv/deform_conv_cpu_kernels_impl.h"
#undef BK_DCN_ISA

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

enum Path { kBase = 0, kAvx2 = 1, kAvx512 = 2 };

int detect() {
  int best = kBase;
#ifdef BK_DCN_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = kAvx2;
  if (best == kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    best = kAvx512;
#endif
  const char* want = std::getenv("BURSTKERN_CPU_PATH");
  if (want && *want) {
    int w = best;
    if (!std::strcmp(want, "default")) w = kBase;
    else if (!std::strcmp(want, "avx2")) w = kAvx2;
    else if (!std::strcmp(want, "avx512")) w = kAvx512;
    if (w < best) best = w;  // never a path the CPU lacks
  }
  return best;
}

int path() {
  static const int p = detect();
  return p;
}

}  // namespace

const char* cpu_path() {
  switch (path()) {
    case kAvx512: return "avx512";
    case kAvx2: return "avx2";
    default: return "default";
  }
}

at::Tensor deform_conv2d(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                         int64_t pad_w, int64_t dil_h, int64_t dil_w, const std::optional<at::Tensor>& mask) {
#ifdef BK_DCN_X86
  switch (path()) {
    case kAvx512:
      return avx512::forward_entry(input, offset, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, mask);
    case kAvx2:
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
    case kAvx512:
      return avx512::backward_entry(grad, input, offset, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                                    mask);
    case kAvx2:
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
