// The nanobind module jaxkeops._jaxkeops_cpu.
#include "cpu/thread_pool.h"
#include "cuda/emulation.h"
#include "ffi_cpu.h"
#include "module_common.h"

NB_MODULE(_jaxkeops_cpu, m) {
  m.doc() = "jaxkeops CPU executor (XLA FFI handlers and the native op/reduction tables)";
  // The CUDA executor's kernels emulated on the host, for tests (src/cuda/emulation.cc).
  jaxkeops::define_module_common(
      m, reinterpret_cast<void*>(&jaxkeops_reduce_cpu), "cpu",
      {{"jaxkeops_reduce_gpu_emulation", reinterpret_cast<void*>(&jaxkeops_reduce_gpu_emulation)}});
  m.def("num_threads", &jaxkeops::cpu::num_threads,
        "Threads the CPU executor uses (the caller plus its persistent pool).");
}
