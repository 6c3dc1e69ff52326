// The CUDA kernels of the burstkern_C denoise ops, their launches and host code, written once: nvcc builds them for
// the GPU (denoise_cuda.cu, launch policy CudaLaunch), the C++ compiler for the SIMT emulation of the tests
// (denoise_cpu.cpp in a testing build, EmuLaunch). Argument checks: denoise.h; element math: element.cuh.
//
// One launch per op, the functors below in grid-stride loops over the flat elements, fp32 math for
// float/half/bfloat16 storage, 64-bit indices.
// σ and the RNG seed are read from device tensors inside the kernels: no host sync, and a CUDA-graph replay reads
// the seed the generator wrote for that replay.
//
// Functors, one per op: which tensors an element reads and writes, around the element math of element.cuh. The
// kernels hand every call the flat index i (memory order, shared by all tensor arguments), the sample n and
// the index r within the sample. Reduction functors also return the element's term and have a finalize(g, sum).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>

#include "common/alloc.h"
#include "common/dispatch.h"
#include "common/load.h"
#include "common/simt.h"
#include "denoise/denoise.h"
#include "denoise/element.cuh"

namespace burstkern {
namespace denoise {
// internal linkage: nvcc and the C++ compiler build different bodies under the same names
namespace {

// c_skip, c_out, c_in, c_noise of each σ (elementwise over σ; n == i).
template <typename sigma_t>
struct ScalingsFn {
  const sigma_t* sigma;
  float *skip, *out, *in, *noise;
  float sd, smin;
  bool cm;

  BURSTKERN_HD void operator()(int64_t i, int64_t, int64_t) const {
    const float s = ld(sigma, i);
    const Coeffs c = coefficients(s, sd, smin, cm);
    skip[i] = c.c_skip;
    out[i] = c.c_out;
    in[i] = c.c_in;
    noise[i] = c_noise(s);
  }
};

// D = c_skip·x + c_out·F, and d = (x − D)/σ when d != nullptr.
template <typename scalar_t>
struct CombineFn {
  const scalar_t *x, *f;
  PerSample sigma;
  scalar_t *D, *d;
  float sd, smin;
  bool cm;

  BURSTKERN_HD void operator()(int64_t i, int64_t n, int64_t) const {
    const float s = sigma.at(n);
    const float xv = ld(x, i);
    const float Dv = combine(xv, ld(f, i), coefficients(s, sd, smin, cm));
    D[i] = static_cast<scalar_t>(Dv);
    if (d != nullptr) d[i] = static_cast<scalar_t>(derivative(xv, Dv, s));
  }
};

// Gradients of denoise_combine; the σ term is summed per group (sample, or all elements for a scalar σ).
template <typename scalar_t>
struct CombineBackwardFn {
  const scalar_t *gD, *gd, *x, *f;  // gd == nullptr: d unused
  PerSample sigma;
  scalar_t *gx, *gf;
  PerSampleOut gsigma;  // written by finalize when need_sigma
  float sd, smin;
  bool cm, need_sigma;

  BURSTKERN_HD float operator()(int64_t i, int64_t n, int64_t) const {
    const CombineGrads g = combine_backward(ld(gD, i), gd != nullptr ? ld(gd, i) : 0.0f, gd != nullptr,
                                            need_sigma ? ld(x, i) : 0.0f, need_sigma ? ld(f, i) : 0.0f,
                                            sigma.at(n), sd, smin, cm, need_sigma);
    gx[i] = static_cast<scalar_t>(g.gx);
    gf[i] = static_cast<scalar_t>(g.gf);
    return g.gsigma;
  }
  BURSTKERN_HD void finalize(int64_t g, float sum) const { gsigma.store(g, sum); }
};

// (x_next, d) of one Euler step.
template <typename scalar_t>
struct EulerFn {
  const scalar_t *x, *f;
  PerSample sigma, sigma_next;
  scalar_t *x_next, *d;
  float sd;

