// CPU implementations of the burstkern_C deform_conv2d ops: the element functions of element.cuh (the code the
// CUDA kernels run) in plain loops, the GEMMs as loops too; or, when the tests switch the SIMT emulation on, the
// CUDA kernels themselves run on the CPU (common/simt_emu.h). They exist so sampling, indexing, layouts, groups,
// dtype handling and the backward formulas are tested on machines without a GPU; the `cuda` backend itself stays
// GPU-only. Like the kernels, half/bfloat16 round the sampled (modulated) value to their dtype before the product
// (the tensor cores' input) and accumulate in fp32. Every sample n is independent, and grad weight sums per-sample
// partials in sample order, so the results do not depend on the thread count (deterministic).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "common/exec.h"
#include "deform_conv/ops.h"
// last: under the C++ compiler these bring the SIMT emulation's stand-ins for the CUDA keywords (common/simt.h)
#include "deform_conv/bwd_kernels.cuh"
#include "deform_conv/fwd_kernel.cuh"

namespace burstkern {
namespace deform_conv {
namespace {

template <typename T>
float modulated_sample(const Args& a, const TapSample& ts, int64_t n, int64_t c) {
  const T* x = static_cast<const T*>(a.x) + n * a.sx.n + c * a.sx.c;
  const float v = ts.mask * bilinear(x, a.sx.h, a.sx.w, ts.s);
  return std::is_same<T, float>::value ? v : round_to<T>(v);
}

// The sampled, modulated columns of sample n: cols[(c * K + tap) * P + p], P = Ho*Wo.
template <typename T>
void columns(const Args& a, int64_t n, std::vector<float>& cols) {
  const Dims& d = a.d;
  const int64_t P = d.Ho * d.Wo;
  cols.assign(static_cast<size_t>(d.Cin * d.K * P), 0.0f);
  const T* off = static_cast<const T*>(a.off);
  const T* msk = static_cast<const T*>(a.msk);
  for (int64_t p = 0; p < P; ++p) {
    const int64_t ho = p / d.Wo, wo = p % d.Wo;
    for (int64_t ogi = 0; ogi < d.og; ++ogi) {
      for (int tap = 0; tap < d.K; ++tap) {
        const TapSample ts = tap_sample(d, off, a.so, msk, a.sm, n, ogi, tap, ho, wo);
        for (int64_t c = ogi * d.cpg; c < (ogi + 1) * d.cpg; ++c) {
          cols[static_cast<size_t>((c * d.K + tap) * P + p)] = modulated_sample<T>(a, ts, n, c);
        }
      }
    }
  }
}

template <typename T>
float weight_at(const Args& a, int64_t co, int64_t ci, int tap) {
  const T* w = static_cast<const T*>(a.w);
  return ld(w + co * a.swt.n + ci * a.swt.c + (tap / a.d.kw) * a.swt.h + (tap % a.d.kw) * a.swt.w);
}

template <typename T>
void forward_impl(const Args& a) {
  const Dims& d = a.d;
  const int64_t P = d.Ho * d.Wo;
  at::parallel_for(0, d.N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> cols, acc(static_cast<size_t>(P));
    for (int64_t n = begin; n < end; ++n) {
      columns<T>(a, n, cols);
      for (int64_t co = 0; co < d.Cout; ++co) {
        const int64_t g = co / d.cout_g;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t ci = 0; ci < d.cin_g; ++ci) {
          for (int tap = 0; tap < d.K; ++tap) {
            const float w = weight_at<T>(a, co, ci, tap);
            const float* col = cols.data() + ((g * d.cin_g + ci) * d.K + tap) * P;
            for (int64_t p = 0; p < P; ++p) acc[static_cast<size_t>(p)] += w * col[p];
          }
        }
        const float b = a.b ? ld(static_cast<const T*>(a.b) + co) : 0.0f;
        T* y = static_cast<T*>(a.y) + n * a.sy.n + co * a.sy.c;
        for (int64_t p = 0; p < P; ++p) {
          y[(p / d.Wo) * a.sy.h + (p % d.Wo) * a.sy.w] = static_cast<T>(acc[static_cast<size_t>(p)] + b);
        }
      }
    }
  });
}

template <typename T>
float grad_out_at(const Args& a, int64_t n, int64_t co, int64_t p) {
  const T* g = static_cast<const T*>(a.gout);
  return ld(g + n * a.sg.n + co * a.sg.c + (p / a.d.Wo) * a.sg.h + (p % a.d.Wo) * a.sg.w);
}

template <typename T>
void backward_data_impl(const Args& a) {
  const Dims& d = a.d;
  const int64_t P = d.Ho * d.Wo;
  const T* off = static_cast<const T*>(a.off);
  const T* msk = static_cast<const T*>(a.msk);
  at::parallel_for(0, d.N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> gcol;
    for (int64_t n = begin; n < end; ++n) {
      // grad columns = W^T x grad_out, per weight group: gcol[(c * K + tap) * P + p]
      gcol.assign(static_cast<size_t>(d.Cin * d.K * P), 0.0f);
      for (int64_t co = 0; co < d.Cout; ++co) {
        const int64_t g = co / d.cout_g;
        for (int64_t ci = 0; ci < d.cin_g; ++ci) {
          for (int tap = 0; tap < d.K; ++tap) {
            const float w = weight_at<T>(a, co, ci, tap);
            float* col = gcol.data() + ((g * d.cin_g + ci) * d.K + tap) * P;
            for (int64_t p = 0; p < P; ++p) col[p] += w * grad_out_at<T>(a, n, co, p);
          }
        }
      }
      // per (pixel, offset group, tap): grad offset / mask reduced over the group's channels, grad input scattered
      for (int64_t p = 0; p < P; ++p) {
        const int64_t ho = p / d.Wo, wo = p % d.Wo;
        for (int64_t ogi = 0; ogi < d.og; ++ogi) {
          for (int tap = 0; tap < d.K; ++tap) {
            const TapSample ts = tap_sample(d, off, a.so, msk, a.sm, n, ogi, tap, ho, wo);
            const Stencil& s = ts.s;
            float gy = 0.0f, gx = 0.0f, gm = 0.0f;
            for (int64_t c = ogi * d.cpg; c < (ogi + 1) * d.cpg; ++c) {
              const T* x = static_cast<const T*>(a.x) + n * a.sx.n + c * a.sx.c;
              const SampleGrad sg = bilinear_grad(x, a.sx.h, a.sx.w, s);
              const float gc = gcol[static_cast<size_t>((c * d.K + tap) * P + p)];
              gm += gc * sg.v;
              const float gcm = gc * ts.mask;
              gy += gcm * sg.gy;
              gx += gcm * sg.gx;
              float* gi = a.gi + (n * d.Cin + c) * d.H * d.W + s.y0 * d.W + s.x0;
              if (s.v00) gi[0] += gcm * s.w00;
              if (s.v01) gi[1] += gcm * s.w01;
              if (s.v10) gi[d.W] += gcm * s.w10;
              if (s.v11) gi[d.W + 1] += gcm * s.w11;
            }
            const int64_t ch = 2 * (ogi * d.K + tap);
            T* go = static_cast<T*>(a.goff) + n * a.sgo.n + ho * a.sgo.h + wo * a.sgo.w;
            go[ch * a.sgo.c] = static_cast<T>(gy);
            go[(ch + 1) * a.sgo.c] = static_cast<T>(gx);
            if (a.gmsk) {
              static_cast<T*>(a.gmsk)[n * a.sgm.n + (ogi * d.K + tap) * a.sgm.c + ho * a.sgm.h + wo * a.sgm.w] =
                  static_cast<T>(gm);
            }
          }
        }
      }
    }
  });
}

