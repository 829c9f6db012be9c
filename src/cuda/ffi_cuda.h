#pragma once

#include "xla/ffi/api/c_api.h"

// The CUDA FFI handler of "jaxkeops_reduce" (see ffi_cuda.cc).
extern "C" XLA_FFI_Error* jaxkeops_reduce_cuda(XLA_FFI_CallFrame* call_frame);
