// The CUDA executor's kernels for float (see kernels.cuh).
#include "cuda/kernels.cuh"

namespace jaxkeops::cuda {

template std::string launch<float>(const DevProgram&, const DevReduction&, const DevCall&,
                                  const LaunchPlan&, void*, void*);

}  // namespace jaxkeops::cuda
