// The nanobind module jaxkeops._jaxkeops_cuda. Importing it needs no GPU: it only hands the
// handler to XLA; the CUDA runtime is linked statically and touches the driver on first use.
#include "cuda/ffi_cuda.h"
#include "cuda/ffi_fused_cuda.h"
#include "module_common.h"

NB_MODULE(_jaxkeops_cuda, m) {
  m.doc() = "jaxkeops CUDA executor (XLA FFI handlers and the native op/reduction tables)";
  jaxkeops::define_module_common(m, reinterpret_cast<void*>(&jaxkeops_reduce_cuda), "CUDA",
                                 reinterpret_cast<void*>(&jaxkeops_fused_cuda));
}