  BURSTKERN_HD void operator()(int64_t i, int64_t n, int64_t) const {
    const float s = sigma.at(n);
    const float xv = ld(x, i);
    const float dv = derivative(xv, combine(xv, ld(f, i), coefficients(s, sd, 0.0f, false)), s);
    x_next[i] = static_cast<scalar_t>(euler(xv, dv, s, sigma_next.at(n)));
    d[i] = static_cast<scalar_t>(dv);
  }
};

// EDM Algorithm 2's second stage.
template <typename scalar_t>
struct HeunFn {
  const scalar_t *x_hat, *d, *x_next, *f_next;
  PerSample sigma_hat, sigma_next;
  scalar_t* out;
  float sd;

  BURSTKERN_HD void operator()(int64_t i, int64_t n, int64_t) const {
    out[i] = static_cast<scalar_t>(heun(ld(x_hat, i), ld(d, i), ld(x_next, i), ld(f_next, i), sigma_hat.at(n),
                                        sigma_next.at(n), sd));
  }
};

// x + √(max(σ² − σ_base², 0))·s_noise·ε.
template <typename scalar_t>
struct AddNoiseFn {
  const scalar_t* x;
  PerSample sigma, sigma_base;
  bool has_base;
  NoiseSource<scalar_t> eps;
  scalar_t* out;
  float s_noise;

  BURSTKERN_HD void operator()(int64_t i, int64_t n, int64_t r) const {
    const float scale = noise_scale(sigma.at(n), has_base ? sigma_base.at(n) : 0.0f, s_noise);
    out[i] = static_cast<scalar_t>(ld(x, i) + scale * eps.at(i, n, r));
  }
};

// Consistency output, optional clamp, optional re-noise to σ_next.
template <typename scalar_t>
struct CmUpdateFn {
  const scalar_t *x, *f;
  PerSample sigma, sigma_next;
  bool has_next, has_clamp;
  NoiseSource<scalar_t> eps;
  scalar_t* out;
  float smin, sd, clamp;

  BURSTKERN_HD void operator()(int64_t i, int64_t n, int64_t r) const {
    float x0 = combine(ld(x, i), ld(f, i), coefficients(sigma.at(n), sd, smin, true));
    if (has_clamp) x0 = clamp_sym(x0, clamp);
    if (has_next) {
      const float sn = sigma_next.at(n);
      x0 += sqrt_pos(sn * sn - smin * smin) * eps.at(i, n, r);
    }
    out[i] = static_cast<scalar_t>(x0);
  }
};

template <typename scalar_t>
struct CmUpdateBackwardFn {
  const scalar_t *g, *x, *f;
  PerSample sigma;
  scalar_t *gx, *gf;
  float smin, sd, clamp;
  bool has_clamp;

  BURSTKERN_HD void operator()(int64_t i, int64_t n, int64_t) const {
    const Coeffs c = coefficients(sigma.at(n), sd, smin, true);
    // x and F are read only when the clamp mask needs x0
    const float gv = clamp_pass(ld(g, i), has_clamp ? combine(ld(x, i), ld(f, i), c) : 0.0f, has_clamp, clamp);
    gx[i] = static_cast<scalar_t>(gv * c.c_skip);
    gf[i] = static_cast<scalar_t>(gv * c.c_out);
  }
};

// Per-sample sum of (D − y)², then loss[n] = λ(σ_n)·sum/M.
template <typename scalar_t>
struct EdmLossFn {
  const scalar_t *x, *f, *y;
  PerSample sigma;
  scalar_t* loss;
  float sd;
  int64_t M;

  BURSTKERN_HD float operator()(int64_t i, int64_t n, int64_t) const {
    const float r = combine(ld(x, i), ld(f, i), coefficients(sigma.at(n), sd, 0.0f, false)) - ld(y, i);
    return r * r;
  }
  BURSTKERN_HD void finalize(int64_t g, float sum) const {
    // M == 0 (empty samples): 0, as the Triton backend gives
    loss[g] = static_cast<scalar_t>(sum * loss_weight(sigma.at(g), sd) / static_cast<float>(M > 0 ? M : 1));
  }
};

template <typename scalar_t>
struct EdmLossBackwardFn {
  PerSample grad;  // [N] (or [] broadcast) loss gradient, x's dtype
  const scalar_t *x, *f, *y;
  PerSample sigma;
  scalar_t *gx, *gf, *gy;
  float sd;
  int64_t M;

