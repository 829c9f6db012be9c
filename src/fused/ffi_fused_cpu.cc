// The XLA FFI handler "jaxkeops_fused" for platform "cpu": the host emulation of the fused
// kernels (docs/fused-kernels.md), used by the tests and by jaxkeops.families'
// emulate_fused_on_cpu().
#include "fused/ffi_fused_cpu.h"

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "fused/decode.h"
#include "fused/dispatch.h"
#include "fused/emulate.h"
#include "fused/phi_rows.h"
#include "xla/ffi/api/ffi.h"

namespace jaxkeops::fused {

std::atomic<bool> allow_hot_bodies{true};
std::atomic<int64_t> hot_phi_launches{0};

namespace {

// The emulated GPU: the SM count only shapes the split of the inner axis (H100/H200: 132).
constexpr int kEmulatedSms = 132;

template <class T>
std::string run(const DecodedCall& d, bool allow_hot) {
  std::string error;
  for (FusedCall call : launches_of(d)) {
    visit_body<T>(call, allow_hot, [&](auto tag) {
      using Body = typename decltype(tag)::type;
      plan_call(&call, kThreads * Body::kRowsPerThread, BodyChunk<Body>::value, kEmulatedSms);
      error = check_plan(call);
      if (!error.empty()) return;
      std::vector<double> state(state_doubles(call));
      call.state = state.empty() ? nullptr : state.data();
      if constexpr (IsHotPhiRows<Body>::value) hot_phi_launches.fetch_add(1);
      emulate_launch<T, Body>(call);
    });
    if (!error.empty()) break;
  }
  return error;
}

ffi::Error fused_impl(ffi::RemainingArgs args, ffi::RemainingRets rets, int32_t score,
                      int32_t phi, ffi::Span<const int32_t> program, int32_t factor,
                      int32_t reduction, int32_t k) {
  DecodedCall d;
  std::string error = decode_call(args, rets, score, phi, program, factor, reduction, k, &d);
  if (error.empty())
    error = d.dtype == ffi::DataType::F32 ? run<float>(d, allow_hot_bodies.load())
                                          : run<double>(d, allow_hot_bodies.load());
  if (!error.empty()) return ffi::Error::InvalidArgument("jaxkeops_fused: " + error);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxkeops::fused

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxkeops_fused_cpu, jaxkeops::fused::fused_impl,
                              xla::ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int32_t>("score")
                                  .Attr<int32_t>("phi")
                                  .Attr<xla::ffi::Span<const int32_t>>("program")
                                  .Attr<int32_t>("factor")
                                  .Attr<int32_t>("reduction")
                                  .Attr<int32_t>("k"));
