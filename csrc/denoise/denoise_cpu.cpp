// The CPU executor of the burstkern_C denoise ops (common/cpu_executor.h).
#define BK_EXEC_FAMILY denoise
#define BK_EXEC_OPS BURSTKERN_DENOISE_OPS
#include "common/cpu_executor.h"
