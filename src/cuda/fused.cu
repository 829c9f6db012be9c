// The fused kernels (docs/fused-kernels.md): one templated kernel per body of
// src/fused/kernel_body.h, instantiated for the hot calls (compile-time score, φ kind, D,
// reducer) and for the generic body of each reducer family, plus the merge of split states.
// Kernel names: jaxkeops_fused_kernel<T, Body> and jaxkeops_fused_combine<T, Accumulator>; the
// steady-state loop is the `tile` method of the body ("hot inner loop" / "generic inner loop").
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda/fused_kernels.cuh"
#include "cuda/fused_launch.h"
#include "fused/dispatch.h"
#include "fused/kernel_body.h"

namespace jaxkeops::cuda {
namespace {

using namespace jaxkeops::fused;

constexpr int64_t kMaxGrid = int64_t(1) << 30;

template <class T>
int64_t plan(FusedCall* call, int sm_count) {
  int64_t doubles = 0;
  visit_body<T>(*call, true, [&](auto tag) {
    using Body = typename decltype(tag)::type;
    plan_call(call, kThreads * Body::kRowsPerThread, BodyChunk<Body>::value, sm_count);
    doubles = state_doubles(*call);
  });
  return doubles;
}

template <class T>
std::string launch(const FusedCall& call, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  visit_body<T>(call, true, [&](auto tag) {
    using Body = typename decltype(tag)::type;
    const int64_t n_items = call.batch_count * call.n_chunks * call.row_blocks * call.n_splits;
    if (n_items == 0) return;
    jaxkeops_fused_kernel<T, Body>
        <<<unsigned(std::min(n_items, kMaxGrid)), kThreads, 0, stream>>>(call);
    err = cudaGetLastError();
    if (err != cudaSuccess || call.n_splits == 1) return;
    const int64_t rows = call.batch_count * call.n_chunks * call.n_outer;
    const int64_t blocks = std::min((rows + kThreads - 1) / kThreads, kMaxGrid);
    jaxkeops_fused_combine<T, typename Body::Accumulator><<<unsigned(blocks), kThreads, 0, stream>>>(
        call);
    err = cudaGetLastError();
  });
  if (err != cudaSuccess)
    return std::string("jaxkeops_fused (CUDA): kernel launch failed: ") + cudaGetErrorString(err);
  return "";
}

}  // namespace

int64_t plan_fused(FusedCall* call, bool is_double, int sm_count) {
  return is_double ? plan<double>(call, sm_count) : plan<float>(call, sm_count);
}

std::string check_plan_size(const FusedCall& call) { return check_plan(call); }

std::string launch_fused(const FusedCall& call, bool is_double, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  return is_double ? launch<double>(call, s) : launch<float>(call, s);
}

}  // namespace jaxkeops::cuda