  BURSTKERN_HD void operator()(int64_t i, int64_t n, int64_t) const {
    const float s = sigma.at(n);
    const Coeffs c = coefficients(s, sd, 0.0f, false);
    const float r = loss_residual_grad(grad.at(n), loss_weight(s, sd), combine(ld(x, i), ld(f, i), c), ld(y, i), M);
    gx[i] = static_cast<scalar_t>(r * c.c_skip);
    gf[i] = static_cast<scalar_t>(r * c.c_out);
    gy[i] = static_cast<scalar_t>(-r);
  }
};

constexpr int kThreads = 256;
// Reductions: each block sums a fixed chunk of one group, 8 elements per thread.
constexpr int kChunk = 2048;

template <class F>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(const F fn, int64_t total, int64_t M) {
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (start >= total) return;
  for (SampleCursor c(start, static_cast<int64_t>(gridDim.x) * blockDim.x, M); c.i < total; c.advance()) {
    fn(c.i, c.n, c.r);
  }
}

// Sum of v over the block, valid in thread 0 (fixed shuffle tree: deterministic).
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? warp_sums[lane] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  __syncthreads();  // warp_sums is reused by a second block_sum
  return v;
}

// Per-group reduction in one launch: block b of group g handles elements [b·kChunk, (b+1)·kChunk) of the group
// (writing any elementwise outputs of fn), stores its partial sum, and the last block of the group to finish
// (a counter per group, zeroed by a memset on the same stream) sums the group's partials in a fixed order and
// hands the total to fn.finalize. Deterministic, unlike atomically added floats, and graph-capturable.
template <class F>
__global__ void __launch_bounds__(kThreads)
    group_reduce_kernel(const F fn, int64_t group_size, int64_t nblk, int64_t M, float* __restrict__ partials,
                        unsigned int* __restrict__ counters) {
  const int64_t blk = blockIdx.x;
  const int64_t g = blk / nblk, r0 = (blk % nblk) * kChunk;
  const int64_t end = std::min<int64_t>(r0 + kChunk, group_size);
  float acc = 0.0f;
  if (r0 + threadIdx.x < end) {
    const int64_t first = g * group_size + r0 + threadIdx.x;
    const int64_t stop = g * group_size + end;
    for (SampleCursor c(first, kThreads, M); c.i < stop; c.advance()) acc += fn(c.i, c.n, c.r);
  }
  const float block_total = block_sum(acc);
  __shared__ bool is_last;
  if (threadIdx.x == 0) {
    partials[blk] = block_total;
    __threadfence();  // the partial is visible device-wide before the counter says so
    is_last = atomicAdd(&counters[g], 1u) == static_cast<unsigned int>(nblk - 1);
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < nblk; j += kThreads) s += __ldcg(&partials[g * nblk + j]);  // L2, not stale L1
  s = block_sum(s);
  if (threadIdx.x == 0) fn.finalize(g, s);
}

// The launches of the kernels above on launch policy L (CudaLaunch, or the SIMT emulation's EmuLaunch): the
// executor functions the host code below calls.
template <class L>
struct KernelLaunch : L {
  template <class F>
  static void elementwise(const F& fn, int64_t total, int64_t M) {
    // memory-bound: enough resident blocks to fill every SM (8 x 256 threads), grid-stride beyond that
    const int64_t want = (total + kThreads - 1) / kThreads;
    const int64_t blocks = std::min<int64_t>(want, static_cast<int64_t>(L::sm_count()) * 8);
    L::launch(elementwise_kernel<F>, dim3(static_cast<unsigned int>(blocks)), dim3(kThreads), fn, total, M);
  }

