// burstkern_C::denoise_randn (testing builds): the in-kernel RNG of the denoise ops (common/philox.cuh) at explicit
// int64 offsets, so the tests pin its bits to the spec (burstkern/ops/denoise/rng.py) on CPU and GPU alike.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "common/philox.cuh"
#include "testing/switches.h"

namespace burstkern {
namespace testing {

struct RandnFn {
  const int64_t* seed;
  const int64_t* offsets;
  float* normal;
  int64_t* words;  // [n, 4]

  BURSTKERN_HD void operator()(int64_t i, int64_t, int64_t) const {
    normal[i] = philox::normal(*seed, offsets[i]);
    const philox::Words w = philox::words(*seed, offsets[i]);
    words[4 * i + 0] = w.c0;
    words[4 * i + 1] = w.c1;
    words[4 * i + 2] = w.c2;
    words[4 * i + 3] = w.c3;
  }
};

// (normals float32 shaped like offsets, Philox words int64 [..., 4]); E runs fn(i, ., .) for i in [0, count).
template <class E>
std::tuple<at::Tensor, at::Tensor> randn(const at::Tensor& seed, const at::Tensor& offsets) {
  TORCH_CHECK(offsets.scalar_type() == at::kLong, "offsets must be int64, got ", offsets.scalar_type());
  TORCH_CHECK(seed.device() == offsets.device(), "seed is on ", seed.device(), " but offsets is on ",
              offsets.device());
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() >= 1,
              "seed must be an int64 tensor with one element, got dtype ", seed.scalar_type(), " and shape ",
              seed.sizes());
  typename E::Guard guard(offsets.device());
  const at::Tensor offs = offsets.contiguous();
  at::Tensor normal = poisoned(at::empty(offs.sizes(), offs.options().dtype(at::kFloat)));
  std::vector<int64_t> wshape(offs.sizes().begin(), offs.sizes().end());
  wshape.push_back(4);
  at::Tensor words = at::empty(wshape, offs.options());
  if (offs.numel() > 0) {
    RandnFn fn{seed.const_data_ptr<int64_t>(), offs.const_data_ptr<int64_t>(), normal.mutable_data_ptr<float>(),
               words.mutable_data_ptr<int64_t>()};
    E::elementwise(fn, offs.numel(), 1);
  }
  return {normal, words};
}

}  // namespace testing
}  // namespace burstkern
