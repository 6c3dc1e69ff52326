// One functor per denoise op: which tensors an element reads and writes, around the element math of element.cuh.
// The CUDA launcher (denoise_cuda.cu) runs them in grid-stride kernels, the CPU launcher (denoise_cpu.cpp) in
// loops; both hand every call the flat index i (memory order, shared by all tensor arguments), the sample n and
// the index r within the sample. Reduction functors also return the element's term and have a finalize(g, sum).
#pragma once

#include "denoise/element.cuh"

namespace burstkern {
namespace denoise {

template <typename T>
BURSTKERN_HD float ld(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

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

// The RNG itself at given offsets (tests pin it to rng.py): normals and, optionally, the four Philox words.
struct RandnFn {
  const int64_t* seed;
  const int64_t* offsets;
  float* normal;
  int64_t* words;  // [n, 4] or nullptr

  BURSTKERN_HD void operator()(int64_t i, int64_t, int64_t) const {
    normal[i] = philox::normal(*seed, offsets[i]);
    if (words != nullptr) {
      const philox::Words w = philox::words(*seed, offsets[i]);
      words[4 * i + 0] = w.c0;
      words[4 * i + 1] = w.c1;
      words[4 * i + 2] = w.c2;
      words[4 * i + 3] = w.c3;
    }
  }
};

}  // namespace denoise
}  // namespace burstkern
