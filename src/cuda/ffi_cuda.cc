// The XLA FFI handler "jaxkeops_reduce" for platform "CUDA".
//
// Host side of the CUDA executor: decodes the program (program.h, cached), keeps one device copy
// of its compact form per device (DeviceProgramCache), checks the buffers exactly as the CPU
// handler does, and enqueues the kernels (executor.cu) on XLA's stream with workspace from XLA's
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
#include "program.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxkeops::cuda {
namespace {

// A decoded program, its compact device form (host copy) and its reduction description.
struct HostProgram {
  Program prog;
  DevProgram layout{};            // pointers are offsets into `blob` until uploaded
  std::vector<char> blob;         // regs | instrs | terms | consts
  size_t off_regs = 0, off_instrs = 0, off_terms = 0, off_consts = 0;
  DevReduction red{};
  std::vector<OutputInfo> outputs;
};

size_t align8(size_t n) { return (n + 15) / 16 * 16; }

template <class U>
void append(std::vector<char>* blob, size_t at, const std::vector<U>& v) {
  if (!v.empty()) std::memcpy(blob->data() + at, v.data(), v.size() * sizeof(U));
}

// Builds the compact form of a validated program.
bool build_host_program(HostProgram* hp, std::string* error) {
  const Program& prog = hp->prog;
  DevProgram& L = hp->layout;
  std::vector<DevReg> regs(prog.registers.size());
  int64_t size[4] = {0, 0, 0, 0};  // param | file (outer + pair) | inner
  for (size_t r = 0; r < regs.size(); ++r) {
    const RegisterSpec& spec = prog.registers[r];
    const int storage = spec.role == kPair ? kOuter : spec.role;
    regs[r] = {spec.role, spec.dim, int32_t(size[storage])};
    size[storage] += spec.dim;
  }
  if (size[kParam] > INT32_MAX || size[kOuter] > INT32_MAX || size[kInner] > INT32_MAX) {
    *error = "jaxkeops CUDA executor: the program's registers are too large";
    return false;
  }
  L.param_size = int32_t(size[kParam]);
  L.file_size = int32_t(size[kOuter]);
  L.inner_size = int32_t(size[kInner]);

  std::vector<DevInstr> instrs;
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
      instrs.push_back(d);
    }
  }
  L.phase_begin[4] = int32_t(instrs.size());
  if (prog.results.size() > size_t(kMaxResults)) {
    *error = "jaxkeops CUDA executor: more than 2 result registers";
    return false;
  }
  L.n_results = int32_t(prog.results.size());
  for (size_t k = 0; k < prog.results.size(); ++k) L.results[k] = prog.results[k];

  hp->off_regs = 0;
  hp->off_instrs = align8(regs.size() * sizeof(DevReg));
  hp->off_terms = hp->off_instrs + align8(instrs.size() * sizeof(DevInstr));
  hp->off_consts = hp->off_terms + align8(terms.size() * sizeof(int32_t));
  hp->blob.assign(std::max<size_t>(hp->off_consts + consts.size() * sizeof(double), 16), 0);
  append(&hp->blob, hp->off_regs, regs);
  append(&hp->blob, hp->off_instrs, instrs);
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
    *on_device = hp->layout;
    on_device->regs = reinterpret_cast<const DevReg*>(base + hp->off_regs);
    on_device->instrs = reinterpret_cast<const DevInstr*>(base + hp->off_instrs);
    on_device->terms = reinterpret_cast<const int32_t*>(base + hp->off_terms);
    on_device->consts = reinterpret_cast<const double*>(base + hp->off_consts);
    return hp;
  }

 private:
  std::mutex mu_;
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
  const ffi::DataType dtype = layout.dtype;
  const int64_t n_outer = layout.n_outer;
  const std::vector<int64_t>& batch_dims = layout.batch_dims;
  const BatchLayout& batch = layout.batch;
  const std::vector<const char*>& data = layout.inputs;
  DevCall call{};
  std::vector<int64_t> out_elem(infos.size());
  for (size_t k = 0; k < infos.size(); ++k) {
    const ffi::DataType t = layout.out_types[k];
    call.outs[k].type = int32_t(infos[k].is_index
                                    ? (t == ffi::DataType::S32 ? OutType::kS32 : OutType::kS64)
                                    : OutType::kValue);
    call.outs[k].data = layout.outputs[k];
    call.outs[k].width = infos[k].width();
    out_elem[k] = layout.out_elem_bytes[k];
  }
  if (n_outer == 0 || batch.count() == 0) return ffi::Error::Success();

  // The trailing (up to kMaxBatchRank) batch dims are resolved on the device; any leading ones
  // by one launch each (rare: vmap nested more than four deep).
  const size_t rank = batch.rank();
  const size_t dev_rank = std::min(rank, size_t(kMaxBatchRank));
  const size_t host_rank = rank - dev_rank;
  int64_t host_count = 1, dev_count = 1;
  for (size_t d = 0; d < host_rank; ++d) host_count *= batch_dims[d];
  for (size_t d = host_rank; d < rank; ++d) dev_count *= batch_dims[d];
  call.batch_rank = int32_t(dev_rank);
  call.batch_count = dev_count;
  call.n_outer = n_outer;
  call.n_inner = layout.n_inner;
  call.n_outputs = int32_t(infos.size());
  for (size_t d = 0; d < dev_rank; ++d) call.batch_dims[d] = batch_dims[host_rank + d];
  // Element stride of batch dim d for operand k: the offset of the flat index with a 1 there.
  for (size_t k = 0; k < args.size(); ++k) {
    int64_t unit = 1;
    for (size_t d = dev_rank; d-- > 0;) {
      call.in_stride[k][d] = batch_dims[host_rank + d] == 1 ? 0 : batch.offset(k, unit);
      unit *= batch_dims[host_rank + d];
    }
  }

  const size_t width = dtype == ffi::DataType::F32 ? sizeof(float) : sizeof(double);
  int sm_count = 1;
  cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device);
  LaunchPlan plan;
  if (!plan_launch(dprog, hp->red, call, sm_count, width, &plan, &error)) return invalid(error);
  std::optional<void*> ws = scratch.Allocate(plan.bytes, 256);
  if (!ws) return ffi::Error::Internal("jaxkeops CUDA executor: cannot allocate " +
                                       std::to_string(plan.bytes) + " bytes of workspace");

  for (int64_t h = 0; h < host_count; ++h) {
    DevCall c = call;
    const int64_t first = h * dev_count;  // flat batch index of this launch's first problem
    for (size_t k = 0; k < args.size(); ++k) c.inputs[k] = data[k] + batch.offset(k, first) * width;
    for (size_t k = 0; k < infos.size(); ++k)
      c.outs[k].data = static_cast<char*>(call.outs[k].data) +
                       first * n_outer * infos[k].width() * out_elem[k];
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
