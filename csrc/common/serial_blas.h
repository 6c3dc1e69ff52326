// SerialBlas: the GEMMs a CPU kernel issues from inside its own at::parallel_for region run on the calling thread.
//
// torch turns MKL's dynamic thread adjustment off (ParallelOpenMP.cpp: mkl_set_dynamic(false)), so an MKL GEMM
// called from an OpenMP worker starts a nested team of torch.get_num_threads() threads: with T threads, T^2
// spinning threads on T cores. Measured on the project's 2-core machine: deform_conv2d N8 C64 48² forward 33 ms at
// 1 thread, 836 ms at 2 (cpu/wall 1.0), and 37 ms at 2 with MKL_NUM_THREADS=1. mkl_set_num_threads_local(1) for
// the region fixes it without touching the process-wide setting; the guard restores the thread's previous value.
//
// The symbol is looked up weakly in the libraries this extension links (libtorch_cpu exports it when torch is built
// with MKL); a torch without MKL leaves it null and the guard does nothing (its BLAS is then single-threaded inside
// an OpenMP region, or its own business).
#pragma once

#if defined(__ELF__)
// MKL's C entry point (mkl_service.h maps mkl_set_num_threads_local to it); the lower-case symbols are the
// Fortran interface, which takes a pointer
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
#endif

namespace burstkern {

class SerialBlas {
 public:
  SerialBlas() {
#if defined(__ELF__)
    if (MKL_Set_Num_Threads_Local) prev_ = MKL_Set_Num_Threads_Local(1);
#endif
  }
  ~SerialBlas() {
#if defined(__ELF__)
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(prev_);  // 0: back to the global setting
#endif
  }
  SerialBlas(const SerialBlas&) = delete;
  SerialBlas& operator=(const SerialBlas&) = delete;

 private:
  int prev_ = 0;
};

}  // namespace burstkern
