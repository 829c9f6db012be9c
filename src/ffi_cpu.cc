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

#include "batch.h"
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

  // Outputs: (*batch, n_outer, *row shape of the reduction); values in the compute dtype,
  // indices int32 or int64. The batch dims and n_outer are read off output 0.
  std::vector<int64_t> batch_dims;
  int64_t n_outer = 0;
  std::vector<cpu::OutputBuffer> outs(infos.size());
  std::vector<char*> out_data(infos.size());
  std::vector<int64_t> out_bytes_per_problem(infos.size());
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
    const std::vector<int64_t>& row = infos[k].dims;
    std::string row_str;
    for (int64_t d : row) row_str += ", " + std::to_string(d);
    if (k == 0) {
      if (odims.size() < 1 + row.size())
        return invalid(name + " has shape " + shape_str(odims) + ", expected (*batch, n_outer" +
                       row_str + ")");
      const size_t batch_rank = odims.size() - 1 - row.size();
      batch_dims.assign(odims.begin(), odims.begin() + batch_rank);
      n_outer = odims[batch_rank];
    }
    std::vector<int64_t> expected(batch_dims);
    expected.push_back(n_outer);
    expected.insert(expected.end(), row.begin(), row.end());
    if (!std::equal(odims.begin(), odims.end(), expected.begin(), expected.end()))
      return invalid(name + " has shape " + shape_str(odims) + ", expected (*batch, " +
                     std::to_string(n_outer) + row_str + ") with the batch dims of output 0");
    out_data[k] = static_cast<char*>(out->untyped_data());
    const int64_t elem = (t == ffi::DataType::F32 || t == ffi::DataType::S32) ? 4 : 8;
    out_bytes_per_problem[k] = n_outer * infos[k].width() * elem;
  }
  if (dtype != ffi::DataType::F32 && dtype != ffi::DataType::F64)
    return invalid(std::string("operand dtype is ") + dtype_str(dtype) +
                   ", expected float32 or float64");
  BatchLayout batch(batch_dims);

  std::vector<const char*> data(args.size());
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
    const size_t base_rank = spec.role == kParam ? 1 : 2;
    std::string batch_error;
    if (!batch.add_operand(dims.begin(), dims.size(), base_rank, &batch_error))
      return invalid(name + " of shape " + shape_str(dims) + " " + batch_error);
    const int64_t* base = dims.begin() + batch.rank();
    if (spec.role == kParam) {
      if (base[0] != spec.dim)
        return invalid(name + " has shape " + shape_str(dims) + ", expected (*batch, " +
                       std::to_string(spec.dim) + ")");
    } else {
      const int64_t n = spec.role == kOuter ? n_outer : n_inner;
      if (base[0] != n || base[1] != spec.dim)
        return invalid(name + " has shape " + shape_str(dims) + ", expected (*batch, " +
                       std::to_string(n) + ", " + std::to_string(spec.dim) + ")" +
                       (spec.role == kOuter ? " (n_outer from the output)" : " (n_inner)"));
    }
    data[k] = static_cast<const char*>(buf.untyped_data());
  }

  // One problem per batch index, each run on all cores.
  const size_t width = dtype == ffi::DataType::F32 ? sizeof(float) : sizeof(double);
  bool ok = true;
  std::vector<const void*> in(data.size());
  for (int64_t b = 0; ok && b < batch.count(); ++b) {
    for (size_t k = 0; k < data.size(); ++k) in[k] = data[k] + batch.offset(k, b) * width;
    for (size_t k = 0; k < outs.size(); ++k)
      outs[k].data = out_data[k] + b * out_bytes_per_problem[k];
    if (dtype == ffi::DataType::F32) {
      ok = cpu::execute<float>(*prog, reinterpret_cast<const float* const*>(in.data()), n_outer,
                               n_inner, outs.data(), &error);
    } else {
      ok = cpu::execute<double>(*prog, reinterpret_cast<const double* const*>(in.data()), n_outer,
                                n_inner, outs.data(), &error);
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
