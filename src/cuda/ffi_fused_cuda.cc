// The XLA FFI handler "jaxkeops_fused" for platform "CUDA" (docs/fused-kernels.md): checks the
// call exactly as the host emulation does (fused/decode.h), plans it, and enqueues the fused
// kernels (fused.cu) on XLA's stream, with the state buffer (K-min lists, split states) from
// XLA's scratch allocator. Nothing here waits for the GPU.
#include "cuda/ffi_fused_cuda.h"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cuda/fused_launch.h"
#include "fused/decode.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxkeops::cuda {
namespace {

ffi::Error invalid(std::string msg) {
  return ffi::Error::InvalidArgument("jaxkeops_fused (CUDA): " + std::move(msg));
}

ffi::Error fused_impl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::RemainingArgs args,
                      ffi::RemainingRets rets, int32_t score, int32_t phi,
                      ffi::Span<const int32_t> program, int32_t factor, int32_t reduction,
                      int32_t k) {
  fused::DecodedCall d;
  std::string error =
      fused::decode_call(args, rets, score, phi, program, factor, reduction, k, &d);
  if (!error.empty()) return invalid(error);
  const bool is_double = d.dtype == ffi::DataType::F64;
  int device = 0, sm_count = 1;
  if (cudaGetDevice(&device) != cudaSuccess) return ffi::Error::Internal("cudaGetDevice failed");
  cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device);

  std::vector<fused::FusedCall> launches = fused::launches_of(d);
  int64_t doubles = 0;
  for (fused::FusedCall& call : launches) {
    doubles = plan_fused(&call, is_double, sm_count);  // the same for every launch
    error = check_plan_size(call);
    if (!error.empty()) return invalid(error);
  }
  void* state = nullptr;
  if (doubles > 0) {
    std::optional<void*> ws = scratch.Allocate(size_t(doubles) * sizeof(double), 256);
    if (!ws)
      return ffi::Error::Internal("jaxkeops_fused (CUDA): cannot allocate " +
                                  std::to_string(doubles * 8) + " bytes of state");
    state = *ws;
  }
  // Launches on one stream run in order, so they can share the state buffer.
  for (fused::FusedCall& call : launches) {
    call.state = static_cast<double*>(state);
    error = launch_fused(call, is_double, stream);
    if (!error.empty()) return ffi::Error::Internal(error);
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxkeops::cuda

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxkeops_fused_cuda, jaxkeops::cuda::fused_impl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<xla::ffi::ScratchAllocator>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int32_t>("score")
                                  .Attr<int32_t>("phi")
                                  .Attr<xla::ffi::Span<const int32_t>>("program")
                                  .Attr<int32_t>("factor")
                                  .Attr<int32_t>("reduction")
                                  .Attr<int32_t>("k"));
