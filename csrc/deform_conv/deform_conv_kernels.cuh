// Backward CUDA kernels of burstkern_C::deform_conv2d_backward, neither with a buffer that grows with N·Cin·K·H·W:
//
// * deform_conv2d_bwd_kernel (grad input / offset / mask): a block owns kBMD output pixels (one per thread in the
//   element phase). Per tap, weight group and kBND-channel chunk it forms grad_columns = grad_out x W^T on the
//   tensor cores (fp32 FMAs for float), then each thread walks its pixel's channels in order: grad mask (sum of
//   grad_columns x sampled value) and grad offset (x mask x d sample/dy, dx) are summed over the offset group's
//   channels in registers and stored once per (pixel, offset group, tap), which the block owns (plain stores,
//   deterministic); grad input goes to the four corners, atomically added in fp32, or, under
//   torch.use_deterministic_algorithms(True), written as (index, value) contributions for a bounded chunk of
//   pixels that index_put_(accumulate=True) reduces (deterministic), as the Triton backend does.
// * deform_conv2d_bwd_weight_kernel (grad weight): an implicit GEMM grad_out^T x columns reducing over pixels
//   (the sampled tile recomputed on the fly), split over pixel ranges into an fp32 workspace [splits, Cout,
//   Cin/groups, K] that torch sums (deterministic, no atomics).
// grad bias (grad_out summed in fp32) and the fp32 -> dtype casts are done by ops.h. The launches are templated on a
// launch policy (common/launch_cuda.cuh on the GPU, the SIMT emulation in the tests).
#pragma once

#include <algorithm>
#include <type_traits>

#include "deform_conv/tile_mma.cuh"