  template <class F>
  static void reduce(const F& fn, int64_t groups, int64_t group_size, int64_t M, const Tensor& like) {
    const int64_t nblk = std::max<int64_t>(1, (group_size + kChunk - 1) / kChunk);
    const int64_t blocks = groups * nblk;
    TORCH_CHECK(blocks <= INT32_MAX, "reduction over ", groups, " groups of ", group_size,
                " elements needs more than 2^31 blocks");
    // one workspace: float partials, then one counter per group (the caching allocator makes this cheap)
    Tensor ws = at::empty({blocks + groups}, like.options().dtype(at::kFloat));
    float* partials = ws.mutable_data_ptr<float>();
    auto* counters = reinterpret_cast<unsigned int*>(partials + blocks);
    L::zero(counters, sizeof(unsigned int) * groups);
    L::launch(group_reduce_kernel<F>, dim3(static_cast<unsigned int>(blocks)), dim3(kThreads), fn, group_size, nblk,
              std::max<int64_t>(M, 1), partials, counters);
  }
};

// ---------------------------------------------------------------------------------------------------------------
// host code: outputs and dtype dispatch. Exec: KernelLaunch<L> (device traits, Guard, elementwise(fn, total, M),
// reduce(fn, groups, group_size, M, like): per-group sums of fn's terms handed to fn.finalize(g, sum)).
// ---------------------------------------------------------------------------------------------------------------
static_assert(int{kFloat} == cpu_isa::kF32 && int{kDouble} == cpu_isa::kF64 && int{kHalf} == cpu_isa::kF16 &&
              int{kBFloat16} == cpu_isa::kBF16);  // ScalarKind is dtype_code's numbering
inline int scalar_kind(at::ScalarType t) {
  const int kind = dtype_code(t);
  return kind >= 0 ? kind : kFloat;
}

inline PerSample per_sample(const Tensor& s) {
  return {s.const_data_ptr(), s.dim() == 0 ? 0 : s.stride(0), scalar_kind(s.scalar_type())};
}

inline Tensor new_like(const Tensor& x, const Flat& L) { return new_output(x.sizes(), x.options(), L.fmt); }

// ε from the noise tensor, else from the in-kernel RNG under seed (check_noise has checked them).
template <typename scalar_t>
NoiseSource<scalar_t> noise_source(const std::optional<Tensor>& noise, const std::optional<Tensor>& seed,
                                   const Flat& L) {
  NoiseSource<scalar_t> src{nullptr, nullptr, L.channels_last, L.C, L.H, L.W, L.M};
  if (noise.has_value()) {
    src.noise = noise->const_data_ptr<scalar_t>();
  } else {
    src.seed = seed->const_data_ptr<int64_t>();
  }
  return src;
}

// ---------------------------------------------------------------------------------------------------------------
// ops
// ---------------------------------------------------------------------------------------------------------------
template <class Exec>
std::tuple<Tensor, Tensor, Tensor, Tensor> scalings(const Tensor& sigma, double sd, double smin,
                                                    c10::string_view mode) {
  const bool cm = check_scalings<Exec>(sigma, sd, smin, mode);
  typename Exec::Guard guard(sigma.device());
  const auto f32 = sigma.options().dtype(at::kFloat);
  auto make = [&] { return new_output(sigma.sizes(), f32, at::MemoryFormat::Contiguous); };
  Tensor skip = make(), out = make(), in = make(), noise = make();
  if (sigma.numel() > 0) {
    BURSTKERN_DISPATCH_FLOATING(false, sigma.scalar_type(), "denoise_scalings", [&] {
      ScalingsFn<scalar_t> fn{sigma.const_data_ptr<scalar_t>(), skip.mutable_data_ptr<float>(),
                              out.mutable_data_ptr<float>(),     in.mutable_data_ptr<float>(),
                              noise.mutable_data_ptr<float>(),   static_cast<float>(sd),
                              static_cast<float>(smin),          cm};
      Exec::elementwise(fn, sigma.numel(), 1);
    });
  }
  return {skip, out, in, noise};
}

template <class Exec>
std::tuple<Tensor, Tensor> combine(const Tensor& x, const Tensor& F, const Tensor& sigma, double sd, double smin,
                                   c10::string_view mode, bool return_d) {
  const Flat L = check_combine<Exec>(x, F, sigma, sd, smin, mode, return_d);
  const bool cm = mode == "cm";
  const PerSample s = per_sample(sigma);
  typename Exec::Guard guard(x.device());
  Tensor D = new_like(x, L);
  Tensor d = return_d ? new_like(x, L) : placeholder(x);
  if (L.total > 0) {
    BURSTKERN_DISPATCH_FLOATING(false, x.scalar_type(), "denoise_combine", [&] {
      CombineFn<scalar_t> fn{x.const_data_ptr<scalar_t>(),
                             F.const_data_ptr<scalar_t>(),
                             s,
                             D.mutable_data_ptr<scalar_t>(),
                             return_d ? d.mutable_data_ptr<scalar_t>() : nullptr,
                             static_cast<float>(sd),
                             static_cast<float>(smin),
                             cm};
      Exec::elementwise(fn, L.total, L.M);
    });
  }
  return {D, d};
}

template <class Exec>
std::tuple<Tensor, Tensor, Tensor> combine_backward(const Tensor& grad_D, const Tensor& grad_d, const Tensor& x,
                                                    const Tensor& F, const Tensor& sigma, double sd, double smin,
                                                    c10::string_view mode, bool return_d, bool need_sigma) {
  const Flat L = check_combine_backward<Exec>(grad_D, grad_d, x, F, sigma, sd, smin, mode, return_d, need_sigma);
  const bool cm = mode == "cm", has_gd = uses_grad_d(grad_d, return_d);
  const PerSample s = per_sample(sigma);
  typename Exec::Guard guard(x.device());
  Tensor gx = new_like(x, L), gF = new_like(x, L);
  const auto contiguous = at::MemoryFormat::Contiguous;
  Tensor gs = need_sigma ? new_output(sigma.sizes(), sigma.options(), contiguous) : placeholder(x);
  BURSTKERN_DISPATCH_FLOATING(false, x.scalar_type(), "denoise_combine_backward", [&] {
    CombineBackwardFn<scalar_t> fn{grad_D.const_data_ptr<scalar_t>(),
                                   has_gd ? grad_d.const_data_ptr<scalar_t>() : nullptr,
                                   x.const_data_ptr<scalar_t>(),
                                   F.const_data_ptr<scalar_t>(),
                                   s,
                                   gx.mutable_data_ptr<scalar_t>(),
                                   gF.mutable_data_ptr<scalar_t>(),
                                   {need_sigma ? gs.mutable_data_ptr() : nullptr, scalar_kind(sigma.scalar_type())},
                                   static_cast<float>(sd),
                                   static_cast<float>(smin),
                                   cm,
                                   need_sigma};
    if (need_sigma) {
      // σ's gradient sums per sample for a per-sample σ, over everything for a scalar σ
      const int64_t groups = sigma.dim() == 1 ? L.N : 1;
      if (groups > 0) Exec::reduce(fn, groups, L.total / groups, L.M, x);
    } else if (L.total > 0) {
      Exec::elementwise(fn, L.total, L.M);
    }
  });
  return {gx, gF, gs};
}

template <class Exec>
std::tuple<Tensor, Tensor> euler(const Tensor& x, const Tensor& F, const Tensor& sigma, const Tensor& sigma_next,
                                 double sd) {
  const Flat L = check_euler<Exec>(x, F, sigma, sigma_next, sd);
  const PerSample s = per_sample(sigma), sn = per_sample(sigma_next);
  typename Exec::Guard guard(x.device());
  Tensor xn = new_like(x, L), d = new_like(x, L);
  if (L.total > 0) {
    BURSTKERN_DISPATCH_FLOATING(false, x.scalar_type(), "edm_euler_update", [&] {
      EulerFn<scalar_t> fn{x.const_data_ptr<scalar_t>(), F.const_data_ptr<scalar_t>(), s, sn,
                           xn.mutable_data_ptr<scalar_t>(), d.mutable_data_ptr<scalar_t>(), static_cast<float>(sd)};
      Exec::elementwise(fn, L.total, L.M);
    });
  }
  return {xn, d};
}

template <class Exec>
Tensor heun(const Tensor& x_hat, const Tensor& d, const Tensor& x_next, const Tensor& F_next, const Tensor& sigma_hat,
            const Tensor& sigma_next, double sd) {
  const Flat L = check_heun<Exec>(x_hat, d, x_next, F_next, sigma_hat, sigma_next, sd);
  const PerSample sh = per_sample(sigma_hat), sn = per_sample(sigma_next);
  typename Exec::Guard guard(x_hat.device());
  Tensor out = new_like(x_hat, L);
  if (L.total > 0) {
    BURSTKERN_DISPATCH_FLOATING(false, x_hat.scalar_type(), "edm_heun_update", [&] {
      HeunFn<scalar_t> fn{x_hat.const_data_ptr<scalar_t>(),  d.const_data_ptr<scalar_t>(),
                          x_next.const_data_ptr<scalar_t>(), F_next.const_data_ptr<scalar_t>(),
                          sh,                                sn,
                          out.mutable_data_ptr<scalar_t>(),  static_cast<float>(sd)};
      Exec::elementwise(fn, L.total, L.M);
    });
  }
  return out;
}

template <class Exec>
Tensor add_noise(const Tensor& x, const Tensor& sigma, const std::optional<Tensor>& sigma_base, double s_noise,
                 const std::optional<Tensor>& noise, const std::optional<Tensor>& seed) {
  const Flat L = check_add_noise<Exec>(x, sigma, sigma_base, s_noise, noise, seed);
  const PerSample s = per_sample(sigma);
  const PerSample sb = sigma_base.has_value() ? per_sample(*sigma_base) : s;
  typename Exec::Guard guard(x.device());
  Tensor out = new_like(x, L);
  BURSTKERN_DISPATCH_FLOATING(false, x.scalar_type(), "add_noise", [&] {
    const NoiseSource<scalar_t> eps = noise_source<scalar_t>(noise, seed, L);
    AddNoiseFn<scalar_t> fn{x.const_data_ptr<scalar_t>(), s, sb, sigma_base.has_value(), eps,
                            out.mutable_data_ptr<scalar_t>(), static_cast<float>(s_noise)};
    if (L.total > 0) Exec::elementwise(fn, L.total, L.M);
  });
  return out;
}

template <class Exec>
Tensor cm_update(const Tensor& x, const Tensor& F, const Tensor& sigma, double smin, double sd,
                 const std::optional<Tensor>& sigma_next, std::optional<double> clamp,
                 const std::optional<Tensor>& noise, const std::optional<Tensor>& seed) {
  const Flat L = check_cm_update<Exec>(x, F, sigma, smin, sd, sigma_next, clamp, noise, seed);
  const PerSample s = per_sample(sigma);
  const PerSample sn = sigma_next.has_value() ? per_sample(*sigma_next) : s;
  typename Exec::Guard guard(x.device());
  Tensor out = new_like(x, L);
  BURSTKERN_DISPATCH_FLOATING(false, x.scalar_type(), "cm_update", [&] {
    NoiseSource<scalar_t> eps{};
    if (sigma_next.has_value()) eps = noise_source<scalar_t>(noise, seed, L);
    CmUpdateFn<scalar_t> fn{x.const_data_ptr<scalar_t>(),
                            F.const_data_ptr<scalar_t>(),
                            s,
                            sn,
                            sigma_next.has_value(),
                            clamp.has_value(),
                            eps,
                            out.mutable_data_ptr<scalar_t>(),
                            static_cast<float>(smin),
                            static_cast<float>(sd),
                            static_cast<float>(clamp.value_or(0.0))};
    if (L.total > 0) Exec::elementwise(fn, L.total, L.M);
  });
  return out;
}

template <class Exec>
std::tuple<Tensor, Tensor> cm_update_backward(const Tensor& grad, const Tensor& x, const Tensor& F,
                                              const Tensor& sigma, double smin, double sd,
                                              std::optional<double> clamp) {
  const Flat L = check_cm_update_backward<Exec>(grad, x, F, sigma, smin, sd, clamp);
  const PerSample s = per_sample(sigma);
  typename Exec::Guard guard(x.device());
  Tensor gx = new_like(x, L), gF = new_like(x, L);
  if (L.total > 0) {
    BURSTKERN_DISPATCH_FLOATING(false, x.scalar_type(), "cm_update_backward", [&] {
      CmUpdateBackwardFn<scalar_t> fn{grad.const_data_ptr<scalar_t>(),
                                      x.const_data_ptr<scalar_t>(),
                                      F.const_data_ptr<scalar_t>(),
                                      s,
                                      gx.mutable_data_ptr<scalar_t>(),
                                      gF.mutable_data_ptr<scalar_t>(),
                                      static_cast<float>(smin),
                                      static_cast<float>(sd),
                                      static_cast<float>(clamp.value_or(0.0)),
                                      clamp.has_value()};
      Exec::elementwise(fn, L.total, L.M);
    });
  }
  return {gx, gF};
}

template <class Exec>
Tensor edm_loss(const Tensor& x, const Tensor& F, const Tensor& y, const Tensor& sigma, double sd) {
  const Flat L = check_edm_loss<Exec>(x, F, y, sigma, sd);
  const PerSample s = per_sample(sigma);
  typename Exec::Guard guard(x.device());
  Tensor loss = new_output({L.N}, x.options(), at::MemoryFormat::Contiguous);
  if (L.N > 0) {
    BURSTKERN_DISPATCH_FLOATING(false, x.scalar_type(), "edm_loss", [&] {
      EdmLossFn<scalar_t> fn{x.const_data_ptr<scalar_t>(), F.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
                             s, loss.mutable_data_ptr<scalar_t>(), static_cast<float>(sd), L.M};
      Exec::reduce(fn, L.N, L.M, L.M, x);
    });
  }
  return loss;
}

template <class Exec>
std::tuple<Tensor, Tensor, Tensor> edm_loss_backward(const Tensor& grad, const Tensor& x, const Tensor& F,
                                                     const Tensor& y, const Tensor& sigma, double sd) {
  const Flat L = check_edm_loss_backward<Exec>(grad, x, F, y, sigma, sd);
  const PerSample g = per_sample(grad), s = per_sample(sigma);
  typename Exec::Guard guard(x.device());
  Tensor gx = new_like(x, L), gF = new_like(x, L), gy = new_like(x, L);
  if (L.total > 0) {
    BURSTKERN_DISPATCH_FLOATING(false, x.scalar_type(), "edm_loss_backward", [&] {
      EdmLossBackwardFn<scalar_t> fn{g,
                                     x.const_data_ptr<scalar_t>(),
                                     F.const_data_ptr<scalar_t>(),
                                     y.const_data_ptr<scalar_t>(),
                                     s,
                                     gx.mutable_data_ptr<scalar_t>(),
                                     gF.mutable_data_ptr<scalar_t>(),
                                     gy.mutable_data_ptr<scalar_t>(),
                                     static_cast<float>(sd),
                                     L.M};
      Exec::elementwise(fn, L.total, L.M);
    });
  }
  return {gx, gF, gy};
}

// The executor of the CUDA kernels on launch policy L (register_impls).
template <class L>
struct KernelImpls {
  BURSTKERN_DENOISE_OPS(BURSTKERN_KERNEL_IMPL)
};

}  // namespace
}  // namespace denoise
}  // namespace burstkern
