// Validation of one "jaxkeops_fused" call (docs/fused-kernels.md) into a FusedCall, shared by
// the CPU (host emulation) and CUDA handlers. Host code only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "batch.h"
#include "call_layout.h"
#include "fused/fused_call.h"
#include "fused/pair_math.h"
#include "ops.h"
#include "reductions.h"
#include "xla/ffi/api/ffi.h"

namespace jaxkeops::fused {

namespace ffi = xla::ffi;

inline constexpr const char* kOperandNames[kOperands] = {"X", "Y", "C", "U", "V", "AO", "AI", "Z"};

// The decoded call and what the handlers need besides it.
struct DecodedCall {
  FusedCall call{};
  ffi::DataType dtype = ffi::DataType::F32;
  std::vector<int64_t> batch_dims;
  BatchLayout batch{{}};
  const char* data[kOperands] = {};
  std::vector<OutputInfo> outputs;
};

namespace detail {

inline bool elementwise_unary(int32_t op) {
  const OpInfo* info = find_op(op);
  return info && info->kind == OpKind::kUnaryElementwise;
}
inline bool elementwise_binary(int32_t op) {
  const OpInfo* info = find_op(op);
  return info && info->kind == OpKind::kBinaryElementwise;
}

// "" or what is wrong with operand reference `ref` of instruction `i`.
inline std::string check_reference(int32_t ref, int i, const char* which, const FusedCall& c) {
  const std::string where = "program instruction " + std::to_string(i) + " operand " + which +
                            " = " + std::to_string(ref);
  if (ref >= 0 && ref < kSlots) return "";
  if (ref == kRefS || ref == kRefA) return "";
  if (ref >= kRefU && ref < kRefU + kMaxRefScalars) {
    if (ref - kRefU < c.NU) return "";
    return where + " reads U_i" + std::to_string(ref - kRefU) + " but U has NU = " +
           std::to_string(c.NU) + " columns";
  }
  if (ref >= kRefV && ref < kRefV + kMaxRefScalars) {
    if (ref - kRefV < c.NV) return "";
    return where + " reads V_j" + std::to_string(ref - kRefV) + " but V has NV = " +
           std::to_string(c.NV) + " columns";
  }
  if (ref >= kRefC) {
    if (ref - kRefC < c.NC) return "";
    return where + " reads C[" + std::to_string(ref - kRefC) + "] but C has NC = " +
           std::to_string(c.NC) + " values";
  }
  return where + " is not a reference (expected 0..3 slot, 4 s, 5 a, 8+k U, 16+k V, 32+k C)";
}

}  // namespace detail

// Checks the attributes against the sizes already in *c (D, NC, NU, NV, NA, E). "" or the error.
inline std::string check_attributes(FusedCall* c, ffi::Span<const int32_t> program) {
  if (c->score < kScoreNone || c->score > kWeightedSqDist)
    return "attribute score = " + std::to_string(c->score) +
           " is unknown (expected 0 none, 1 sqdist, 2 dot, 3 l1, 4 weighted sqdist)";
  if (c->phi < kAffine || c->phi > kOne)
    return "attribute phi = " + std::to_string(c->phi) +
           " is unknown (expected 0 affine, 1 exp_affine, 2 program, 3 one)";
  if (c->factor < kFactorNone || c->factor > kFactorDiff)
    return "attribute factor = " + std::to_string(c->factor) +
           " is unknown (expected 0 none, 1 Z, 2 diff)";
  const bool known = dispatch_reduction(c->reduction, [](auto) {});
  if (!known) return "attribute reduction = " + std::to_string(c->reduction) + " is unknown";
  const Reduction r = static_cast<Reduction>(c->reduction);
  const char* rname = kReductionInfos[c->reduction].name;
  // Reducer family, and which factors each allows (the contract's list).
  bool factor_ok = false;
  switch (r) {
    case Reduction::Sum:
      c->family = int32_t(Family::kSum);
      factor_ok = true;
      break;
    case Reduction::LogSumExp:
      c->family = int32_t(Family::kExpSum);
      c->exp_kind = int32_t(ExpKind::kLogSumExp);
      factor_ok = c->factor == kFactorNone;
      break;
    case Reduction::LogSumExpWeight:
    case Reduction::SumSoftMaxWeight:
      c->family = int32_t(Family::kExpSum);
      c->exp_kind = int32_t(r == Reduction::LogSumExpWeight ? ExpKind::kLogSumExpWeight
                                                            : ExpKind::kSumSoftMaxWeight);
      factor_ok = c->factor != kFactorNone;
      break;
    case Reduction::KMin: case Reduction::ArgKMin: case Reduction::KMin_ArgKMin:
      c->family = int32_t(Family::kKMin);
      factor_ok = c->factor == kFactorNone || (c->factor == kFactorDiff && c->phi == kOne);
      break;
    default:  // Min, ArgMin, Min_ArgMin, Max, ArgMax, Max_ArgMax
      c->family = int32_t(Family::kMinMax);
      c->is_max = r == Reduction::Max || r == Reduction::ArgMax || r == Reduction::Max_ArgMax;
      factor_ok = c->factor == kFactorNone || (c->factor == kFactorDiff && c->phi == kOne);
      break;
  }
  if (!factor_ok)
    return "attribute factor = " + std::to_string(c->factor) + " is not allowed with " + rname +
           " (Sum: 0, 1, 2; LogSumExp: 0; LogSumExpWeight and SumSoftMaxWeight: 1 or 2; "
           "min/max/K-min families: 0, or 2 with phi = one)";
  c->pick = int32_t(r == Reduction::Min || r == Reduction::Max || r == Reduction::KMin
                        ? Pick::kValue
                    : r == Reduction::ArgMin || r == Reduction::ArgMax || r == Reduction::ArgKMin
                        ? Pick::kIndex
                        : Pick::kBoth);
  if (c->family == int32_t(Family::kKMin)) {
    if (c->k < 1) return "attribute k = " + std::to_string(c->k) + " must be >= 1 for " + rname;
  } else if (c->k != 0) {
    return "attribute k = " + std::to_string(c->k) + " must be 0 for " + rname;
  }
  if (c->factor == kFactorZ && c->E < 1)
    return "attribute factor = 1 (Z) needs Z of width E >= 1, got E = " + std::to_string(c->E);
  if (c->NA > 0 && c->phi != kProgram && c->family != int32_t(Family::kSum))
    return std::string("a_ij (NA = ") + std::to_string(c->NA) +
           ") multiplies the pair value of Sum only; with " + rname +
           " it can only be read by a program phi";
  if (c->score == kWeightedSqDist && c->NC < c->D + ((c->phi == kAffine || c->phi == kExpAffine)
                                                         ? 1 : 0))
    return "score 4 (weighted sqdist) needs C[0:D] weights" +
           std::string(c->phi <= kExpAffine ? " and the coefficient C[D]" : "") + ": NC = " +
           std::to_string(c->NC) + ", D = " + std::to_string(c->D);
  // The φ program.
  if (c->phi != kProgram) {
    if (program.size() != 0)
      return "attribute program has " + std::to_string(program.size()) +
             " ints but phi = " + std::to_string(c->phi) + " is not 2 (program); expected none";
    c->n_instr = 0;
    return "";
  }
  if (program.size() == 0 || program.size() % 4 != 0)
    return "attribute program has " + std::to_string(program.size()) +
           " ints, expected 4 per instruction and at least one instruction";
  if (program.size() / 4 > size_t(kMaxInstructions))
    return "attribute program has " + std::to_string(program.size() / 4) +
           " instructions, at most " + std::to_string(kMaxInstructions) + " allowed";
  c->n_instr = int32_t(program.size() / 4);
  for (int i = 0; i < c->n_instr; ++i) {
    const int32_t op = program[4 * i], dst = program[4 * i + 1];
    const int32_t a = program[4 * i + 2], b = program[4 * i + 3];
    const bool unary = detail::elementwise_unary(op), binary = detail::elementwise_binary(op);
    const bool pow = op == int32_t(Op::Pow);
    if (!unary && !binary && !pow)
      return "program instruction " + std::to_string(i) + ": opcode " + std::to_string(op) +
             " is not a unary or binary elementwise op of the op table, nor Pow";
    if (!fused_program_op(static_cast<Op>(op)))
      return "program instruction " + std::to_string(i) + ": opcode " + std::to_string(op) +
             " (" + find_op(op)->name +
             ") is not run by the fused kernels (its CUDA math needs a stack frame); the "
             "interpreter runs such formulas";
    if (dst < 0 || dst >= kSlots)
      return "program instruction " + std::to_string(i) + ": dst = " + std::to_string(dst) +
             " is not a slot 0..3";
    std::string e = detail::check_reference(a, i, "a", *c);
    if (e.empty() && binary) e = detail::check_reference(b, i, "b", *c);
    if (!e.empty()) return e;
    for (int k = 0; k < 4; ++k) c->program[4 * i + k] = program[4 * i + k];
  }
  return "";
}

// Validates the operands, outputs and attributes; "" or the error, and *d filled.
inline std::string decode_call(ffi::RemainingArgs args, ffi::RemainingRets rets, int32_t score,
                               int32_t phi, ffi::Span<const int32_t> program, int32_t factor,
                               int32_t reduction, int32_t k, DecodedCall* d) {
  FusedCall& c = d->call;
  c.score = score;
  c.phi = phi;
  c.factor = factor;
  c.reduction = reduction;
  c.k = k;
  if (args.size() != kOperands)
    return "expected 8 operands (X, Y, C, U, V, AO, AI, Z), got " + std::to_string(args.size());
  std::vector<ffi::AnyBuffer> bufs;
  for (int o = 0; o < kOperands; ++o) {
    auto buf = args.get<ffi::AnyBuffer>(o);
    if (!buf) return std::string("cannot decode operand ") + kOperandNames[o];
    bufs.push_back(*buf);
  }
  const ffi::DataType dtype = bufs[kX].element_type();
  if (dtype != ffi::DataType::F32 && dtype != ffi::DataType::F64)
    return std::string("operand X has dtype ") + dtype_str(dtype) +
           ", expected float32 or float64";
  for (int o = 0; o < kOperands; ++o) {
    if (bufs[o].element_type() != dtype)
      return std::string("operand ") + kOperandNames[o] + " has dtype " +
             dtype_str(bufs[o].element_type()) + ", expected " + dtype_str(dtype) +
             " (all operands share X's dtype)";
    const size_t min_rank = o == kC ? 1 : 2;
    if (bufs[o].dimensions().size() < min_rank)
      return std::string("operand ") + kOperandNames[o] + " has shape " +
             shape_str(bufs[o].dimensions()) + ", expected " +
             (o == kC ? "(*b, NC)" : "(*b, n, width)");
  }
  d->dtype = dtype;
  auto last = [&](int o) { return bufs[o].dimensions().back(); };
  c.D = int32_t(last(kX));
  c.NC = int32_t(last(kC));
  c.NU = int32_t(last(kU));
  c.NV = int32_t(last(kV));
  c.NA = int32_t(last(kAO));
  c.E = int32_t(last(kZ));
  if (c.D < 1) return "operand X has D = " + std::to_string(c.D) + ", expected D >= 1";
  if (c.NC < 1) return "operand C has NC = " + std::to_string(c.NC) + ", expected NC >= 1";
  std::string error = check_attributes(&c, program);
  if (!error.empty()) return error;
  c.value_dim = c.factor == kFactorZ ? c.E : c.factor == kFactorDiff ? c.D : 1;
  if (c.family == int32_t(Family::kKMin) &&
      int64_t(c.k) * c.value_dim > KMinReducer<PickOutputs::kValue>::kMaxSlots)
    return "attribute k = " + std::to_string(c.k) + " times the value dim " +
           std::to_string(c.value_dim) + " is too large";

  // Outputs: those of jaxkeops_reduce for the same reduction (reductions.h).
  const bool weighted = c.family == int32_t(Family::kExpSum) &&
                        c.exp_kind != int32_t(ExpKind::kLogSumExp);
  const std::vector<int32_t> result_dims =
      weighted ? std::vector<int32_t>{1, c.value_dim} : std::vector<int32_t>{c.value_dim};
  const std::vector<int32_t> params =
      c.family == int32_t(Family::kKMin) ? std::vector<int32_t>{c.k} : std::vector<int32_t>{};
  d->outputs = reduction_outputs(c.reduction, params, result_dims);
  if (rets.size() != d->outputs.size())
    return std::string("reduction ") + kReductionInfos[c.reduction].name + " has " +
           std::to_string(d->outputs.size()) + " output(s), the call has " +
           std::to_string(rets.size());
  c.n_outputs = int32_t(d->outputs.size());
  for (size_t o = 0; o < d->outputs.size(); ++o) {
    auto out_or = rets.get<ffi::AnyBuffer>(o);
    if (!out_or) return "cannot decode output " + std::to_string(o);
    ffi::Result<ffi::AnyBuffer> out = *out_or;
    const OutputInfo& info = d->outputs[o];
    const ffi::DataType t = out->element_type();
    const std::string name = "output " + std::to_string(o);
    if (info.is_index ? (t != ffi::DataType::S32 && t != ffi::DataType::S64) : t != dtype)
      return name + " has dtype " + dtype_str(t) + ", expected " +
             (info.is_index ? std::string("int32 or int64") : std::string(dtype_str(dtype)));
    const auto dims = out->dimensions();
    std::string row_str;
    for (int64_t x : info.dims) row_str += ", " + std::to_string(x);
    if (o == 0) {
      if (dims.size() < 1 + info.dims.size())
        return name + " has shape " + shape_str(dims) + ", expected (*b, n_outer" + row_str + ")";
      const size_t batch_rank = dims.size() - 1 - info.dims.size();
      d->batch_dims.assign(dims.begin(), dims.begin() + batch_rank);
      c.n_outer = dims[batch_rank];
    }
    std::vector<int64_t> expected(d->batch_dims);
    expected.push_back(c.n_outer);
    expected.insert(expected.end(), info.dims.begin(), info.dims.end());
    if (!std::equal(dims.begin(), dims.end(), expected.begin(), expected.end()))
      return name + " has shape " + shape_str(dims) + ", expected (*b, " +
             std::to_string(c.n_outer) + row_str + ") with the batch dims of output 0";
    c.out[o] = out->untyped_data();
    c.out_type[o] = int32_t(info.is_index ? (t == ffi::DataType::S32 ? OutType::kS32
                                                                       : OutType::kS64)
                                          : OutType::kValue);
    c.out_width[o] = info.width();
  }

  // Operands: batch dims (the output's or 1), then their own dims.
  d->batch = BatchLayout(d->batch_dims);
  const size_t nb = d->batch_dims.size();
  c.n_inner = bufs[kY].dimensions().size() == nb + 2 ? bufs[kY].dimensions()[nb] : -1;
  const int64_t expected_n[kOperands] = {c.n_outer, c.n_inner, -1,        c.n_outer,
                                         c.n_inner, c.n_outer, c.n_inner, c.n_inner};
  const int64_t expected_w[kOperands] = {c.D, c.D, c.NC, c.NU, c.NV, c.NA, c.NA, c.E};
  for (int o = 0; o < kOperands; ++o) {
    const auto dims = bufs[o].dimensions();
    const std::string name = std::string("operand ") + kOperandNames[o];
    std::string e;
    if (!d->batch.add_operand(dims.begin(), dims.size(), o == kC ? 1 : 2, &e))
      return name + " of shape " + shape_str(dims) + " " + e;
    const int64_t* base = dims.begin() + nb;
    const bool ok = o == kC ? base[0] == expected_w[o]
                            : base[0] == expected_n[o] && base[1] == expected_w[o];
    if (!ok)
      return name + " has shape " + shape_str(dims) + ", expected (*b, " +
             (o == kC ? "" : std::to_string(expected_n[o]) + ", ") +
             std::to_string(expected_w[o]) + ")" +
             (o == kX || o == kU || o == kAO ? " (n_outer from output 0)"
              : o == kC                      ? ""
                                             : " (n_inner from Y)");
    d->data[o] = static_cast<const char*>(bufs[o].untyped_data());
  }
  if (c.n_inner > int64_t(INT32_MAX) - 1024)
    return "n_inner = " + std::to_string(c.n_inner) + " is above the fused kernels' limit 2^31";
  c.batch_count = d->batch.count();
  return "";
}

}  // namespace jaxkeops::fused

