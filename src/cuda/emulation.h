#pragma once

#include "xla/ffi/api/c_api.h"

// The host emulation of the CUDA executor, "jaxkeops_reduce_gpu_emulation" (see emulation.cc).
extern "C" XLA_FFI_Error* jaxkeops_reduce_gpu_emulation(XLA_FFI_CallFrame* call_frame);
