// The XLA FFI handler "jaxkeops_reduce" for platform "CUDA".
//
// Host side of the CUDA executor: decodes the program (program.h, cached), keeps one device copy
// of its compact form per device (DeviceProgramCache), checks the buffers exactly as the CPU
// handler does, and enqueues the kernels (kernels.cuh) on XLA's stream with workspace from XLA's
// scratch allocator. Nothing here waits for the GPU, except the one-time upload of a program the
// first time it runs on a device.
#include "cuda/ffi_cuda.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "call_layout.h"
#include "cuda/device_program.h"
#include "cuda/host_program.h"
#include "program.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxkeops::cuda {
namespace {

// Programs decoded once (keyed by their bytes), and uploaded once per device. Device copies are
// kept for the life of the process (a program is a few KiB; the count is bounded by the number
// of distinct formulas compiled).
class DeviceProgramCache {
 public:
  // The program (host side) and its device layout on `device`, or nullptr with *error.
  std::shared_ptr<const HostProgram> get(std::string_view bytes, int device, cudaStream_t stream,
                                         DevProgram* on_device, std::string* error) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = hosts_.find(std::string(bytes));
    std::shared_ptr<HostProgram> hp;
    if (it != hosts_.end()) {
      hp = it->second;
    } else {
      hp = std::make_shared<HostProgram>();
      if (!decode_program(bytes.data(), bytes.size(), &hp->prog, error)) return nullptr;
      if (!build_host_program(hp.get(), error)) return nullptr;
      const size_t cost = bytes.size() + hp->prog.memory_bytes() + 2 * hp->blob.size();
      // Bounded by entries and bytes, as the CPU cache: past either, start afresh (cudaFree
      // waits for the kernels that may still read an uploaded program).
      if (hosts_.size() >= kMaxEntries || bytes_ + cost > kMaxBytes) {
        for (auto& entry : device_) cudaFree(entry.second);
        device_.clear();
        hosts_.clear();
        bytes_ = 0;
      }
      bytes_ += cost;
      hosts_.emplace(std::string(bytes), hp);
    }
    const auto key = std::make_pair(hp.get(), device);
    auto dit = device_.find(key);
    char* base = nullptr;
    if (dit != device_.end()) {
      base = dit->second;
    } else {
      void* ptr = nullptr;
      cudaError_t err = cudaMalloc(&ptr, hp->blob.size());
      if (err == cudaSuccess)
        err = cudaMemcpyAsync(ptr, hp->blob.data(), hp->blob.size(), cudaMemcpyHostToDevice,
                              stream);
      // One-time wait, so that a later call on another stream never sees a partial copy.
      if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
      if (err != cudaSuccess) {
        if (ptr) cudaFree(ptr);
        *error = std::string("jaxkeops CUDA executor: cannot upload the program: ") +
                 cudaGetErrorString(err);
        return nullptr;
      }
      base = static_cast<char*>(ptr);
      device_.emplace(key, base);
    }
    *on_device = program_at(*hp, base);
    return hp;
  }

 private:
  static constexpr size_t kMaxEntries = 4096;
  static constexpr size_t kMaxBytes = size_t(256) << 20;
  std::mutex mu_;
  size_t bytes_ = 0;
  std::map<std::string, std::shared_ptr<HostProgram>> hosts_;
  std::map<std::pair<const HostProgram*, int>, char*> device_;
};

DeviceProgramCache& program_cache() {
  static DeviceProgramCache* cache = new DeviceProgramCache();
  return *cache;
}

ffi::Error invalid(std::string msg) {
  return ffi::Error::InvalidArgument("jaxkeops_reduce (CUDA): " + std::move(msg));
}

ffi::Error reduce_impl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::RemainingArgs args,
                       ffi::RemainingRets rets, std::string_view program, int64_t n_inner) {
  std::string error;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return ffi::Error::Internal("cudaGetDevice failed");
  DevProgram dprog;
  std::shared_ptr<const HostProgram> hp =
      program_cache().get(program, device, stream, &dprog, &error);
  if (!hp) return invalid(error);
  const Program& prog = hp->prog;
  if (prog.inputs.size() > size_t(kMaxInputs))
    return invalid("the call has " + std::to_string(prog.inputs.size()) +
                   " operands, more than the CUDA executor's limit of " +
                   std::to_string(kMaxInputs));
  const std::vector<OutputInfo>& infos = hp->outputs;
  // Half precision never reaches the handler: jaxkeops casts float16/bfloat16 operands to
  // float32 beforehand.
  CallLayout layout;
  error = check_call(prog, infos, args, rets, n_inner, &layout);
  if (!error.empty()) return invalid(error);
  // Block-sparse ranges stay in device memory: the kernels clamp their values to the grid
  // (thread_steps.h), no host copy; the CPU executor is where bad values are reported.
  const ffi::DataType dtype = layout.dtype;
  if (layout.n_outer == 0 || layout.batch.count() == 0) return ffi::Error::Success();
  int64_t host_count = 1;
  const DevCall call = describe_call(*hp, layout, layout.n_inner, &host_count);

  const size_t width = dtype == ffi::DataType::F32 ? sizeof(float) : sizeof(double);
  int sm_count = 1;
  cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device);
  LaunchPlan plan;
  if (!plan_launch(dprog, hp->red, call, sm_count, width, &plan, &error)) return invalid(error);
  std::optional<void*> ws = scratch.Allocate(plan.bytes, 256);
  if (!ws) return ffi::Error::Internal("jaxkeops CUDA executor: cannot allocate " +
                                       std::to_string(plan.bytes) + " bytes of workspace");

  for (int64_t h = 0; h < host_count; ++h) {
    const DevCall c = launch_call(*hp, layout, call, h);
    const std::string err = dtype == ffi::DataType::F32
                                ? launch<float>(dprog, hp->red, c, plan, *ws, stream)
                                : launch<double>(dprog, hp->red, c, plan, *ws, stream);
    if (!err.empty()) return ffi::Error::Internal(err);
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxkeops::cuda

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxkeops_reduce_cuda, jaxkeops::cuda::reduce_impl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<xla::ffi::ScratchAllocator>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<std::string_view>("program")
                                  .Attr<int64_t>("n_inner"));
