// The AVX512 build of the deform_conv2d CPU kernels (deform_conv_cpu_kernels_impl.h): the same code compiled for
// AVX512+FMA under a target pragma, chosen at run time by deform_conv_cpu_kernels.cpp when the CPU has it. The
// headers are included first, with the default target; only the kernels (namespace cpu::avx512) get the wider one.
// Empty on other architectures / compilers.
#if defined(__x86_64__) && defined(__GNUC__)
#define BK_DCN_TYPES_ONLY
#include "deform_conv/deform_conv_cpu_kernels_impl.h"
#undef BK_DCN_TYPES_ONLY

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi2")
#endif
#define BK_DCN_ISA avx512
#define BK_DCN_USE_FMA 1
#include "deform_conv/deform_conv_cpu_kernels_impl.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
