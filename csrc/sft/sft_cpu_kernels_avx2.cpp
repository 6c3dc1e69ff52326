// The loops of sft_cpu_kernels_impl.h built for AVX2 + FMA + F16C (picked at run time by sft_cpu_kernels.cpp).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "sft/sft_cpu_kernels_args.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define BK_ISA isa_avx2
#define BK_ISA_NAME "avx2"
#define BK_ISA_TABLE table_avx2
#define BK_ISA_FP64 0
#include "sft/sft_cpu_kernels_impl.h"
#pragma GCC pop_options
#else
namespace burstkern::sft::cpu::detail {
const Table& table_avx2() { return table_default(); }
}  // namespace burstkern::sft::cpu::detail
#endif