namespace burstkern {
namespace deform_conv {
namespace {

constexpr int kBMD = kThreads;  // grad input/offset/mask: pixels per block, one per thread in the element phase
constexpr int kBND = 32;        // channels per chunk
constexpr int kBMW = 64, kBNW = 64;  // grad weight: output channels x (channel, tap) columns per block
// Deterministic grad input: at most this many (index, value) contributions per launch (12 B each).
constexpr int64_t kMaxContributions = int64_t(1) << 22;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    deform_conv2d_bwd_kernel(const Args a, int64_t m_begin, int64_t m_end, int64_t* __restrict__ cidx,
                             float* __restrict__ cval) {
  using S = typename Smem<T>::type;
  __shared__ __align__(32) S As[kBMD][kBK + kPad];   // grad_out [pixel, output channel]
  __shared__ __align__(32) S Bs[kBK][kBND + kPad];   // W [output channel, input channel] of one tap
  __shared__ __align__(32) float Cs[kBMD][kBND + 4];  // grad columns [pixel, input channel]
  const Dims& d = a.d;
  const int tid = threadIdx.x, warp = tid >> 5;
  const int64_t m = m_begin + static_cast<int64_t>(blockIdx.x) * kBMD + tid;
  const bool m_ok = m < m_end;
  int64_t n = 0, ho = 0, wo = 0;
  if (m_ok) {
    n = m / (d.Ho * d.Wo);
    const int64_t r = m - n * d.Ho * d.Wo;
    ho = r / d.Wo;
    wo = r - ho * d.Wo;
  }
  const T* x = static_cast<const T*>(a.x) + n * a.sx.n;
  const T* off = static_cast<const T*>(a.off);
  const T* msk = static_cast<const T*>(a.msk);
  const T* w = static_cast<const T*>(a.w);
  const T* gout = static_cast<const T*>(a.gout) + n * a.sg.n + ho * a.sg.h + wo * a.sg.w;
  float* gi_n = a.gi + n * d.Cin * d.H * d.W;
  T* goff = static_cast<T*>(a.goff) + n * a.sgo.n + ho * a.sgo.h + wo * a.sgo.w;
  T* gmsk = a.gmsk ? static_cast<T*>(a.gmsk) + n * a.sgm.n + ho * a.sgm.h + wo * a.sgm.w : nullptr;

  WarpMma<S> mma;
  for (int tap = 0; tap < d.K; ++tap) {
    const int ti = tap / d.kw, tj = tap - ti * d.kw;
    int64_t cur_og = -1;
    TapSample ts{};
    float acc_y = 0.0f, acc_x = 0.0f, acc_m = 0.0f;
    auto flush = [&]() {
      const int64_t ch = 2 * (cur_og * d.K + tap);
      goff[ch * a.sgo.c] = static_cast<T>(acc_y);
      goff[(ch + 1) * a.sgo.c] = static_cast<T>(acc_x);
      if (gmsk) gmsk[(cur_og * d.K + tap) * a.sgm.c] = static_cast<T>(acc_m);
    };
    for (int64_t g = 0; g < d.groups; ++g) {
      for (int64_t c0 = 0; c0 < d.cin_g; c0 += kBND) {
        mma.zero();
        for (int64_t o0 = 0; o0 < d.cout_g; o0 += kBK) {
#pragma unroll 4
          for (int kk = 0; kk < kBK; ++kk) {  // the thread's own pixel row
            const int64_t co = o0 + kk;
            const float v = (m_ok && co < d.cout_g) ? ld(gout + (g * d.cout_g + co) * a.sg.c) : 0.0f;
            to_smem(&As[tid][kk], v);
          }
          for (int idx = tid; idx < kBK * kBND; idx += kThreads) {
            const int cc = idx % kBND, kk = idx / kBND;
            const int64_t co = o0 + kk, ci = c0 + cc;
            float v = 0.0f;
            if (co < d.cout_g && ci < d.cin_g) {
              v = ld(w + (g * d.cout_g + co) * a.swt.n + ci * a.swt.c + ti * a.swt.h + tj * a.swt.w);
            }
            to_smem(&Bs[kk][cc], v);
          }
          __syncthreads();
          mma.step(&As[warp * 32][0], kBK + kPad, &Bs[0][0], kBND + kPad);
          __syncthreads();
        }
        mma.store(&Cs[warp * 32][0], kBND + 4);
        __syncthreads();
        if (m_ok) {
          for (int cc = 0; cc < kBND && c0 + cc < d.cin_g; ++cc) {
            const int64_t c = g * d.cin_g + c0 + cc;
            const int64_t ogi = c / d.cpg;
            if (ogi != cur_og) {  // channels only grow within a tap: the previous offset group is complete
              if (cur_og >= 0) flush();
              ts = tap_sample(d, off, a.so, msk, a.sm, n, ogi, tap, ho, wo);
              cur_og = ogi;
              acc_y = acc_x = acc_m = 0.0f;
            }
            const Stencil& s = ts.s;
            const SampleGrad sg = bilinear_grad(x + c * a.sx.c, a.sx.h, a.sx.w, s);
            const float gc = Cs[tid][cc];
            acc_m += gc * sg.v;
            const float gcm = gc * ts.mask;
            acc_y += gcm * sg.gy;
            acc_x += gcm * sg.gx;
            const int64_t base = c * d.H * d.W + s.y0 * d.W + s.x0;
            const int64_t offs[4] = {0, 1, d.W, d.W + 1};
            const float ws[4] = {s.w00, s.w01, s.w10, s.w11};
            const bool vs[4] = {s.v00, s.v01, s.v10, s.v11};
            if (cidx) {
              const int64_t slot = (((m - m_begin) * d.K + tap) * d.Cin + c) * 4;
              const int64_t flat_n = n * d.Cin * d.H * d.W;
#pragma unroll
              for (int q = 0; q < 4; ++q) {
                cidx[slot + q] = vs[q] ? flat_n + base + offs[q] : 0;
                cval[slot + q] = vs[q] ? gcm * ws[q] : 0.0f;
              }
            } else {
#pragma unroll
              for (int q = 0; q < 4; ++q) {
                if (vs[q]) atomicAdd(gi_n + base + offs[q], gcm * ws[q]);
              }
            }
          }
        }
        __syncthreads();  // Cs is rewritten by the next chunk
      }
    }
    if (m_ok && cur_og >= 0) flush();
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    deform_conv2d_bwd_weight_kernel(const Args a, int64_t pix_per_split, float* __restrict__ ws) {
  using S = typename Smem<T>::type;
  __shared__ __align__(32) S As[kBMW][kBK + kPad];   // grad_out^T [output channel, pixel]
  __shared__ __align__(32) S Bs[kBK][kBNW + kPad];   // columns [pixel, (input channel, tap)]
  __shared__ __align__(32) float Cs[kBMW][kBNW + 4];
  const Dims& d = a.d;
  const int tid = threadIdx.x, warp = tid >> 5;
  const int64_t kcols = d.cin_g * d.K;
  const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kBNW;
  const int64_t tiles_co = (d.cout_g + kBMW - 1) / kBMW;
  const int64_t g = blockIdx.y / tiles_co, co0 = (blockIdx.y % tiles_co) * kBMW;
  const int64_t p_begin = static_cast<int64_t>(blockIdx.z) * pix_per_split;
  const int64_t p_end = std::min<int64_t>(d.M, p_begin + pix_per_split);
  const T* x = static_cast<const T*>(a.x);
  const T* off = static_cast<const T*>(a.off);
  const T* msk = static_cast<const T*>(a.msk);
  const T* gout = static_cast<const T*>(a.gout);
  const int64_t HWo = d.Ho * d.Wo;

  // this thread's column of the B tile: fixed (input channel, tap), pixels bp0, bp0 + 2, ...
  const int bk = tid % kBNW, bp0 = tid / kBNW;
  constexpr int kStepP = kThreads / kBNW;
  const int64_t kcol = k0 + bk;
  const bool k_ok = kcol < kcols;
  const int64_t ci = k_ok ? kcol / d.K : 0;
  const int tap = k_ok ? static_cast<int>(kcol - ci * d.K) : 0;
  const int64_t c = g * d.cin_g + ci, ogi = c / d.cpg;

  WarpMma<S> mma;
  mma.zero();
  const int wr = (warp >> 1) * 32, wc = (warp & 1) * 32;
  for (int64_t p0 = p_begin; p0 < p_end; p0 += kBK) {
    for (int idx = tid; idx < kBMW * kBK; idx += kThreads) {
      const int pp = idx % kBK, cl = idx / kBK;
      const int64_t p = p0 + pp, co = co0 + cl;
      float v = 0.0f;
      if (p < p_end && co < d.cout_g) {
        const int64_t pn = p / HWo, r = p - pn * HWo, ph = r / d.Wo, pw = r - ph * d.Wo;
        v = ld(gout + pn * a.sg.n + (g * d.cout_g + co) * a.sg.c + ph * a.sg.h + pw * a.sg.w);
      }
      to_smem(&As[cl][pp], v);
    }
#pragma unroll 4
    for (int pp = bp0; pp < kBK; pp += kStepP) {
      const int64_t p = p0 + pp;
      float v = 0.0f;
      if (k_ok && p < p_end) {
        const int64_t pn = p / HWo, r = p - pn * HWo, ph = r / d.Wo, pw = r - ph * d.Wo;
        const TapSample ts = tap_sample(d, off, a.so, msk, a.sm, pn, ogi, tap, ph, pw);
        v = ts.mask * bilinear(x + pn * a.sx.n + c * a.sx.c, a.sx.h, a.sx.w, ts.s);
      }
      to_smem(&Bs[pp][bk], v);
    }
    __syncthreads();
    mma.step(&As[wr][0], kBK + kPad, &Bs[0][wc], kBNW + kPad);
    __syncthreads();
  }
  mma.store(&Cs[wr][wc], kBNW + 4);
  __syncthreads();
  float* out = ws + static_cast<int64_t>(blockIdx.z) * d.Cout * kcols;
  for (int idx = tid; idx < kBMW * kBNW; idx += kThreads) {
    const int kl = idx % kBNW, cl = idx / kBNW;
    const int64_t k = k0 + kl, co = co0 + cl;
    if (k < kcols && co < d.cout_g) out[(g * d.cout_g + co) * kcols + k] = Cs[cl][kl];
  }
}

template <class L>
void launch_backward_data(const Args& a, at::ScalarType dt, bool deterministic) {
  const auto dev_opts = L::options();
  // Pixels per launch: everything at once with atomics; a bounded chunk when contributions are collected.
  const int64_t per_pixel = 4 * a.d.K * a.d.Cin;
  const int64_t chunk = deterministic ? std::max<int64_t>(1, kMaxContributions / per_pixel) : a.d.M;
  at::Tensor gi_flat = at::from_blob(a.gi, {a.d.N * a.d.Cin * a.d.H * a.d.W}, dev_opts.dtype(at::kFloat));
  for (int64_t mb = 0; mb < a.d.M; mb += chunk) {
    const int64_t me = std::min<int64_t>(a.d.M, mb + chunk);
    at::Tensor idx, val;
    if (deterministic) {
      idx = at::empty({(me - mb) * per_pixel}, dev_opts.dtype(at::kLong));
      val = at::empty({(me - mb) * per_pixel}, dev_opts.dtype(at::kFloat));
    }
    const int64_t blocks = (me - mb + kBMD - 1) / kBMD;
    TORCH_CHECK(blocks <= INT32_MAX, "deform_conv2d_backward: too many output pixels (", a.d.M, ")");
    dispatch_dtype(dt, [&](auto tag) {
      using scalar_t = decltype(tag);
      L::launch(deform_conv2d_bwd_kernel<scalar_t>, dim3(static_cast<unsigned int>(blocks)), dim3(kThreads), a, mb, me,
                deterministic ? idx.mutable_data_ptr<int64_t>() : nullptr,
                deterministic ? val.mutable_data_ptr<float>() : nullptr);
    });
    // torch's index_put_ with accumulate is deterministic under use_deterministic_algorithms
    if (deterministic) {
      c10::List<std::optional<at::Tensor>> indices;
      indices.push_back(idx);
      gi_flat.index_put_(indices, val, /*accumulate=*/true);
    }
  }
}

template <class L>
Tensor launch_backward_weight(const Args& a, at::ScalarType dt) {
  const auto dev_opts = L::options();
  const int64_t kcols = a.d.cin_g * a.d.K;
  const int64_t tiles_k = (kcols + kBNW - 1) / kBNW;
  const int64_t tiles_co = a.d.groups * ((a.d.cout_g + kBMW - 1) / kBMW);
  TORCH_CHECK(tiles_k <= INT32_MAX && tiles_co <= 65535, "deform_conv2d_backward: weight too large");
  // enough blocks to fill the GPU twice; each split reduces whole kBK-pixel steps (fixed by the shape and the GPU,
  // so the summation order, hence the result, is the same in every run)
  const int64_t want = std::max<int64_t>(1, (2 * L::sm_count() + tiles_k * tiles_co - 1) / (tiles_k * tiles_co));
  const int64_t max_splits = std::max<int64_t>(1, (a.d.M + 8 * kBK - 1) / (8 * kBK));
  const int64_t splits0 = std::min<int64_t>({want, max_splits, 65535});
  const int64_t per = ((a.d.M + splits0 - 1) / splits0 + kBK - 1) / kBK * kBK;
  const int64_t splits = (a.d.M + per - 1) / per;
  Tensor ws = at::empty({splits, a.d.Cout, a.d.cin_g, a.d.kh, a.d.kw}, dev_opts.dtype(at::kFloat));
  const dim3 grid(static_cast<unsigned int>(tiles_k), static_cast<unsigned int>(tiles_co),
                  static_cast<unsigned int>(splits));
  dispatch_dtype(dt, [&](auto tag) {
    using scalar_t = decltype(tag);
    L::launch(deform_conv2d_bwd_weight_kernel<scalar_t>, grid, dim3(kThreads), a, per, ws.mutable_data_ptr<float>());
  });
  return ws.sum(0);
}

}  // namespace
}  // namespace deform_conv
}  // namespace burstkern
