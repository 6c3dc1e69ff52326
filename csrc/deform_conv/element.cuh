// Per-sample math of deform_conv2d (burstkern/ops/deform_conv/reference.py is the spec), __host__ __device__ and
// free of CUDA builtins: the CUDA kernels (deform_conv_kernels.cuh) run it, and plain C++ may include it. Bilinear
// sampling counts each of the four corners outside the image as zero (as reference._corners and
// torchvision). All math is fp32 whatever the storage dtype.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>

#include "common/load.h"

namespace burstkern {
namespace deform_conv {

// Problem geometry, passed by value to every kernel (strides in elements, 64-bit).
struct Dims {
  int64_t N, Cin, H, W, Cout, Ho, Wo;
  int64_t cin_g, cout_g, groups, og, cpg;  // cpg: input channels per offset group
  int kh, kw, K;                           // K = kh*kw taps
  int sh, sw, ph, pw, dh, dw;
  int64_t M;  // N*Ho*Wo output pixels
};

struct Strides4 {
  int64_t n, c, h, w;
};

// The bilinear stencil of one sample point: top-left corner (y0, x0), the fractional parts, and the four corner
// weights with a corner outside the image weighted zero (the validity folded in). Unmasked.
struct Stencil {
  int64_t y0, x0;
  float ly, lx;
  float w00, w01, w10, w11;
  bool v00, v01, v10, v11;
};

// Stencil of the point (py, px) in an H x W image. py/px are clamped to [-2, H+1] / [-2, W+1] first so floor()
// fits an integer for huge offsets; beyond that every corner is outside anyway, so nothing changes.
BURSTKERN_HD Stencil make_stencil(float py, float px, int64_t H, int64_t W) {
  py = fminf(fmaxf(py, -2.0f), static_cast<float>(H) + 1.0f);
  px = fminf(fmaxf(px, -2.0f), static_cast<float>(W) + 1.0f);
  const float y0f = floorf(py), x0f = floorf(px);
  Stencil s;
  s.y0 = static_cast<int64_t>(y0f);
  s.x0 = static_cast<int64_t>(x0f);
  s.ly = py - y0f;
  s.lx = px - x0f;
  const bool vy0 = s.y0 >= 0 && s.y0 < H, vy1 = s.y0 >= -1 && s.y0 < H - 1;
  const bool vx0 = s.x0 >= 0 && s.x0 < W, vx1 = s.x0 >= -1 && s.x0 < W - 1;
  s.v00 = vy0 && vx0;
  s.v01 = vy0 && vx1;
  s.v10 = vy1 && vx0;
  s.v11 = vy1 && vx1;
  const float hy = 1.0f - s.ly, hx = 1.0f - s.lx;
  s.w00 = s.v00 ? hy * hx : 0.0f;
  s.w01 = s.v01 ? hy * s.lx : 0.0f;
  s.w10 = s.v10 ? s.ly * hx : 0.0f;
  s.w11 = s.v11 ? s.ly * s.lx : 0.0f;
  return s;
}

// Sampling position of output pixel (ho, wo), tap (i, j), offset (dy, dx): base grid + offset, in fp32.
BURSTKERN_HD float sample_y(const Dims& d, int64_t ho, int i, float dy) {
  return static_cast<float>(ho * d.sh - d.ph + static_cast<int64_t>(i) * d.dh) + dy;
}
BURSTKERN_HD float sample_x(const Dims& d, int64_t wo, int j, float dx) {
  return static_cast<float>(wo * d.sw - d.pw + static_cast<int64_t>(j) * d.dw) + dx;
}

// Sampled value of one channel plane (pointer to its (0, 0) element, strides sh/sw): a zero-weight corner is not
// read (it may lie outside the allocation).
template <typename T>
BURSTKERN_HD float bilinear(const T* plane, int64_t sh, int64_t sw, const Stencil& s) {
  const T* p = plane + s.y0 * sh + s.x0 * sw;
  float v = 0.0f;
  if (s.v00) v += s.w00 * ld(p);
  if (s.v01) v += s.w01 * ld(p + sw);
  if (s.v10) v += s.w10 * ld(p + sh);
  if (s.v11) v += s.w11 * ld(p + sh + sw);
  return v;
}

// Sampled value and its derivatives d/dy, d/dx (floor() is locally constant: d(wy)/dy = ±1, d(wx)/dx = ±1),
// exactly the sums of reference.deform_conv2d_backward over the corners.
struct SampleGrad {
  float v, gy, gx;
};

template <typename T>
BURSTKERN_HD SampleGrad bilinear_grad(const T* plane, int64_t sh, int64_t sw, const Stencil& s) {
  const T* p = plane + s.y0 * sh + s.x0 * sw;
  const float x00 = s.v00 ? ld(p) : 0.0f;
  const float x01 = s.v01 ? ld(p + sw) : 0.0f;
  const float x10 = s.v10 ? ld(p + sh) : 0.0f;
  const float x11 = s.v11 ? ld(p + sh + sw) : 0.0f;
  const float hy = 1.0f - s.ly, hx = 1.0f - s.lx;
  SampleGrad g;
  g.v = s.w00 * x00 + s.w01 * x01 + s.w10 * x10 + s.w11 * x11;
  g.gy = (x10 - x00) * hx + (x11 - x01) * s.lx;
  g.gx = (x01 - x00) * hy + (x11 - x10) * s.ly;
  return g;
}

// Offset/mask of one (n, offset group, tap, output pixel) and the stencil it gives; the mask is 1 without one.
struct TapSample {
  Stencil s;
  float mask;
};

template <typename T>
BURSTKERN_HD TapSample tap_sample(const Dims& d, const T* offset, Strides4 so, const T* mask, Strides4 sm,
                                  int64_t n, int64_t ogi, int tap, int64_t ho, int64_t wo) {
  const int64_t ch = 2 * (ogi * d.K + tap);
  const T* o = offset + n * so.n + ho * so.h + wo * so.w;
  const float dy = ld(o + ch * so.c), dx = ld(o + (ch + 1) * so.c);
  TapSample t;
  t.s = make_stencil(sample_y(d, ho, tap / d.kw, dy), sample_x(d, wo, tap % d.kw, dx), d.H, d.W);
  t.mask = mask ? ld(mask + n * sm.n + (ogi * d.K + tap) * sm.c + ho * sm.h + wo * sm.w) : 1.0f;
  return t;
}

// Rounds an fp32 value to T's precision and back: the sampled tile the tensor cores see for half/bfloat16.
template <typename T>
BURSTKERN_HD float round_to(float v) {
  return static_cast<float>(static_cast<T>(v));
}

}  // namespace deform_conv
}  // namespace burstkern
