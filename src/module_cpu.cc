// The nanobind module jaxkeops._jaxkeops_cpu.
#include "cpu/thread_pool.h"
#include "ffi_cpu.h"
#include "fused/ffi_fused_cpu.h"
#include "module_common.h"

NB_MODULE(_jaxkeops_cpu, m) {
  m.doc() = "jaxkeops CPU executor (XLA FFI handlers and the native op/reduction tables)";
  jaxkeops::define_module_common(m, reinterpret_cast<void*>(&jaxkeops_reduce_cpu), "cpu",
                                 reinterpret_cast<void*>(&jaxkeops_fused_cpu));
  m.def("num_threads", &jaxkeops::cpu::num_threads,
        "Threads the CPU executor uses (the caller plus its persistent pool).");
  m.def(
      "set_fused_emulation_hot",
      [](bool allow) { return jaxkeops::fused::allow_hot_bodies.exchange(allow); },
      "Whether the host emulation of jaxkeops_fused may use the hot bodies (else the generic "
      "body of each reducer family); returns the previous setting. For tests.");
}
