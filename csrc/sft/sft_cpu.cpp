// The CPU executor of the burstkern_C sft ops (common/cpu_executor.h).
#define BK_EXEC_FAMILY sft
#define BK_EXEC_OPS BURSTKERN_SFT_OPS
#include "common/cpu_executor.h"
