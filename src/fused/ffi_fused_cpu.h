#pragma once

#include <atomic>
#include <cstdint>

#include "xla/ffi/api/c_api.h"

namespace jaxkeops::fused {
// Whether the emulation may run the hot bodies (else every call runs the generic body of its
// reducer family): tests compare both. Process-wide, true by default.
extern std::atomic<bool> allow_hot_bodies;
// Launches the emulation ran on the hot φ-program body (HotPhiRows): tests check that the calls
// they mean for it reach it.
extern std::atomic<int64_t> hot_phi_launches;
}  // namespace jaxkeops::fused

// The CPU FFI handler of "jaxkeops_fused": host emulation of the fused kernels.
extern "C" XLA_FFI_Error* jaxkeops_fused_cpu(XLA_FFI_CallFrame* call_frame);
