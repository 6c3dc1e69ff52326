// The loops of denoise_cpu_kernels_impl.h built for AVX2 (picked at run time by denoise_cpu_kernels.cpp).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "denoise/denoise_cpu_kernels_args.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define BK_ISA isa_avx2
#define BK_ISA_NAME "avx2"
#define BK_ISA_TABLE table_avx2
#define BK_ISA_FP64 0
#include "denoise/denoise_cpu_kernels_impl.h"
#pragma GCC pop_options
#else
namespace burstkern::denoise::cpu::detail {
const Table& table_avx2() { return table_default(); }
}  // namespace burstkern::denoise::cpu::detail
#endif
