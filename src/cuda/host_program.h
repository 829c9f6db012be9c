// The host side of the CUDA executor shared by the CUDA module (ffi_cuda.cc) and its host
// emulation (emulation.cc): the compact program built from a decoded one, and the per-call
// description. Host code only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "call_layout.h"
#include "cuda/device_program.h"
#include "program.h"
#include "reductions.h"

namespace jaxkeops::cuda {

// A decoded program, its compact device form (host copy) and its reduction description.
struct HostProgram {
  Program prog;
  DevProgram layout{};            // pointers are offsets into `blob` until uploaded
  std::vector<char> blob;         // regs | instrs | pair | terms | consts
  size_t off_regs = 0, off_instrs = 0, off_pair = 0, off_terms = 0, off_consts = 0;
  DevReduction red{};
  std::vector<OutputInfo> outputs;
};

inline size_t align16(size_t n) { return (n + 15) / 16 * 16; }

template <class U>
inline void append(std::vector<char>* blob, size_t at, const std::vector<U>& v) {
  if (!v.empty()) std::memcpy(blob->data() + at, v.data(), v.size() * sizeof(U));
}

// Builds the compact form of a validated program.
inline bool build_host_program(HostProgram* hp, std::string* error) {
  const Program& prog = hp->prog;
  DevProgram& L = hp->layout;
  std::vector<DevReg> regs(prog.registers.size());
  int64_t size[4] = {0, 0, 0, 0};  // param | file (outer) | inner | pair, each its own storage
  for (size_t r = 0; r < regs.size(); ++r) {
    const RegisterSpec& spec = prog.registers[r];
    regs[r] = {spec.role, spec.dim, int32_t(size[spec.role])};
    size[spec.role] += spec.dim;
  }
  for (int64_t s : size) {
    if (s > (int64_t(1) << 24)) {  // keeps every 32-bit offset of the kernels in range
      *error = "jaxkeops CUDA executor: the program's registers are too large (" +
               std::to_string(s) + " elements of one role; the limit is 2^24)";
      return false;
    }
  }
  L.param_size = int32_t(size[kParam]);
  L.file_size = int32_t(size[kOuter]);
  L.inner_size = int32_t(size[kInner]);
  L.pair_size = int32_t(size[kPair]);
  auto resolve = [&](int32_t r) { return PairArg{regs[r].role, regs[r].offset, regs[r].dim}; };

  std::vector<DevInstr> instrs;
  std::vector<PairInstr> pair;
  std::vector<int32_t> terms;
  std::vector<double> consts;
  for (int32_t role = kParam; role <= kPair; ++role) {
    L.phase_begin[role] = int32_t(instrs.size());
    for (size_t i = 0; i < prog.instructions.size(); ++i) {
      const Instruction& ins = prog.instructions[i];
      if (prog.registers[ins.out].role != role) continue;
      DevInstr d{};
      d.opcode = ins.opcode;
      d.out = ins.out;
      d.n_args = int32_t(ins.args.size());
      for (size_t a = 0; a < ins.args.size() && a < 3; ++a) d.args[a] = ins.args[a];
      if (ins.int_params.size() > 0) d.ip0 = ins.int_params[0];
      if (ins.int_params.size() > 1) d.ip1 = ins.int_params[1];
      if (ins.opcode == int32_t(Op::Const)) {
        d.aux = int32_t(consts.size());
        d.n_aux = int32_t(ins.float_params.size());
        consts.insert(consts.end(), ins.float_params.begin(), ins.float_params.end());
      } else if (ins.opcode == int32_t(Op::TensorDot)) {
        const std::vector<int32_t>& t = prog.term_tables[i];
        if (terms.size() / 3 + t.size() / 3 > size_t(INT32_MAX)) {
          *error = "jaxkeops CUDA executor: TensorDot tables too large";
          return false;
        }
        d.aux = int32_t(terms.size() / 3);
        d.n_aux = int32_t(t.size() / 3);
        terms.insert(terms.end(), t.begin(), t.end());
      }
      if (role != kPair) {
        instrs.push_back(d);
        continue;
      }
      // The tile interpreter's form: operands resolved to (role, offset, dim).
      PairInstr q{};
      q.opcode = d.opcode;
      q.out = regs[d.out].offset;
      q.out_dim = regs[d.out].dim;
      q.n_args = d.n_args;
      for (int32_t a = 0; a < d.n_args && a < 3; ++a) q.args[a] = resolve(d.args[a]);
      q.ip0 = d.ip0;
      q.ip1 = d.ip1;
      q.aux = d.aux;
      q.n_aux = d.n_aux;
      pair.push_back(q);
    }
  }
  L.phase_begin[4] = int32_t(instrs.size());
  L.n_pair = int32_t(pair.size());
  if (prog.results.size() > size_t(kMaxResults)) {
    *error = "jaxkeops CUDA executor: more than 2 result registers";
    return false;
  }
  L.n_results = int32_t(prog.results.size());
  for (size_t k = 0; k < prog.results.size(); ++k) {
    L.results[k] = prog.results[k];
    L.result_args[k] = resolve(prog.results[k]);
  }
  for (size_t k = prog.results.size(); k < size_t(kMaxResults); ++k)
    L.result_args[k] = L.result_args[0];  // unused by the reducer; a valid view

  hp->off_regs = 0;
  hp->off_instrs = align16(regs.size() * sizeof(DevReg));
  hp->off_pair = hp->off_instrs + align16(instrs.size() * sizeof(DevInstr));
  hp->off_terms = hp->off_pair + align16(pair.size() * sizeof(PairInstr));
  hp->off_consts = hp->off_terms + align16(terms.size() * sizeof(int32_t));
  hp->blob.assign(std::max<size_t>(hp->off_consts + consts.size() * sizeof(double), 16), 0);
  append(&hp->blob, hp->off_regs, regs);
  append(&hp->blob, hp->off_instrs, instrs);
  append(&hp->blob, hp->off_pair, pair);
  append(&hp->blob, hp->off_terms, terms);
  append(&hp->blob, hp->off_consts, consts);

  // The reduction: family and parameters as the device reducers read them.
  DevReduction& R = hp->red;
  R.dim = prog.result_dims[0];
  R.e = prog.result_dims.size() > 1 ? prog.result_dims[1] : 1;
  R.k = prog.reduction_params.empty() ? 1 : prog.reduction_params[0];
  switch (static_cast<Reduction>(prog.reduction)) {
    case Reduction::Sum: R.family = int32_t(Family::kSum); break;
    case Reduction::LogSumExp:
      R.family = int32_t(Family::kExpSum); R.kind = int32_t(ExpKind::kLogSumExp); break;
    case Reduction::LogSumExpWeight:
      R.family = int32_t(Family::kExpSum); R.kind = int32_t(ExpKind::kLogSumExpWeight); break;
    case Reduction::SumSoftMaxWeight:
      R.family = int32_t(Family::kExpSum); R.kind = int32_t(ExpKind::kSumSoftMaxWeight); break;
    case Reduction::Min: case Reduction::ArgMin: case Reduction::Min_ArgMin:
    case Reduction::Max: case Reduction::ArgMax: case Reduction::Max_ArgMax: {
      const auto r = static_cast<Reduction>(prog.reduction);
      R.family = int32_t(Family::kMinMax);
      R.is_max = r == Reduction::Max || r == Reduction::ArgMax || r == Reduction::Max_ArgMax;
      R.pick = int32_t(r == Reduction::Min || r == Reduction::Max         ? Pick::kValue
                       : r == Reduction::ArgMin || r == Reduction::ArgMax ? Pick::kIndex
                                                                          : Pick::kBoth);
      break;
    }
    case Reduction::KMin: R.family = int32_t(Family::kKMin); R.pick = int32_t(Pick::kValue); break;
    case Reduction::ArgKMin: R.family = int32_t(Family::kKMin); R.pick = int32_t(Pick::kIndex); break;
    case Reduction::KMin_ArgKMin:
      R.family = int32_t(Family::kKMin); R.pick = int32_t(Pick::kBoth); break;
    default:
      *error = "jaxkeops CUDA executor: unknown reduction " + std::to_string(prog.reduction);
      return false;
  }
  // The state size is the host reducer's (one source of truth for the layout).
  int64_t state = 0;
  dispatch_reduction(prog.reduction, [&](auto tag) {
    using Red = typename decltype(tag)::type;
    state = Red(prog.reduction_params, prog.result_dims).state_size();
  });
  if (state > kMaxStateDoubles) {
    *error = "jaxkeops CUDA executor: the reduction needs " + std::to_string(state) +
             " doubles of state per output row (KMin: 2 * K * dim), above the GPU limit of " +
             std::to_string(kMaxStateDoubles) + "; use a smaller K, or run it on CPU";
    return false;
  }
  R.state_size = int32_t(state);
  hp->outputs = reduction_outputs(prog.reduction, prog.reduction_params, prog.result_dims);
  if (hp->outputs.size() > size_t(kMaxOutputs)) {
    *error = "jaxkeops CUDA executor: more than 2 outputs";
    return false;
  }
  return true;
}

// Points the layout's arrays at `base`, a copy of the blob (device or host memory).
inline DevProgram program_at(const HostProgram& hp, const char* base) {
  DevProgram p = hp.layout;
  p.regs = reinterpret_cast<const DevReg*>(base + hp.off_regs);
  p.instrs = reinterpret_cast<const DevInstr*>(base + hp.off_instrs);
  p.pair = reinterpret_cast<const PairInstr*>(base + hp.off_pair);
  p.terms = reinterpret_cast<const int32_t*>(base + hp.off_terms);
  p.consts = reinterpret_cast<const double*>(base + hp.off_consts);
  return p;
}

// The per-call description of a checked call (operands of the first problem, outputs, batch
// strides of the trailing device-resolved batch dims). Leading batch dims beyond kMaxBatchRank
// are run as `*host_count` launches of `call.batch_count` problems each.
inline DevCall describe_call(const HostProgram& hp, const CallLayout& layout, int64_t n_inner,
                             int64_t* host_count) {
  const std::vector<OutputInfo>& infos = hp.outputs;
  const BatchLayout& batch = layout.batch;
  const std::vector<int64_t>& batch_dims = layout.batch_dims;
  DevCall call{};
  for (size_t k = 0; k < infos.size(); ++k) {
    const ffi::DataType t = layout.out_types[k];
    call.outs[k].type = int32_t(infos[k].is_index
                                    ? (t == ffi::DataType::S32 ? OutType::kS32 : OutType::kS64)
                                    : OutType::kValue);
    call.outs[k].data = layout.outputs[k];
    call.outs[k].width = infos[k].width();
  }
  const size_t rank = batch.rank();
  const size_t dev_rank = std::min(rank, size_t(kMaxBatchRank));
  const size_t host_rank = rank - dev_rank;
  int64_t hc = 1, dev_count = 1;
  for (size_t d = 0; d < host_rank; ++d) hc *= batch_dims[d];
  for (size_t d = host_rank; d < rank; ++d) dev_count *= batch_dims[d];
  *host_count = hc;
  call.batch_rank = int32_t(dev_rank);
  call.batch_count = dev_count;
  call.n_outer = layout.n_outer;
  call.n_inner = n_inner;
  call.n_outputs = int32_t(infos.size());
  call.has_ranges = layout.has_ranges ? 1 : 0;
  call.ranges = layout.ranges;
  for (size_t d = 0; d < dev_rank; ++d) call.batch_dims[d] = batch_dims[host_rank + d];
  // Element stride of batch dim d for operand k: the offset of the flat index with a 1 there.
  for (size_t k = 0; k < layout.inputs.size(); ++k) {
    int64_t unit = 1;
    for (size_t d = dev_rank; d-- > 0;) {
      call.in_stride[k][d] = batch_dims[host_rank + d] == 1 ? 0 : batch.offset(k, unit);
      unit *= batch_dims[host_rank + d];
    }
  }
  return call;
}

// The call of launch h (of host_count): operands and outputs moved to its first problem.
inline DevCall launch_call(const HostProgram& hp, const CallLayout& layout, const DevCall& call,
                           int64_t h) {
  DevCall c = call;
  const size_t width = layout.value_bytes();
  const int64_t first = h * call.batch_count;  // flat batch index of this launch's first problem
  for (size_t k = 0; k < layout.inputs.size(); ++k)
    c.inputs[k] = layout.inputs[k] + layout.batch.offset(k, first) * width;
  for (size_t k = 0; k < hp.outputs.size(); ++k)
    c.outs[k].data = layout.outputs[k] +
                     first * layout.n_outer * hp.outputs[k].width() * layout.out_elem_bytes[k];
  return c;
}

}  // namespace jaxkeops::cuda
