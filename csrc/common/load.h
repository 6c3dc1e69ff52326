// Load/store helpers of the element code of every op (BURSTKERN_HD: the CUDA kernels and their SIMT emulation):
// scalars read as fp32 whatever the storage dtype, and V-lane 16-byte vector loads/stores.
#pragma once

#include <cstdint>

#include "common/hd.h"

namespace burstkern {

template <typename T>
BURSTKERN_HD float ld(const T* p, int64_t i = 0) {
  return static_cast<float>(p[i]);
}

template <typename T, int V>
struct alignas(sizeof(T) * V) Packed {
  T v[V];
};

// V lanes at p[off + k·stride]: one 16-byte load when vec, one load broadcast when stride is 0.
template <int V, typename T>
BURSTKERN_HD void load_lanes(const T* p, int64_t off, int64_t stride, bool vec, float (&out)[V]) {
  if (V > 1 && vec) {
    const Packed<T, V> pk = *reinterpret_cast<const Packed<T, V>*>(p + off);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = static_cast<float>(pk.v[k]);
  } else if (stride == 0) {
    const float v = static_cast<float>(p[off]);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = v;
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = static_cast<float>(p[off + k * stride]);
  }
}

template <int V, typename T>
BURSTKERN_HD void store_lanes(T* p, int64_t off, int64_t stride, bool vec, const float (&in)[V]) {
  if (V > 1 && vec) {
    Packed<T, V> pk;
#pragma unroll
    for (int k = 0; k < V; ++k) pk.v[k] = static_cast<T>(in[k]);
    *reinterpret_cast<Packed<T, V>*>(p + off) = pk;
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) p[off + k * stride] = static_cast<T>(in[k]);
  }
}

}  // namespace burstkern
