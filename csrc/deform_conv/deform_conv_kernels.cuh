// The CUDA kernels of the burstkern_C deform_conv2d ops, their launches and host code, written once: nvcc builds them
// for the GPU (deform_conv_cuda.cu, launch policy CudaLaunch), the C++ compiler for the SIMT emulation of the tests
// (deform_conv_cpu.cpp in a testing build, EmuLaunch). Element math: element.cuh; argument checks: deform_conv.h.
//
// Forward kernel of burstkern_C::deform_conv2d: an implicit GEMM with no column buffer. Each block owns
// kBM output pixels (n, ho, wo flattened) x kBN output channels of one weight group and loops over the reduction
// K = taps x the group's input channels in kBK chunks: its threads sample the modulated [kBM, kBK] A tile
// (bilinear gather x mask; a thread keeps one pixel and reuses its stencil while the offset group stays the same)
// and load the weight tile [kBK, kBN] into shared memory, and the warps multiply them (tensor cores for
// half/bfloat16, fp32 FMAs for float; fp32 accumulate). Bias in the epilogue; the output is written with its own
// strides (contiguous or channels_last). 64-bit offsets throughout.
//
// Backward kernels of burstkern_C::deform_conv2d_backward, neither with a buffer that grows with N·Cin·K·H·W:
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
// grad bias (grad_out summed in fp32) and the fp32 -> dtype casts are done by the host code at the end of this file.
//
// Shared device pieces of the kernels: the block shape, the
// shared-memory element type, and the 32x32 warp tile product every implicit GEMM here is built from: tensor cores
// (nvcuda::wmma 16x16x16, fp32 accumulate) for half/bfloat16, exact fp32 FMAs for float (no TF32).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <type_traits>

#include "common/alloc.h"
#include "common/dispatch.h"
#include "common/simt.h"
#include "deform_conv/deform_conv.h"

namespace burstkern {
namespace deform_conv {
// internal linkage: nvcc and the C++ compiler build different bodies under the same names
namespace {

// Everything a kernel needs; pointers are untyped (the launches dispatch on the dtype).
struct Args {
  Dims d;
  const void *x = nullptr, *off = nullptr, *msk = nullptr, *w = nullptr, *b = nullptr, *gout = nullptr;
  Strides4 sx{}, so{}, sm{}, swt{}, sg{};  // input, offset, mask, weight, grad_out
  void* y = nullptr;                       // forward output
  Strides4 sy{};
  float* gi = nullptr;  // backward: fp32 grad-input accumulator, contiguous [N, Cin, H, W], zero-filled
  void *goff = nullptr, *gmsk = nullptr;
  Strides4 sgo{}, sgm{};
};

inline Strides4 strides4(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

constexpr int kThreads = 128;  // 4 warps per block, each owning a 32x32 piece of the block's output tile
constexpr int kBK = 32;        // reduction step of every tile product
constexpr int kPad = 8;        // shared-memory row padding (elements): fewer bank conflicts, keeps wmma alignment

// Shared-memory element type of the tile products: the tensor cores' type for half/bfloat16, float for float.
template <typename T>
struct Smem {
  using type = float;
};
template <>
struct Smem<at::Half> {
  using type = __half;
};
template <>
struct Smem<at::BFloat16> {
  using type = __nv_bfloat16;
};

__device__ __forceinline__ void to_smem(float* p, float v) { *p = v; }
__device__ __forceinline__ void to_smem(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void to_smem(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// One warp's 32x32 fp32 accumulator tile. step(): acc += A[32 x kBK] · B[kBK x 32], both row-major in shared memory
// (A at the warp's first row, B at its first column). store(): the tile into a float shared-memory tile.
template <typename S>
struct WarpMma {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc[2][2];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
  }

  __device__ __forceinline__ void step(const S* A, int lda, const S* B, int ldb) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // bfloat16 tensor cores need sm_80+; the build targets sm_80 / sm_86 / sm_90
#else
    using namespace nvcuda;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, S, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, S, wmma::row_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], A + i * 16 * lda + kk, lda);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], B + kk * ldb + j * 16, ldb);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
#endif
  }

  __device__ __forceinline__ void store(float* C, int ldc) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        nvcuda::wmma::store_matrix_sync(C + i * 16 * ldc + j * 16, acc[i][j], ldc, nvcuda::wmma::mem_row_major);
  }
};

