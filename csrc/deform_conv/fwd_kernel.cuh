// Forward CUDA kernel of burstkern_C::deform_conv2d: an implicit GEMM with no column buffer. Each block owns
// kBM output pixels (n, ho, wo flattened) x kBN output channels of one weight group and loops over the reduction
// K = taps x the group's input channels in kBK chunks: its threads sample the modulated [kBM, kBK] A tile
// (bilinear gather x mask; a thread keeps one pixel and reuses its stencil while the offset group stays the same)
// and load the weight tile [kBK, kBN] into shared memory, and the warps multiply them (tensor cores for
// half/bfloat16, fp32 FMAs for float; fp32 accumulate). Bias in the epilogue; the output is written with its own
// strides (contiguous or channels_last). 64-bit offsets throughout. Host side: ops.h; the
// launch is templated on a launch policy (common/launch_cuda.cuh on the GPU, the SIMT emulation in the tests).
#pragma once

#include "deform_conv/tile_mma.cuh"

namespace burstkern {
namespace deform_conv {
namespace {

constexpr int kBM = 64, kBN = 64;

template <typename T>
__global__ void __launch_bounds__(kThreads) deform_conv2d_fwd_kernel(const Args a) {
  using S = typename Smem<T>::type;
  __shared__ __align__(32) S As[kBM][kBK + kPad];
  __shared__ __align__(32) S Bs[kBK][kBN + kPad];
  __shared__ __align__(32) float Cs[kBM][kBN + 4];
  const Dims& d = a.d;
  const int tid = threadIdx.x, warp = tid >> 5;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t tiles_n = (d.cout_g + kBN - 1) / kBN;
  const int64_t g = blockIdx.y / tiles_n, co0 = (blockIdx.y % tiles_n) * kBN;
  const T* x = static_cast<const T*>(a.x);
  const T* off = static_cast<const T*>(a.off);
  const T* msk = static_cast<const T*>(a.msk);
  const T* w = static_cast<const T*>(a.w);

  // this thread's pixel of the A tile and its channels ak0, ak0 + 2, ... of each chunk (adjacent threads take
  // adjacent pixels: coalesced gathers for NCHW inputs)
  const int am = tid % kBM, ak0 = tid / kBM;
  constexpr int kStepK = kThreads / kBM;
  const int64_t m = m0 + am;
  const bool m_ok = m < d.M;
  int64_t n = 0, ho = 0, wo = 0;
  if (m_ok) {
    n = m / (d.Ho * d.Wo);
    const int64_t r = m - n * d.Ho * d.Wo;
    ho = r / d.Wo;
    wo = r - ho * d.Wo;
  }
  const T* xn = x + n * a.sx.n;

  WarpMma<S> mma;
  mma.zero();
  const int wr = (warp >> 1) * 32, wc = (warp & 1) * 32;
  for (int tap = 0; tap < d.K; ++tap) {
    const int ti = tap / d.kw, tj = tap - ti * d.kw;
    int64_t cached_og = -1;
    TapSample ts{};
    for (int64_t c0 = 0; c0 < d.cin_g; c0 += kBK) {
#pragma unroll 4
      for (int kk = ak0; kk < kBK; kk += kStepK) {
        const int64_t ci = c0 + kk;
        float v = 0.0f;
        if (m_ok && ci < d.cin_g) {
          const int64_t c = g * d.cin_g + ci;
          const int64_t ogi = c / d.cpg;
          if (ogi != cached_og) {  // channels only grow within a tap: one stencil per (tap, offset group)
            ts = tap_sample(d, off, a.so, msk, a.sm, n, ogi, tap, ho, wo);
            cached_og = ogi;
          }
          v = ts.mask * bilinear(xn + c * a.sx.c, a.sx.h, a.sx.w, ts.s);
        }
        to_smem(&As[am][kk], v);
      }
      for (int idx = tid; idx < kBK * kBN; idx += kThreads) {
        const int nn = idx % kBN, kk = idx / kBN;
        const int64_t ci = c0 + kk, co = co0 + nn;
        float v = 0.0f;
        if (ci < d.cin_g && co < d.cout_g) {
          v = ld(w + (g * d.cout_g + co) * a.swt.n + ci * a.swt.c + ti * a.swt.h + tj * a.swt.w);
        }
        to_smem(&Bs[kk][nn], v);
      }
      __syncthreads();
      mma.step(&As[wr][0], kBK + kPad, &Bs[0][wc], kBN + kPad);
      __syncthreads();
    }
  }
  mma.store(&Cs[wr][wc], kBN + 4);
  __syncthreads();
  const T* b = static_cast<const T*>(a.b);
  T* y = static_cast<T*>(a.y);
  for (int idx = tid; idx < kBM * kBN; idx += kThreads) {
    const int ml = idx % kBM, nn = idx / kBM;
    const int64_t mo = m0 + ml, co = g * d.cout_g + co0 + nn;
    if (mo >= d.M || co0 + nn >= d.cout_g) continue;
    const int64_t on = mo / (d.Ho * d.Wo);
    const int64_t r = mo - on * d.Ho * d.Wo;
    const int64_t oh = r / d.Wo, ow = r - oh * d.Wo;
    const float v = Cs[ml][nn] + (b ? ld(b + co) : 0.0f);
    y[on * a.sy.n + co * a.sy.c + oh * a.sy.h + ow * a.sy.w] = static_cast<T>(v);
  }
}

template <class L>
void launch_forward(const Args& a, at::ScalarType dt) {
  const int64_t tiles_m = (a.d.M + kBM - 1) / kBM;
  const int64_t tiles_n = a.d.groups * ((a.d.cout_g + kBN - 1) / kBN);
  TORCH_CHECK(tiles_m <= INT32_MAX && tiles_n <= 65535, "deform_conv2d: ", a.d.M, " output pixels x ", a.d.Cout,
              " output channels is too large a grid");
  const dim3 grid(static_cast<unsigned int>(tiles_m), static_cast<unsigned int>(tiles_n));
  dispatch_dtype(dt, [&](auto tag) {
    using scalar_t = decltype(tag);
    L::launch(deform_conv2d_fwd_kernel<scalar_t>, grid, dim3(kThreads), a);
  });
}

}  // namespace
}  // namespace deform_conv
}  // namespace burstkern
