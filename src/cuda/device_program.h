// The GPU form of a program and of one call, shared by the host handler (ffi_cuda.cc, g++) and
// the kernels (kernels.cuh, nvcc). Plain structs only: they travel to the device by value as
// kernel parameters (__grid_constant__), so no per-call host-to-device copy is needed and the
// launches can be captured into CUDA graphs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "block_ranges.h"

namespace jaxkeops::cuda {

// Bounds of the by-value call description (kernel parameters are limited to 4 KiB here).
inline constexpr int kMaxInputs = 64;     // operands of one call
inline constexpr int kMaxBatchRank = 4;   // batch dims resolved on the device (more: host loop)
inline constexpr int kMaxOutputs = 2;     // outputs of a reduction (value and index at most)
inline constexpr int kMaxResults = 2;     // result registers of a reduction
// Reducer state per output row, in doubles (KMin: 2 K D). Beyond it the call fails clearly.
inline constexpr int64_t kMaxStateDoubles = int64_t(1) << 14;

// Where a register lives: param registers in a per-batch-problem array, outer and pair
// registers in the thread's own file, inner registers in the block's j tile.
struct DevReg {
  int32_t role;
  int32_t dim;
  int32_t offset;  // first element within its storage
};

// One instruction, fixed size. Instructions are sorted by role (hoisting), program order kept.
struct DevInstr {
  int32_t opcode;
  int32_t out;
  int32_t n_args;
  int32_t args[3];
  int32_t ip0, ip1;  // first two int params (Var input, Pow n, Round d, OneHot D, Extract i/d)
  int32_t aux;       // Const: first value in `consts`; TensorDot: first term in `terms`
  int32_t n_aux;     // Const: count; TensorDot: number of (out, a, b) terms
};

// Inner indices one dispatched pair instruction runs over, per thread (the sub-tile).
inline constexpr int kSubTile = 16;
// Bytes of a thread's pair registers held in its own (local) memory: 16 float or 8 double
// elements per sub-tile lane. Programs with more pair elements keep them in the workspace.
inline constexpr int kPairLocalBytes = 1024;
template <class T>
inline constexpr int kPairLocalElems = kPairLocalBytes / (kSubTile * int(sizeof(T)));

// A register operand of a pair instruction, resolved on the host: its role, its first element
// within that role's storage and its dim.
struct PairArg {
  int32_t role;
  int32_t offset;
  int32_t dim;
};

// One pair-phase instruction, pre-decoded for the tile interpreter (copied to shared memory once
// per block). The output is always a pair register: `out` is its offset in the pair storage.
struct PairInstr {
  int32_t opcode;
  int32_t out, out_dim;
  int32_t n_args;
  PairArg args[3];
  int32_t ip0, ip1;  // Pow n, Round d, OneHot D, Extract / ExtractT i
  int32_t aux;       // TensorDot: first term in `terms`
  int32_t n_aux;     // TensorDot: number of (out, a, b) terms
};

// The decoded program on one device: pointers into one device allocation (see DeviceProgramCache).
struct DevProgram {
  const DevReg* regs;
  const DevInstr* instrs;     // param, outer and inner instructions (the scalar phases)
  const PairInstr* pair;      // pair instructions, in program order
  const int32_t* terms;   // TensorDot (out, a, b) index triples, sorted by out per instruction
  const double* consts;   // Const values
  int32_t phase_begin[5];  // instructions of role r are [phase_begin[r], phase_begin[r + 1])
  int32_t n_pair;          // pair instructions
  int32_t n_results;
  int32_t results[kMaxResults];
  PairArg result_args[kMaxResults];  // the result registers, resolved
  int32_t param_size;  // elements of the param storage
  int32_t file_size;   // elements of a thread's file (outer registers)
  int32_t inner_size;  // elements of one inner lane (inner registers)
  int32_t pair_size;   // elements of one sub-tile lane of the pair registers
};

enum class Family : int32_t { kSum = 0, kExpSum = 1, kMinMax = 2, kKMin = 3 };
enum class ExpKind : int32_t { kLogSumExp = 0, kLogSumExpWeight = 1, kSumSoftMaxWeight = 2 };
enum class Pick : int32_t { kValue = 0, kIndex = 1, kBoth = 2 };

// The reduction of a program, as the device reducers read it (reductions.h has the semantics).
struct DevReduction {
  int32_t family;   // Family
  int32_t kind;     // ExpKind for kExpSum
  int32_t pick;     // Pick for kMinMax and kKMin
  int32_t is_max;   // kMinMax
  int32_t dim;      // dim of result 0 (Sum, Min/Max, KMin)
  int32_t e;        // dim of the weight (result 1) for the weighted exp sums, else 1
  int32_t k;        // KMin's K
  int32_t state_size;  // doubles per output row
};

enum class OutType : int32_t { kValue = 0, kS32 = 1, kS64 = 2 };

struct DevOutput {
  void* data;      // (*batch, n_outer, width) row-major
  int64_t width;   // elements per output row
  int32_t type;    // OutType
};

// One launch: operands (already offset to the first problem of the launch), batch strides in
// elements over the device-resolved batch dims, outputs.
struct DevCall {
  const void* inputs[kMaxInputs];
  int64_t in_stride[kMaxInputs][kMaxBatchRank];
  int64_t batch_dims[kMaxBatchRank];
  int32_t batch_rank;
  int32_t n_outputs;
  int64_t batch_count;  // product of batch_dims
  int64_t n_outer, n_inner;
  DevOutput outs[kMaxOutputs];
  int32_t has_ranges;  // block-sparse: only `ranges` (device memory, shared by the batch) meet
  BlockRanges ranges;
};

// Grid shape and workspace of a launch (plan_launch fills it; the handler allocates `bytes`).
struct LaunchPlan {
  int32_t block = 128;      // threads per block = output rows per block
  int32_t tile = 128;       // inner indices per j tile
  int64_t grid = 1;         // resident blocks (work items are strided over them)
  int64_t row_blocks = 1;
  int64_t n_splits = 1;     // chunks of the inner axis (split reduction when > 1)
  int64_t range = 0;        // inner indices per chunk (a multiple of tile)
  int64_t n_items = 0;      // batch_count * row_blocks * n_splits
  bool inner_in_global = false;  // j tile too large for shared memory: in the workspace
  bool pair_in_global = false;   // pair registers above kPairLocalBytes: in the workspace
  size_t prog_smem = 0;     // shared memory of the pre-decoded pair program (16-aligned)
  size_t smem = 0;          // dynamic shared memory per block (program, then the j tile)
  // Workspace layout (byte offsets, 256-aligned) and total.
  size_t off_params = 0, off_file = 0, off_inner = 0, off_pair = 0, off_state = 0,
         off_partial = 0;
  size_t bytes = 0;
};

// State of small reducers lives in the thread (local memory); larger ones in the workspace.
inline constexpr int kLocalState = 32;

// Chooses the launch shape of a call (launch_plan.cc: shared by the CUDA module and the host
// emulation). Returns false with *error on an unsupported size.
bool plan_launch(const DevProgram& prog, const DevReduction& red, const DevCall& call,
                 int sm_count, size_t elem_size, LaunchPlan* plan, std::string* error);

// Enqueues the kernels of a call on `stream` (a cudaStream_t). Returns "" or the CUDA error.
template <class T>
std::string launch(const DevProgram& prog, const DevReduction& red, const DevCall& call,
                   const LaunchPlan& plan, void* workspace, void* stream);

extern template std::string launch<float>(const DevProgram&, const DevReduction&, const DevCall&,
                                          const LaunchPlan&, void*, void*);
extern template std::string launch<double>(const DevProgram&, const DevReduction&, const DevCall&,
                                           const LaunchPlan&, void*, void*);

}  // namespace jaxkeops::cuda
