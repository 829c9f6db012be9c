// The XLA FFI handler "jaxkeops_reduce" for platform "cpu".
#include "ffi_cpu.h"

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "cpu/executor.h"
#include "program.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

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
    std::lock_guard<std::mutex> lock(mu_);
    if (cache_.size() >= kMaxEntries) cache_.clear();
    auto res = cache_.emplace(std::string(bytes), std::move(prog));
    return res.first->second;
  }

 private:
  static constexpr size_t kMaxEntries = 4096;
  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<const Program>> cache_;
};

ProgramCache& program_cache() {
  static ProgramCache* cache = new ProgramCache();
  return *cache;
}

std::string shape_str(ffi::AnyBuffer::Dimensions dims) {
  std::string s = "(";
  for (size_t k = 0; k < dims.size(); ++k) {
    if (k) s += ", ";
    s += std::to_string(dims[k]);
  }
  if (dims.size() == 1) s += ",";
  return s + ")";
}

const char* dtype_str(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32: return "float32";
    case ffi::DataType::F64: return "float64";
    case ffi::DataType::F16: return "float16";
    case ffi::DataType::BF16: return "bfloat16";
    case ffi::DataType::S32: return "int32";
    case ffi::DataType::S64: return "int64";
    default: return "an unsupported dtype";
  }
}

ffi::Error invalid(std::string msg) {
  return ffi::Error::InvalidArgument("jaxkeops_reduce: " + std::move(msg));
}

ffi::Error reduce_impl(ffi::RemainingArgs args, ffi::RemainingRets rets,
                       std::string_view program, int64_t n_inner) {
  std::string error;
  std::shared_ptr<const Program> prog = program_cache().get(program, &error);
  if (!prog) return invalid(error);
  if (n_inner < 0) return invalid("n_inner = " + std::to_string(n_inner) + " is negative");

  if (args.size() != prog->inputs.size())
    return invalid("the program has " + std::to_string(prog->inputs.size()) +
                   " inputs but the call has " + std::to_string(args.size()) + " operands");
  const std::vector<OutputInfo> infos =
      reduction_outputs(prog->reduction, prog->reduction_params, prog->result_dims);
  if (rets.size() != infos.size())
    return invalid("expected " + std::to_string(infos.size()) + " output buffer(s), got " +
                   std::to_string(rets.size()));

  // The compute dtype: the operands' (all alike), else the first value output's.
  ffi::DataType dtype = ffi::DataType::F32;
  bool dtype_known = false;
  if (args.size() > 0) {
    auto buf_or = args.get<ffi::AnyBuffer>(0);
    if (!buf_or) return invalid("cannot decode operand 0");
    dtype = buf_or->element_type();
    dtype_known = true;
  }

  // Outputs: (n_outer, trailing...) with the reducer's width; values in the compute dtype,
  // indices int32 or int64. n_outer is read off output 0.
  int64_t n_outer = 0;
  std::vector<cpu::OutputBuffer> outs(infos.size());
  for (size_t k = 0; k < infos.size(); ++k) {
    auto out_or = rets.get<ffi::AnyBuffer>(k);
    if (!out_or) return invalid("cannot decode output buffer " + std::to_string(k));
    ffi::Result<ffi::AnyBuffer> out = *out_or;
    const std::string name = "output " + std::to_string(k);
    const ffi::DataType t = out->element_type();
    if (infos[k].is_index) {
      if (t != ffi::DataType::S32 && t != ffi::DataType::S64)
        return invalid(name + " (indices) has dtype " + dtype_str(t) +
                       ", expected int32 or int64");
      outs[k].type = t == ffi::DataType::S32 ? cpu::ElementType::kS32 : cpu::ElementType::kS64;
    } else {
      if (!dtype_known) {
        dtype = t;
        dtype_known = true;
      }
      if (t != dtype || (t != ffi::DataType::F32 && t != ffi::DataType::F64))
        return invalid(name + " has dtype " + dtype_str(t) + ", expected the operands' dtype " +
                       dtype_str(dtype) + " (float32 or float64)");
      outs[k].type = t == ffi::DataType::F32 ? cpu::ElementType::kF32 : cpu::ElementType::kF64;
    }
    const auto odims = out->dimensions();
    int64_t width = 1;
    for (size_t a = 1; a < odims.size(); ++a) width *= odims[a];
    if (k == 0 && odims.size() >= 1) n_outer = odims[0];
    if (odims.size() < 2 || odims[0] != n_outer || width != infos[k].width)
      return invalid(name + " has shape " + shape_str(odims) + ", expected (" +
                     std::to_string(n_outer) + ", ...) with " + std::to_string(infos[k].width) +
                     " values per row");
    outs[k].data = out->untyped_data();
  }
  if (dtype != ffi::DataType::F32 && dtype != ffi::DataType::F64)
    return invalid(std::string("operand dtype is ") + dtype_str(dtype) +
                   ", expected float32 or float64");

  std::vector<const void*> data(args.size());
  for (size_t k = 0; k < args.size(); ++k) {
    auto buf_or = args.get<ffi::AnyBuffer>(k);
    if (!buf_or) return invalid("cannot decode operand " + std::to_string(k));
    ffi::AnyBuffer buf = *buf_or;
    const InputSpec& spec = prog->inputs[k];
    const std::string name = "operand " + std::to_string(k) + " (" + role_name(spec.role) + ")";
    if (buf.element_type() != dtype)
      return invalid(name + " has dtype " + dtype_str(buf.element_type()) + ", expected " +
                     dtype_str(dtype) + " (all operands share one dtype)");
    const auto dims = buf.dimensions();
    if (spec.role == kParam) {
      if (dims.size() != 1 || dims[0] != spec.dim)
        return invalid(name + " has shape " + shape_str(dims) + ", expected (" +
                       std::to_string(spec.dim) + ",)");
    } else {
      const int64_t n = spec.role == kOuter ? n_outer : n_inner;
      if (dims.size() != 2 || dims[0] != n || dims[1] != spec.dim)
        return invalid(name + " has shape " + shape_str(dims) + ", expected (" +
                       std::to_string(n) + ", " + std::to_string(spec.dim) + ")" +
                       (spec.role == kOuter ? " (n_outer from the output)" : " (n_inner)"));
    }
    data[k] = buf.untyped_data();
  }

  bool ok;
  if (dtype == ffi::DataType::F32) {
    std::vector<const float*> in(data.size());
    for (size_t k = 0; k < data.size(); ++k) in[k] = static_cast<const float*>(data[k]);
    ok = cpu::execute<float>(*prog, in.data(), n_outer, n_inner, outs.data(), &error);
  } else {
    std::vector<const double*> in(data.size());
    for (size_t k = 0; k < data.size(); ++k) in[k] = static_cast<const double*>(data[k]);
    ok = cpu::execute<double>(*prog, in.data(), n_outer, n_inner, outs.data(), &error);
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
