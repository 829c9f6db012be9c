// Validation of one "jaxkeops_reduce" call against its program, shared by the CPU and CUDA
// handlers: operand and output dtypes and shapes, batch dims, n_outer. Host code only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "batch.h"
#include "block_ranges.h"
#include "program.h"
#include "reductions.h"
#include "xla/ffi/api/ffi.h"

namespace jaxkeops {

namespace ffi = xla::ffi;

inline std::string shape_str(ffi::AnyBuffer::Dimensions dims) {
  std::string s = "(";
  for (size_t k = 0; k < dims.size(); ++k) {
    if (k) s += ", ";
    s += std::to_string(dims[k]);
  }
  if (dims.size() == 1) s += ",";
  return s + ")";
}

inline const char* dtype_str(ffi::DataType t) {
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

// A checked call: where the data is and how the batch maps onto it.
struct CallLayout {
  ffi::DataType dtype = ffi::DataType::F32;  // of operands and value outputs (F32 or F64)
  int64_t n_outer = 0;
  int64_t n_inner = 0;  // the size of the reduced axis (the attribute, or read off an operand)
  std::vector<int64_t> batch_dims;
  BatchLayout batch{{}};
  std::vector<const char*> inputs;     // operand k's data
  std::vector<char*> outputs;          // output k's data
  std::vector<ffi::DataType> out_types;
  std::vector<int64_t> out_elem_bytes;  // element size of output k
  bool has_ranges = false;  // block-sparse: `ranges` points into the call's trailing operands
  BlockRanges ranges;

  size_t value_bytes() const { return dtype == ffi::DataType::F32 ? 4 : 8; }
};

// Checks the call against the program and the reduction's outputs (`infos`); returns an empty
// string and fills *layout, or the message of what is wrong.
inline std::string check_call(const Program& prog, const std::vector<OutputInfo>& infos,
                              ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t n_inner,
                              CallLayout* layout) {
  // n_inner = -1: the size is symbolic at lowering time (jax.export with polymorphic shapes);
  // it is read off the first inner operand.
  if (n_inner < -1) return "n_inner = " + std::to_string(n_inner) + " is negative";
  if (n_inner == -1) {
    for (size_t k = 0; k < prog.inputs.size() && k < args.size(); ++k) {
      if (prog.inputs[k].role != kInner) continue;
      auto buf_or = args.get<ffi::AnyBuffer>(k);
      if (!buf_or) return "cannot decode operand " + std::to_string(k);
      const auto dims = buf_or->dimensions();
      if (dims.size() < 2) return "operand " + std::to_string(k) + " (inner) has rank < 2";
      n_inner = dims[dims.size() - 2];
      break;
    }
    if (n_inner == -1) return "n_inner = -1 (read off the operands) but no operand is inner";
  }
  layout->n_inner = n_inner;
  // The program's inputs, then optionally the three ranges operands (block_ranges.h).
  const size_t n_inputs = prog.inputs.size();
  if (args.size() != n_inputs && args.size() != n_inputs + kRangesOperands)
    return "the program has " + std::to_string(n_inputs) + " inputs but the call has " +
           std::to_string(args.size()) + " operands (expected " + std::to_string(n_inputs) +
           ", or " + std::to_string(n_inputs + kRangesOperands) + " with ranges)";
  layout->has_ranges = args.size() == n_inputs + kRangesOperands;
  if (layout->has_ranges) {
    const char* names[kRangesOperands] = {"clusters", "slice_ends", "inner_ranges"};
    const int32_t* data[kRangesOperands];
    int64_t counts[kRangesOperands];
    for (int k = 0; k < kRangesOperands; ++k) {
      auto buf_or = args.get<ffi::AnyBuffer>(n_inputs + k);
      if (!buf_or) return std::string("cannot decode the ranges operand ") + names[k];
      const auto dims = buf_or->dimensions();
      const bool pairs = k != 1;
      if (buf_or->element_type() != ffi::DataType::S32 || dims.size() != (pairs ? 2u : 1u) ||
          (pairs && dims[1] != 2))
        return std::string("ranges operand ") + names[k] + " is " +
               dtype_str(buf_or->element_type()) + " " + shape_str(dims) + ", expected int32 " +
               (pairs ? "(n, 2)" : "(n,)");
      data[k] = static_cast<const int32_t*>(buf_or->untyped_data());
      counts[k] = dims[0];
    }
    if (counts[0] != counts[1])
      return "ranges: " + std::to_string(counts[0]) + " clusters but " +
             std::to_string(counts[1]) + " slice ends";
    layout->ranges = BlockRanges{data[0], data[1], data[2], counts[0], counts[2]};
  }
  if (rets.size() != infos.size())
    return "expected " + std::to_string(infos.size()) + " output buffer(s), got " +
           std::to_string(rets.size());

  // The compute dtype: the operands' (all alike), else the first value output's.
  ffi::DataType dtype = ffi::DataType::F32;
  bool dtype_known = false;
  if (n_inputs > 0) {
    auto buf_or = args.get<ffi::AnyBuffer>(0);
    if (!buf_or) return "cannot decode operand 0";
    dtype = buf_or->element_type();
    dtype_known = true;
  }

  // Outputs: (*batch, n_outer, *row shape of the reduction); values in the compute dtype,
  // indices int32 or int64. The batch dims and n_outer are read off output 0.
  std::vector<int64_t>& batch_dims = layout->batch_dims;
  int64_t& n_outer = layout->n_outer;
  layout->outputs.assign(infos.size(), nullptr);
  layout->out_types.assign(infos.size(), dtype);
  layout->out_elem_bytes.assign(infos.size(), 0);
  for (size_t k = 0; k < infos.size(); ++k) {
    auto out_or = rets.get<ffi::AnyBuffer>(k);
    if (!out_or) return "cannot decode output buffer " + std::to_string(k);
    ffi::Result<ffi::AnyBuffer> out = *out_or;
    const std::string name = "output " + std::to_string(k);
    const ffi::DataType t = out->element_type();
    if (infos[k].is_index) {
      if (t != ffi::DataType::S32 && t != ffi::DataType::S64)
        return name + " (indices) has dtype " + dtype_str(t) + ", expected int32 or int64";
    } else {
      if (!dtype_known) {
        dtype = t;
        dtype_known = true;
      }
      if (t != dtype || (t != ffi::DataType::F32 && t != ffi::DataType::F64))
        return name + " has dtype " + dtype_str(t) + ", expected the operands' dtype " +
               dtype_str(dtype) + " (float32 or float64)";
    }
    const auto odims = out->dimensions();
    const std::vector<int64_t>& row = infos[k].dims;
    std::string row_str;
    for (int64_t d : row) row_str += ", " + std::to_string(d);
    if (k == 0) {
      if (odims.size() < 1 + row.size())
        return name + " has shape " + shape_str(odims) + ", expected (*batch, n_outer" + row_str +
               ")";
      const size_t batch_rank = odims.size() - 1 - row.size();
      batch_dims.assign(odims.begin(), odims.begin() + batch_rank);
      n_outer = odims[batch_rank];
    }
    std::vector<int64_t> expected(batch_dims);
    expected.push_back(n_outer);
    expected.insert(expected.end(), row.begin(), row.end());
    if (!std::equal(odims.begin(), odims.end(), expected.begin(), expected.end()))
      return name + " has shape " + shape_str(odims) + ", expected (*batch, " +
             std::to_string(n_outer) + row_str + ") with the batch dims of output 0";
    layout->outputs[k] = static_cast<char*>(out->untyped_data());
    layout->out_types[k] = t;
    layout->out_elem_bytes[k] = (t == ffi::DataType::F32 || t == ffi::DataType::S32) ? 4 : 8;
  }
  if (dtype != ffi::DataType::F32 && dtype != ffi::DataType::F64)
    return std::string("operand dtype is ") + dtype_str(dtype) + ", expected float32 or float64";
  layout->dtype = dtype;
  layout->batch = BatchLayout(batch_dims);

  layout->inputs.assign(n_inputs, nullptr);
  for (size_t k = 0; k < n_inputs; ++k) {
    auto buf_or = args.get<ffi::AnyBuffer>(k);
    if (!buf_or) return "cannot decode operand " + std::to_string(k);
    ffi::AnyBuffer buf = *buf_or;
    const InputSpec& spec = prog.inputs[k];
    const std::string name = "operand " + std::to_string(k) + " (" + role_name(spec.role) + ")";
    if (buf.element_type() != dtype)
      return name + " has dtype " + dtype_str(buf.element_type()) + ", expected " +
             dtype_str(dtype) + " (all operands share one dtype)";
    const auto dims = buf.dimensions();
    const size_t base_rank = spec.role == kParam ? 1 : 2;
    std::string batch_error;
    if (!layout->batch.add_operand(dims.begin(), dims.size(), base_rank, &batch_error))
      return name + " of shape " + shape_str(dims) + " " + batch_error;
    const int64_t* base = dims.begin() + layout->batch.rank();
    if (spec.role == kParam) {
      if (base[0] != spec.dim)
        return name + " has shape " + shape_str(dims) + ", expected (*batch, " +
               std::to_string(spec.dim) + ")";
    } else {
      const int64_t n = spec.role == kOuter ? n_outer : n_inner;
      if (base[0] != n || base[1] != spec.dim)
        return name + " has shape " + shape_str(dims) + ", expected (*batch, " +
               std::to_string(n) + ", " + std::to_string(spec.dim) + ")" +
               (spec.role == kOuter ? " (n_outer from the output)" : " (n_inner)");
    }
    layout->inputs[k] = static_cast<const char*>(buf.untyped_data());
  }
  return "";
}

}  // namespace jaxkeops
