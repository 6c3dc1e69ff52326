// The deform_conv2d CPU kernels (deform_conv_cpu_kernels_impl.h) built for AVX2
// (common/cpu_isa_build.h), picked at run time (common/cpu_isa.h).
#define BK_ISA_FAMILY deform_conv
#define BK_ISA_BUILD avx2
#include "common/cpu_isa_build.h"
