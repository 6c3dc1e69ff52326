// The op library of the compiled backend. Kernel entry points live in the `burstkern_C` namespace; the public
// ops (`burstkern::*`, defined from Python with torch.library) dispatch to them when the cuda backend is active.
// Each op folder adds its schemas with TORCH_LIBRARY_FRAGMENT(burstkern_C, m) and its CUDA impls with
// TORCH_LIBRARY_IMPL(burstkern_C, CUDA, m). This file defines the namespace once.
#include <torch/library.h>

TORCH_LIBRARY(burstkern_C, m) {
  // Fill a floating tensor with NaN (and other dtypes with all-ones bytes): tests poison outputs with it.
  m.def("poison_(Tensor(a!) self) -> ()");
}