namespace jaxkeops::fused {

// The launches of a decoded call: the trailing (up to kMaxBatchRank) batch dims are resolved by
// the per-thread code, any leading ones by one launch each (vmap nested more than four deep).
// Each launch's operands and outputs are offset to its first problem.
inline std::vector<FusedCall> launches_of(const DecodedCall& d) {
  const FusedCall& c = d.call;
  const size_t width = d.dtype == ffi::DataType::F32 ? 4 : 8;
  const size_t rank = d.batch_dims.size();
  const size_t dev_rank = rank < size_t(kMaxBatchRank) ? rank : size_t(kMaxBatchRank);
  const size_t host_rank = rank - dev_rank;
  int64_t host_count = 1, dev_count = 1;
  for (size_t k = 0; k < host_rank; ++k) host_count *= d.batch_dims[k];
  for (size_t k = host_rank; k < rank; ++k) dev_count *= d.batch_dims[k];
  FusedCall base = c;
  base.batch_rank = int32_t(dev_rank);
  base.batch_count = dev_count;
  for (size_t k = 0; k < dev_rank; ++k) base.batch_dims[k] = d.batch_dims[host_rank + k];
  for (int o = 0; o < kOperands; ++o) {
    int64_t unit = 1;  // flat batch index with a 1 at dim k: its offset is dim k's stride
    for (size_t k = dev_rank; k-- > 0;) {
      base.in_stride[o][k] = d.batch_dims[host_rank + k] == 1 ? 0 : d.batch.offset(o, unit);
      unit *= d.batch_dims[host_rank + k];
    }
  }
  std::vector<FusedCall> out;
  if (c.n_outer == 0 || d.batch.count() == 0) return out;
  for (int64_t h = 0; h < host_count; ++h) {
    FusedCall l = base;
    const int64_t first = h * dev_count;
    for (int o = 0; o < kOperands; ++o) l.in[o] = d.data[o] + d.batch.offset(o, first) * width;
    for (int o = 0; o < c.n_outputs; ++o) {
      const int64_t elem = c.out_type[o] == int32_t(OutType::kValue)   ? int64_t(width)
                           : c.out_type[o] == int32_t(OutType::kS32) ? 4
                                                                       : 8;
      l.out[o] = static_cast<char*>(c.out[o]) + first * c.n_outer * c.out_width[o] * elem;
    }
    out.push_back(l);
  }
  return out;
}

}  // namespace jaxkeops::fused
