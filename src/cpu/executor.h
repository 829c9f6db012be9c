// CPU executor: evaluates a validated program over tiles of inner indices on all cores.
#pragma once

#include <cstdint>
#include <string>

#include "program.h"

namespace jaxkeops::cpu {

// inputs[k]: data of input k (outer/inner: (n, dim) row-major, param: (dim,)).
// out: (n_outer, out_dim) row-major. Shapes must have been checked against the program.
// Returns false with *error set on an internal failure (e.g. out of memory).
template <class T>
bool execute(const Program& prog, const T* const* inputs, int64_t n_outer, int64_t n_inner,
             T* out, std::string* error);

extern template bool execute<float>(const Program&, const float* const*, int64_t, int64_t,
                                    float*, std::string*);
extern template bool execute<double>(const Program&, const double* const*, int64_t, int64_t,
                                     double*, std::string*);

}  // namespace jaxkeops::cpu
