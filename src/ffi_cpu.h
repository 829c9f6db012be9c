#pragma once

#include "xla/ffi/api/c_api.h"

// The CPU FFI handler of "jaxkeops_reduce" (see ffi_cpu.cc).
extern "C" XLA_FFI_Error* jaxkeops_reduce_cpu(XLA_FFI_CallFrame* call_frame);
