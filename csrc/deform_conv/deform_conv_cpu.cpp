// The CPU executor of the burstkern_C deform_conv ops (common/cpu_executor.h).
#define BK_EXEC_FAMILY deform_conv
#define BK_EXEC_OPS BURSTKERN_DEFORM_CONV_OPS
#include "common/cpu_executor.h"
