// CPU executor: evaluates a validated program over tiles of inner indices on all cores.
#pragma once

#include <cstdint>
#include <string>

#include "block_ranges.h"
#include "program.h"

namespace jaxkeops::cpu {

enum class ElementType { kF32, kF64, kS32, kS64 };

// One output of the reduction: (n_outer, width) row-major, values of the input dtype or indices.
struct OutputBuffer {
  void* data;
  ElementType type;
};

// inputs[k]: data of input k (outer/inner: (n, dim) row-major, param: (dim,)).
// outs[k]: output k of the reduction (reduction_outputs() gives their widths and kinds).
// Shapes and dtypes must have been checked against the program.
// ranges: null for a dense reduction, else the (checked) block-sparse ranges: only the listed
// blocks are visited.
// Returns false with *error set on an internal failure (e.g. out of memory).
template <class T>
bool execute(const Program& prog, const T* const* inputs, int64_t n_outer, int64_t n_inner,
             const OutputBuffer* outs, std::string* error, const BlockRanges* ranges = nullptr);

extern template bool execute<float>(const Program&, const float* const*, int64_t, int64_t,
                                    const OutputBuffer*, std::string*, const BlockRanges*);
extern template bool execute<double>(const Program&, const double* const*, int64_t, int64_t,
                                     const OutputBuffer*, std::string*, const BlockRanges*);

}  // namespace jaxkeops::cpu
