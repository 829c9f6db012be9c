#pragma once

#include "xla/ffi/api/c_api.h"

// The CUDA FFI handler of "jaxkeops_fused" (see ffi_fused_cuda.cc).
extern "C" XLA_FFI_Error* jaxkeops_fused_cuda(XLA_FFI_CallFrame* call_frame);
