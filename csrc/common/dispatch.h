// dtype dispatch over the floating types every kernel supports: float, half, bfloat16 (fp32 math inside).
#pragma once

#include <ATen/Dispatch.h>

#define BURSTKERN_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
