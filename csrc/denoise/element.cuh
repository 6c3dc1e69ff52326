// Per-element math of the denoise ops (burstkern/ops/denoise/reference.py is the spec) and the addressing of their
// kernels, __host__ __device__ and free of CUDA builtins: the CUDA kernels (denoise_kernels.cuh) run it, and plain
// C++ may include it. All math is fp32 whatever the storage dtype (float, half, bfloat16), rounded once on store.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>

#include "common/philox.cuh"

namespace burstkern {
namespace denoise {

// ---------------------------------------------------------------------------------------------------------------
// scalings
// ---------------------------------------------------------------------------------------------------------------
struct Coeffs {
  float c_skip, c_out, c_in;
};

// EDM: c_skip = sd²/(σ²+sd²), c_out = σ·sd/√(σ²+sd²); CM: σ−σ_min replaces σ in c_skip and in c_out's numerator.
BURSTKERN_HD Coeffs coefficients(float sigma, float sd, float smin, bool cm) {
  const float sd2 = sd * sd;
  const float c_in = 1.0f / sqrtf(sigma * sigma + sd2);
  const float e = cm ? sigma - smin : sigma;
  return {sd2 / (e * e + sd2), e * sd * c_in, c_in};
}

BURSTKERN_HD float c_noise(float sigma) { return logf(sigma) * 0.25f; }

struct CoeffDerivs {
  float d_skip, d_out;
};

// d c_skip/dσ and d c_out/dσ (closed form; reference.scalings_derivatives).
BURSTKERN_HD CoeffDerivs coeff_derivs(float sigma, float sd, float smin, bool cm) {
  const float sd2 = sd * sd;
  const float den = sigma * sigma + sd2;
  const float r3 = 1.0f / (den * sqrtf(den));
  const float e = cm ? sigma - smin : sigma;
  const float dm = e * e + sd2;
  // den − e·σ = sd² + σ_min·σ (CM; sd² for EDM): the difference cancels in fp32 for σ ≫ sd (2e-4 at σ = 80)
  return {-2.0f * e * sd2 / (dm * dm), sd * (sd2 + (cm ? smin : 0.0f) * sigma) * r3};
}

// d = (x − D)/σ = a·x − b·F with a = (1 − c_skip)/σ, b = c_out/σ, and their σ-derivatives, in closed form: 1 − c_skip
// by subtraction and −dD/σ − (x − D)/σ² both cancel in fp32 for σ ≪ sd (6.5e-4 relative at σ = 0.002, EDM).
// e = σ − σ_min (CM) or σ, sh = σ − e, den = σ² + sd², dm = e² + sd² (reference.derivative_coefficients).
struct DCoeffs {
  float a, b, da, db;
};

BURSTKERN_HD DCoeffs d_coeffs(float sigma, float sd, float smin, bool cm) {
  const float sd2 = sd * sd;
  const float e = cm ? sigma - smin : sigma, sh = cm ? smin : 0.0f;
  const float den = sigma * sigma + sd2, dm = e * e + sd2, r = 1.0f / sqrtf(den), s2 = sigma * sigma;
  return {e * e / (sigma * dm), e * sd * r / sigma, e * ((sigma + sh) * sd2 - e * e * e) / (s2 * dm * dm),
          sd * (sh * den - e * s2) * r / (s2 * den)};
}

// EDM loss weight λ(σ) = (σ² + sd²)/(σ·sd)².
BURSTKERN_HD float loss_weight(float sigma, float sd) {
  const float s_sd = sigma * sd;
  return (sigma * sigma + sd * sd) / (s_sd * s_sd);
}

// max(v, 0) that keeps NaN (as torch.clamp_min does), then √.
BURSTKERN_HD float sqrt_pos(float v) { return sqrtf(v < 0.0f ? 0.0f : v); }

// ---------------------------------------------------------------------------------------------------------------
// forward element functions
// ---------------------------------------------------------------------------------------------------------------
BURSTKERN_HD float combine(float x, float f, const Coeffs& c) { return c.c_skip * x + c.c_out * f; }

// ODE derivative d = (x − D)/σ.
BURSTKERN_HD float derivative(float x, float D, float sigma) { return (x - D) / sigma; }

// Euler: x_next = x + (σ_next − σ)·d.
BURSTKERN_HD float euler(float x, float d, float sigma, float sigma_next) { return x + (sigma_next - sigma) * d; }

// EDM Algorithm 2, second stage; where σ_next == 0 (last step) the result is the Euler step x_next.
BURSTKERN_HD float heun(float x_hat, float d, float x_next, float f_next, float sigma_hat, float sigma_next,
                        float sd) {
  if (!(sigma_next > 0.0f)) return x_next;
  const Coeffs c = coefficients(sigma_next, sd, 0.0f, false);
  const float d2 = derivative(x_next, combine(x_next, f_next, c), sigma_next);
  return x_hat + (sigma_next - sigma_hat) * (d + d2) * 0.5f;
}

// Noise scale √(max(σ² − σ_base², 0))·s_noise (σ_base = 0 when absent).
BURSTKERN_HD float noise_scale(float sigma, float sigma_base, float s_noise) {
  return sqrt_pos(sigma * sigma - sigma_base * sigma_base) * s_noise;
}

// clamp to [−c, c] by compare-and-select, which keeps NaN as torch.clamp does.
BURSTKERN_HD float clamp_sym(float v, float c) { return v < -c ? -c : (v > c ? c : v); }

// ---------------------------------------------------------------------------------------------------------------
// backward element functions
// ---------------------------------------------------------------------------------------------------------------
struct CombineGrads {
  float gx, gf, gsigma;  // gsigma: this element's term of dL/dσ (summed per sample by the caller)
};

// Gradients of (D, d) of denoise_combine for incoming (gD, gd); has_gd false when d was not returned/used.
BURSTKERN_HD CombineGrads combine_backward(float gD, float gd, bool has_gd, float x, float f, float sigma, float sd,
                                           float smin, bool cm, bool need_sigma) {
  const Coeffs c = coefficients(sigma, sd, smin, cm);
  CombineGrads g{gD * c.c_skip, gD * c.c_out, 0.0f};
  const DCoeffs k = d_coeffs(sigma, sd, smin, cm);
  if (has_gd) {
    g.gx += gd * k.a;
    g.gf -= gd * k.b;
  }
  if (need_sigma) {
    const CoeffDerivs dc = coeff_derivs(sigma, sd, smin, cm);
    g.gsigma = gD * (dc.d_skip * x + dc.d_out * f);
    if (has_gd) g.gsigma += gd * (k.da * x - k.db * f);
  }
  return g;
}

// cm_update's gradient passes where −clamp ≤ x0 ≤ clamp (torch.clamp's rule, bounds inclusive).
BURSTKERN_HD float clamp_pass(float g, float x0, bool has_clamp, float c) {
  return (!has_clamp || (x0 >= -c && x0 <= c)) ? g : 0.0f;
}

// d mean(λ(D − y)²)/dD for the per-sample loss gradient gl: 2·gl·λ·(D − y)/M.
BURSTKERN_HD float loss_residual_grad(float gl, float lam, float D, float y, int64_t M) {
  return gl * lam * 2.0f * (D - y) / static_cast<float>(M);
}

// ---------------------------------------------------------------------------------------------------------------
// addressing: per-sample scalars of any float dtype, noise, and the (flat, sample, in-sample) index walk
// ---------------------------------------------------------------------------------------------------------------
enum ScalarKind : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

// A per-sample scalar read from a device tensor ([] -> stride 0, [N] -> its stride): σ's of any float dtype are
// read as they are (no conversion launch), one cached load per element.
struct PerSample {
  const void* ptr;
  int64_t stride;
  int kind;

