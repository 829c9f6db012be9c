// The XLA FFI handler "jaxkeops_reduce" for platform "cpu".
#include "ffi_cpu.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "call_layout.h"
#include "cpu/executor.h"
#include "program.h"
#include "xla/ffi/api/ffi.h"

namespace jaxkeops {
namespace {

// Decoded programs, keyed by their bytes: decoding and validation happen once per program.
class ProgramCache {
 public:
  // Returns the program, or nullptr with *error set.
  std::shared_ptr<const Program> get(std::string_view bytes, std::string* error) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = cache_.find(std::string(bytes));
      if (it != cache_.end()) return it->second;
    }
    auto prog = std::make_shared<Program>();
    if (!decode_program(bytes.data(), bytes.size(), prog.get(), error)) return nullptr;
    const size_t cost = bytes.size() + prog->memory_bytes();
    std::lock_guard<std::mutex> lock(mu_);
    // Bounded by bytes as well as entries (a TensorDot table can be ~200 MiB); a program
    // larger than the whole budget is used once and not kept.
    if (cost > kMaxBytes) return prog;
    if (cache_.size() >= kMaxEntries || bytes_ + cost > kMaxBytes) {
      cache_.clear();
      bytes_ = 0;
    }
    auto res = cache_.emplace(std::string(bytes), std::move(prog));
    if (res.second) bytes_ += cost;
    return res.first->second;
  }

  std::pair<size_t, size_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {cache_.size(), bytes_};
  }

 private:
  static constexpr size_t kMaxEntries = 4096;
  static constexpr size_t kMaxBytes = size_t(256) << 20;
  std::mutex mu_;
  size_t bytes_ = 0;
  std::unordered_map<std::string, std::shared_ptr<const Program>> cache_;
};

ProgramCache& program_cache() {
  static ProgramCache* cache = new ProgramCache();
  return *cache;
}

}  // namespace

std::pair<size_t, size_t> program_cache_stats() { return program_cache().stats(); }

namespace {

ffi::Error invalid(std::string msg) {
  return ffi::Error::InvalidArgument("jaxkeops_reduce: " + std::move(msg));
}

ffi::Error reduce_impl(ffi::RemainingArgs args, ffi::RemainingRets rets,
                       std::string_view program, int64_t n_inner) {
  std::string error;
  std::shared_ptr<const Program> prog = program_cache().get(program, &error);
  if (!prog) return invalid(error);
  const std::vector<OutputInfo> infos =
      reduction_outputs(prog->reduction, prog->reduction_params, prog->result_dims);
  CallLayout call;
  error = check_call(*prog, infos, args, rets, n_inner, &call);
  if (!error.empty()) return invalid(error);

  std::vector<cpu::OutputBuffer> outs(infos.size());
  std::vector<int64_t> out_bytes_per_problem(infos.size());
  for (size_t k = 0; k < infos.size(); ++k) {
    const ffi::DataType t = call.out_types[k];
    outs[k].type = t == ffi::DataType::S32   ? cpu::ElementType::kS32
                   : t == ffi::DataType::S64 ? cpu::ElementType::kS64
                   : t == ffi::DataType::F32 ? cpu::ElementType::kF32
                                             : cpu::ElementType::kF64;
    out_bytes_per_problem[k] = call.n_outer * infos[k].width() * call.out_elem_bytes[k];
  }

  // Nothing to compute (an empty output): return at once, whatever the batch size.
  if (call.n_outer == 0 || call.batch.count() == 0) return ffi::Error::Success();
  // Block-sparse: the ranges (in host memory here) are checked once, shared by the batch.
  const BlockRanges* ranges = call.has_ranges ? &call.ranges : nullptr;
  if (ranges) {
    error = check_block_ranges(*ranges, call.n_outer, call.n_inner);
    if (!error.empty()) return invalid(error);
  }

  // One problem per batch index, each run on all cores.
  const size_t width = call.value_bytes();
  bool ok = true;
  std::vector<const void*> in(call.inputs.size());
  for (int64_t b = 0; ok && b < call.batch.count(); ++b) {
    for (size_t k = 0; k < in.size(); ++k) in[k] = call.inputs[k] + call.batch.offset(k, b) * width;
    for (size_t k = 0; k < outs.size(); ++k)
      outs[k].data = call.outputs[k] + b * out_bytes_per_problem[k];
    if (call.dtype == ffi::DataType::F32) {
      ok = cpu::execute<float>(*prog, reinterpret_cast<const float* const*>(in.data()),
                               call.n_outer, call.n_inner, outs.data(), &error, ranges);
    } else {
      ok = cpu::execute<double>(*prog, reinterpret_cast<const double* const*>(in.data()),
                                call.n_outer, call.n_inner, outs.data(), &error, ranges);
    }
  }
  if (!ok) return ffi::Error::Internal(error);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxkeops

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxkeops_reduce_cpu, jaxkeops::reduce_impl,
                              xla::ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<std::string_view>("program")
                                  .Attr<int64_t>("n_inner"));
