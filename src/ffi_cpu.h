#pragma once

#include <cstddef>
#include <utility>

#include "xla/ffi/api/c_api.h"

// The CPU FFI handler of "jaxkeops_reduce" (see ffi_cpu.cc).
extern "C" XLA_FFI_Error* jaxkeops_reduce_cpu(XLA_FFI_CallFrame* call_frame);

namespace jaxkeops {
// (entries, bytes) of the CPU handler's decoded-program cache (bounded by both).
std::pair<size_t, size_t> program_cache_stats();
}  // namespace jaxkeops