template <typename T>
void backward_weight_impl(const Args& a, float* gw) {
  const Dims& d = a.d;
  const int64_t P = d.Ho * d.Wo;
  const int64_t per = d.Cout * d.cin_g * d.K;
  std::vector<float> partial(static_cast<size_t>(d.N * per), 0.0f);
  at::parallel_for(0, d.N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> cols;
    for (int64_t n = begin; n < end; ++n) {
      columns<T>(a, n, cols);
      float* out = partial.data() + n * per;
      for (int64_t co = 0; co < d.Cout; ++co) {
        const int64_t g = co / d.cout_g;
        for (int64_t ci = 0; ci < d.cin_g; ++ci) {
          for (int tap = 0; tap < d.K; ++tap) {
            const float* col = cols.data() + ((g * d.cin_g + ci) * d.K + tap) * P;
            float s = 0.0f;
            for (int64_t p = 0; p < P; ++p) s += grad_out_at<T>(a, n, co, p) * col[p];
            out[(co * d.cin_g + ci) * d.K + tap] = s;
          }
        }
      }
    }
  });
  for (int64_t i = 0; i < per; ++i) gw[i] = 0.0f;
  for (int64_t n = 0; n < d.N; ++n) {
    for (int64_t i = 0; i < per; ++i) gw[i] += partial[static_cast<size_t>(n * per + i)];
  }
}

// The loops above, or under burstkern_C::set_simt_emulation the CUDA kernels themselves (fwd_kernel.cuh,
// bwd_kernels.cuh) on the SIMT emulation.
struct CpuExec : CpuExecBase {
  using Emu = simt::EmuLaunch;

  static void forward(const Args& a, at::ScalarType dt) {
    if (simt::mode() != 0) return launch_forward<Emu>(a, dt);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "deform_conv2d_cpu", [&] {
      forward_impl<scalar_t>(a);
    });
  }

  static void backward_data(const Args& a, at::ScalarType dt, bool deterministic) {
    if (simt::mode() != 0) return launch_backward_data<Emu>(a, dt, deterministic);
    // the loops are deterministic whatever the setting
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "deform_conv2d_backward_cpu", [&] {
      backward_data_impl<scalar_t>(a);
    });
  }

  static Tensor backward_weight(const Args& a, at::ScalarType dt) {
    if (simt::mode() != 0) return launch_backward_weight<Emu>(a, dt);
    Tensor gw = at::empty({a.d.Cout, a.d.cin_g, a.d.kh, a.d.kw}, at::TensorOptions().dtype(at::kFloat));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "deform_conv2d_backward_weight_cpu", [&] {
      backward_weight_impl<scalar_t>(a, gw.mutable_data_ptr<float>());
    });
    return gw;
  }
};

}  // namespace
}  // namespace deform_conv
}  // namespace burstkern

TORCH_LIBRARY_IMPL(burstkern_C, CPU, m) {
  using burstkern::deform_conv::CpuExec;
  namespace dc = burstkern::deform_conv;
  m.impl("deform_conv2d", &dc::forward<CpuExec>);
  m.impl("deform_conv2d_backward", &dc::backward<CpuExec>);
}
