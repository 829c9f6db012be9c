// The CUDA launcher of the fused kernels (src/cuda/fused.cu), called by the handler
// (ffi_fused_cuda.cc, host compiler). Plain declarations: no CUDA headers needed.
#pragma once

#include <cstdint>
#include <string>

#include "fused/fused_call.h"

namespace jaxkeops::cuda {

// Chooses the body of a call and plans its launch (fills the plan fields of *call); returns the
// doubles of state buffer it needs (0: none).
int64_t plan_fused(fused::FusedCall* call, bool is_double, int sm_count);

// "" or why a planned call is too large for the kernels (fused/dispatch.h: check_plan).
std::string check_plan_size(const fused::FusedCall& call);

// Enqueues the kernels of a planned call (call.state set when plan_fused asked for it) on
// `stream` (a cudaStream_t). Returns "" or the CUDA error.
std::string launch_fused(const fused::FusedCall& call, bool is_double, void* stream);

}  // namespace jaxkeops::cuda
