// Argument checks and launch checks shared by every op's CUDA launcher (defined once, here).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

// TORCH_CHECK with a message that names the argument and says what it got.
#define BURSTKERN_CHECK_CUDA(t, name) \
  TORCH_CHECK((t).is_cuda(), name " must be a CUDA tensor, got device ", (t).device())
#define BURSTKERN_CHECK_FLOAT(t, name)                                                              \
  TORCH_CHECK((t).scalar_type() == at::kFloat || (t).scalar_type() == at::kHalf ||                 \
                  (t).scalar_type() == at::kBFloat16,                                               \
              name " must be float32, float16 or bfloat16, got ", (t).scalar_type())
#define BURSTKERN_CHECK_SAME_DEVICE(a, b, name_a, name_b) \
  TORCH_CHECK((a).device() == (b).device(), name_a " is on ", (a).device(), " but " name_b " is on ", (b).device())

// After every launch: surfaces launch-configuration errors at the call that caused them.
#define BURSTKERN_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
