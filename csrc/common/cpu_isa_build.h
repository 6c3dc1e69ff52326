// One build of one op family's CPU loops: the whole of csrc/<family>/<family>_cpu_kernels_<isa>.cpp is
//   #define BK_ISA_FAMILY <family>  // denoise, sft or deform_conv
//   #define BK_ISA_BUILD <isa>      // avx2 or avx512
//   #include "common/cpu_isa_build.h"
// and <family>_cpu_kernels.cpp begins so with BK_ISA_BUILD default (deform_conv: base), the portable build.
// The family's headers are included first, with the default target; then its loops (<family>_cpu_kernels_impl.h)
// are compiled under the ISA's target, in a namespace of their own, so no inline code is shared with the other
// builds. common/cpu_isa.h picks the build at run time. Elsewhere than x86-64 GCC/clang a vector build is the
// portable one under the ISA's name (denoise, sft) or absent (deform_conv, whose host code then never names it).
// Float64 is compiled in the portable build only. The macros are undefined again at the end.
//
// The families' conventions: denoise and sft include <family>_cpu_kernels_args.h, name the build BK_ISA (its
// namespace), BK_ISA_NAME and BK_ISA_TABLE (the table function it defines), and use F16C; deform_conv includes its
// own headers (BK_DCN_TYPES_ONLY), names the build BK_DCN_ISA, takes BK_DCN_USE_FMA and uses BMI2 instead of F16C.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define BK_ISA_CAT_(a, b) a##b
#define BK_ISA_CAT(a, b) BK_ISA_CAT_(a, b)
#define BK_ISA_STR_(...) #__VA_ARGS__
#define BK_ISA_STR(...) BK_ISA_STR_(__VA_ARGS__)
#define BK_ISA_PRAGMA(...) _Pragma(BK_ISA_STR(__VA_ARGS__))
#define BK_ISA_HEADER(part) BK_ISA_STR(BK_ISA_FAMILY/BK_ISA_CAT(BK_ISA_FAMILY, part).h)

#define BK_ISA_IS_deform_conv 1
#define BK_ISA_IS_avx512 1
#define BK_ISA_PORTABLE_default 1
#define BK_ISA_PORTABLE_base 1
#define BK_ISA_DCN BK_ISA_CAT(BK_ISA_IS_, BK_ISA_FAMILY)
#define BK_ISA_AVX512 BK_ISA_CAT(BK_ISA_IS_, BK_ISA_BUILD)
#define BK_ISA_PORTABLE BK_ISA_CAT(BK_ISA_PORTABLE_, BK_ISA_BUILD)

#if BK_ISA_DCN && BK_ISA_AVX512
#define BK_ISA_TARGET "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi2"
#elif BK_ISA_DCN
#define BK_ISA_TARGET "avx2,fma,bmi2"
#elif BK_ISA_AVX512
#define BK_ISA_TARGET "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512"
#else
#define BK_ISA_TARGET "avx2,fma,f16c"
#endif

#if BK_ISA_DCN
#define BK_DCN_TYPES_ONLY
#include BK_ISA_HEADER(_cpu_kernels_impl)
#undef BK_DCN_TYPES_ONLY
#define BK_DCN_ISA BK_ISA_BUILD
#if !BK_ISA_PORTABLE
#define BK_DCN_USE_FMA 1
#endif
#else
#include BK_ISA_HEADER(_cpu_kernels_args)
#define BK_ISA BK_ISA_CAT(isa_, BK_ISA_BUILD)
#define BK_ISA_NAME BK_ISA_STR(BK_ISA_BUILD)
#define BK_ISA_TABLE BK_ISA_CAT(table_, BK_ISA_BUILD)
#define BK_ISA_FP64 BK_ISA_PORTABLE
#endif

#if BK_ISA_PORTABLE
#include BK_ISA_HEADER(_cpu_kernels_impl)
#elif defined(__x86_64__) && defined(__GNUC__)
#if defined(__clang__)
BK_ISA_PRAGMA(clang attribute push(__attribute__((target(BK_ISA_TARGET))), apply_to = function))
#else
#pragma GCC push_options
BK_ISA_PRAGMA(GCC target(BK_ISA_TARGET))
#endif
#include BK_ISA_HEADER(_cpu_kernels_impl)
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#elif !BK_ISA_DCN
namespace burstkern::BK_ISA_FAMILY::cpu::detail {
const Table& BK_ISA_TABLE() { return table_default(); }
}  // namespace burstkern::BK_ISA_FAMILY::cpu::detail
#endif

#undef BK_ISA_CAT_
#undef BK_ISA_CAT
#undef BK_ISA_STR_
#undef BK_ISA_STR
#undef BK_ISA_PRAGMA
#undef BK_ISA_HEADER
#undef BK_ISA_IS_deform_conv
#undef BK_ISA_IS_avx512
#undef BK_ISA_PORTABLE_default
#undef BK_ISA_PORTABLE_base
#undef BK_ISA_DCN
#undef BK_ISA_AVX512
#undef BK_ISA_PORTABLE
#undef BK_ISA_TARGET
#undef BK_ISA
#undef BK_ISA_NAME
#undef BK_ISA_TABLE
#undef BK_ISA_FP64
#undef BK_DCN_ISA
#undef BK_DCN_USE_FMA
#undef BK_ISA_FAMILY
#undef BK_ISA_BUILD