// float: exact fp32 FMAs, lane l owns rows 4·(l/4)..+4 and columns 8·(l%4)..+8 of the warp tile.
template <>
struct WarpMma<float> {
  float acc[4][8];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
  }

  __device__ __forceinline__ void step(const float* A, int lda, const float* B, int ldb) {
    const int lane = threadIdx.x & 31, r0 = (lane >> 2) * 4, c0 = (lane & 3) * 8;
#pragma unroll 4
    for (int k = 0; k < kBK; ++k) {
      float a[4], b[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = A[(r0 + i) * lda + k];
#pragma unroll
      for (int j = 0; j < 8; ++j) b[j] = B[k * ldb + c0 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  }

  __device__ __forceinline__ void store(float* C, int ldc) {
    const int lane = threadIdx.x & 31, r0 = (lane >> 2) * 4, c0 = (lane & 3) * 8;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) C[(r0 + i) * ldc + c0 + j] = acc[i][j];
  }
};


// One k-step of mma on the staged shared-memory tiles: every thread's stores are in before the step, and the step is
// done before the tiles are staged again.
template <class Mma, typename S>
__device__ __forceinline__ void synced_step(Mma& mma, const S* A, int lda, const S* B, int ldb) {
  __syncthreads();
  mma.step(A, lda, B, ldb);
  __syncthreads();
}

// Output pixel p (row-major over [N, Ho, Wo]) as (n, ho, wo).
__device__ __forceinline__ void pixel_of(const Dims& d, int64_t p, int64_t& n, int64_t& ho, int64_t& wo) {
  n = p / (d.Ho * d.Wo);
  const int64_t r = p - n * d.Ho * d.Wo;
  ho = r / d.Wo;
  wo = r - ho * d.Wo;
}

// Stages the weights of tap (ti, tj), group g, into the kRows x kCols tile Bs (zero outside the weight): input
// channels ci0 + row and output channels co0 + column (kRowsCin), or output channels co0 + row and input channels
// ci0 + column.
template <int kRows, int kCols, bool kRowsCin, typename T, typename S>
__device__ __forceinline__ void stage_weights(S (*Bs)[kCols + kPad], const T* w, const Args& a, int64_t g,
                                              int64_t ci0, int64_t co0, int ti, int tj) {
  const Dims& d = a.d;
  for (int idx = threadIdx.x; idx < kRows * kCols; idx += kThreads) {
    const int col = idx % kCols, row = idx / kCols;
    const int64_t ci = ci0 + (kRowsCin ? row : col), co = co0 + (kRowsCin ? col : row);
    float v = 0.0f;
    if (ci < d.cin_g && co < d.cout_g) {
      v = ld(w + (g * d.cout_g + co) * a.swt.n + ci * a.swt.c + ti * a.swt.h + tj * a.swt.w);
    }
    to_smem(&Bs[row][col], v);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------------------------------------------
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
  if (m_ok) pixel_of(d, m, n, ho, wo);
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
      stage_weights<kBK, kBN, true>(Bs, w, a, g, c0, co0, ti, tj);
      synced_step(mma, &As[wr][0], kBK + kPad, &Bs[0][wc], kBN + kPad);
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
  BURSTKERN_DISPATCH_FLOATING(false, dt, "deform_conv2d", [&] {
    L::launch(deform_conv2d_fwd_kernel<scalar_t>, grid, dim3(kThreads), a);
  });
}

// ---------------------------------------------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------------------------------------------
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
  if (m_ok) pixel_of(d, m, n, ho, wo);
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
          stage_weights<kBK, kBND, false>(Bs, w, a, g, c0, o0, ti, tj);
          synced_step(mma, &As[warp * 32][0], kBK + kPad, &Bs[0][0], kBND + kPad);
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
    synced_step(mma, &As[wr][0], kBK + kPad, &Bs[0][wc], kBNW + kPad);
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
    BURSTKERN_DISPATCH_FLOATING(false, dt, "deform_conv2d_backward", [&] {
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
  BURSTKERN_DISPATCH_FLOATING(false, dt, "deform_conv2d_backward", [&] {
    L::launch(deform_conv2d_bwd_weight_kernel<scalar_t>, grid, dim3(kThreads), a, per, ws.mutable_data_ptr<float>());
  });
  return ws.sum(0);
}

// ---------------------------------------------------------------------------------------------------------------
// host code: outputs, the argument pack, grad bias. E: KernelLaunch<L> below (device traits, Guard, and
// forward(args, dtype) writes args.y; backward_data(args, dtype, deterministic) accumulates grad input into args.gi
// and writes every element of args.goff / args.gmsk; backward_weight(args, dtype) -> fp32 grad weight).
// ---------------------------------------------------------------------------------------------------------------
inline Args make_args(const Dims& d, const Tensor& input, const Tensor& offset, const Tensor& weight,
                      const std::optional<Tensor>& bias, const std::optional<Tensor>& mask) {
  Args a;
  a.d = d;
  a.x = input.const_data_ptr();
  a.sx = strides4(input);
  a.off = offset.const_data_ptr();
  a.so = strides4(offset);
  a.w = weight.const_data_ptr();
  a.swt = strides4(weight);
  if (bias.has_value()) a.b = bias->const_data_ptr();  // read with stride 1: the callers pass a contiguous one
  if (mask.has_value()) {
    a.msk = mask->const_data_ptr();
    a.sm = strides4(*mask);
  }
  return a;
}

template <class E>
Tensor forward(const Tensor& input, const Tensor& offset, const Tensor& weight, const std::optional<Tensor>& bias,
               int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
               const std::optional<Tensor>& mask) {
  const Dims d = check_forward<E>(input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask);
  typename E::Guard guard(input.device());
  std::optional<Tensor> b;
  if (bias.has_value()) b = bias->contiguous();
  Args a = make_args(d, input, offset, weight, b, mask);
  Tensor y = new_output({d.N, d.Cout, d.Ho, d.Wo}, input.options(), memory_format_of(input));
  if (d.M == 0) return y;
  a.y = y.mutable_data_ptr();
  a.sy = strides4(y);
  E::forward(a, input.scalar_type());
  return y;
}

// (grad_input, grad_offset, grad_weight, grad_bias, grad_mask); grad_bias / grad_mask are empty [0] placeholders
// when bias / mask is None.
template <class E>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backward(const Tensor& grad, const Tensor& input,
                                                            const Tensor& offset, const Tensor& weight,
                                                            const std::optional<Tensor>& bias, int64_t sh, int64_t sw,
                                                            int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                                                            const std::optional<Tensor>& mask) {
  const Dims d = check_backward<E>(grad, input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask);
  typename E::Guard guard(input.device());
  Args a = make_args(d, input, offset, weight, bias, mask);
  const auto fmt = memory_format_of(input);
  const auto dt = input.scalar_type();
  a.gout = grad.const_data_ptr();
  a.sg = strides4(grad);
  Tensor gi_acc = at::zeros(input.sizes(), input.options().dtype(at::kFloat));
  Tensor goff = new_output(offset.sizes(), offset.options(), fmt);
  Tensor gmsk = mask.has_value() ? new_output(mask->sizes(), mask->options(), fmt) : placeholder(input);
  Tensor gw;
  if (d.M > 0) {
    a.gi = gi_acc.mutable_data_ptr<float>();
    a.goff = goff.mutable_data_ptr();
    a.sgo = strides4(goff);
    if (mask.has_value()) {
      a.gmsk = gmsk.mutable_data_ptr();
      a.sgm = strides4(gmsk);
    }
    E::backward_data(a, dt, at::globalContext().deterministicAlgorithms());
    gw = E::backward_weight(a, dt).to(weight.scalar_type());
  } else {
    gw = at::zeros(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  }
  Tensor gi = new_output(input.sizes(), input.options(), fmt);
  gi.copy_(gi_acc);
  Tensor gb = bias.has_value() ? grad.to(at::kFloat).sum({0, 2, 3}).to(bias->scalar_type()) : placeholder(input);
  return {gi, goff, gw.contiguous(), gb, gmsk};
}

// The kernels above on launch policy L (CudaLaunch, or the SIMT emulation's EmuLaunch).
template <class L>
struct KernelLaunch : L {
  static void forward(const Args& a, at::ScalarType dt) { launch_forward<L>(a, dt); }
  static void backward_data(const Args& a, at::ScalarType dt, bool det) { launch_backward_data<L>(a, dt, det); }
  static Tensor backward_weight(const Args& a, at::ScalarType dt) { return launch_backward_weight<L>(a, dt); }
};

// The executor of the CUDA kernels on launch policy L (register_impls).
template <class L>
struct KernelImpls {
  BURSTKERN_DEFORM_CONV_OPS(BURSTKERN_KERNEL_IMPL)
};

}  // namespace
}  // namespace deform_conv
}  // namespace burstkern