  BURSTKERN_HD float at(int64_t n) const {
    const int64_t k = n * stride;
    switch (kind) {
      case kDouble:
        return static_cast<float>(static_cast<const double*>(ptr)[k]);
      case kHalf:
        return static_cast<float>(static_cast<const c10::Half*>(ptr)[k]);
      case kBFloat16:
        return static_cast<float>(static_cast<const c10::BFloat16*>(ptr)[k]);
      default:
        return static_cast<const float*>(ptr)[k];
    }
  }
};

// A per-sample output ([] or [N], contiguous) of any float dtype.
struct PerSampleOut {
  void* ptr;
  int kind;

  BURSTKERN_HD void store(int64_t n, float v) const {
    switch (kind) {
      case kDouble:
        static_cast<double*>(ptr)[n] = static_cast<double>(v);
        break;
      case kHalf:
        static_cast<c10::Half*>(ptr)[n] = static_cast<c10::Half>(v);
        break;
      case kBFloat16:
        static_cast<c10::BFloat16*>(ptr)[n] = static_cast<c10::BFloat16>(v);
        break;
      default:
        static_cast<float*>(ptr)[n] = v;
    }
  }
};

// ε of element i: the explicit noise tensor, else tl.randn(seed, logical index). The logical (row-major) index
// differs from the memory index i only for channels_last storage, so a channels_last tensor gets the noise of its
// contiguous copy (as the reference and Triton backends do).
template <typename scalar_t>
struct NoiseSource {
  const scalar_t* noise;  // nullptr: draw in-kernel
  const int64_t* seed;    // device int64 [1], written by the generator on the stream (fresh per graph replay)
  bool channels_last;
  int64_t C, H, W, M;

  BURSTKERN_HD float at(int64_t i, int64_t n, int64_t r) const {
    if (noise != nullptr) return static_cast<float>(noise[i]);
    int64_t logical = i;
    if (channels_last) {  // memory order within a sample is (h, w, c)
      const int64_t c = r % C;
      const int64_t t = r / C;
      const int64_t w = t % W;
      const int64_t h = t / W;
      logical = n * M + (c * H + h) * W + w;
    }
    return philox::normal(*seed, logical);
  }
};

// Walks flat indices start, start + stride, ... keeping the sample n = i / M and in-sample index r = i % M up to
// date with adds and one compare per step (a 64-bit division per element would cost more than the memory
// traffic of these elementwise ops); two divisions per thread at the start.
struct SampleCursor {
  int64_t i, n, r;
  int64_t stride, step_n, step_r, M;

  BURSTKERN_HD SampleCursor(int64_t start, int64_t stride_, int64_t M_)
      : i(start), n(start / M_), r(start % M_), stride(stride_), step_n(stride_ / M_), step_r(stride_ % M_), M(M_) {}

  BURSTKERN_HD void advance() {
    i += stride;
    n += step_n;
    r += step_r;
    if (r >= M) {
      r -= M;
      ++n;
    }
  }
};

}  // namespace denoise
}  // namespace burstkern
