// The nanobind module jaxkeops._jaxkeops_cpu.
#include "cpu/thread_pool.h"
#include "cuda/emulation.h"
#include "ffi_cpu.h"
#include "fused/ffi_fused_cpu.h"
#include "module_common.h"

NB_MODULE(_jaxkeops_cpu, m) {
  m.doc() = "jaxkeops CPU executor (XLA FFI handlers and the native op/reduction tables)";
  // Besides jaxkeops_reduce: the fused kernels' host emulation (docs/fused-kernels.md) and the
  // CUDA executor's kernels emulated on the host, for tests (src/cuda/emulation.cc).
  jaxkeops::define_module_common(
      m, reinterpret_cast<void*>(&jaxkeops_reduce_cpu), "cpu",
      {{"jaxkeops_fused", reinterpret_cast<void*>(&jaxkeops_fused_cpu)},
       {"jaxkeops_reduce_gpu_emulation", reinterpret_cast<void*>(&jaxkeops_reduce_gpu_emulation)}});
  m.def("num_threads", &jaxkeops::cpu::num_threads,
        "Threads the CPU executor uses per call (the caller plus its pool's active workers).");
  m.def("set_num_threads", &jaxkeops::cpu::set_num_threads, nanobind::arg("n"),
        "Sets the CPU executor's threads per call (n >= 1); returns the previous count.");
  m.def("program_cache_stats", &jaxkeops::program_cache_stats,
        "(entries, bytes) of the decoded-program cache of the CPU handler.");
  m.def(
      "set_fused_emulation_hot",
      [](bool allow) { return jaxkeops::fused::allow_hot_bodies.exchange(allow); },
      "Whether the host emulation of jaxkeops_fused may use the hot bodies (else the generic "
      "body of each reducer family); returns the previous setting. For tests.");
  m.def(
      "fused_emulation_hot_phi_launches",
      []() { return jaxkeops::fused::hot_phi_launches.load(); },
      "Launches the host emulation of jaxkeops_fused ran on the hot φ-program body. For tests.");
}
