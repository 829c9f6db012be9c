// The CUDA executor's kernels for double (see kernels.cuh).
#include "cuda/kernels.cuh"

namespace jaxkeops::cuda {

template std::string launch<double>(const DevProgram&, const DevReduction&, const DevCall&,
                                  const LaunchPlan&, void*, void*);

}  // namespace jaxkeops::cuda
