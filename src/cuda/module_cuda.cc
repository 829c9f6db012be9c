// The nanobind module jaxkeops._jaxkeops_cuda. Importing it needs no GPU: it only hands the
// handler to XLA; the CUDA runtime is linked statically and touches the driver on first use.
#include <nanobind/nanobind.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>

#include "cuda/ffi_cuda.h"
#include "ops.h"
#include "reductions.h"
#include "xla/ffi/api/c_api.h"

namespace nb = nanobind;

#ifndef JAXKEOPS_JAXLIB_BUILD_VERSION
#define JAXKEOPS_JAXLIB_BUILD_VERSION "unknown"
#endif

NB_MODULE(_jaxkeops_cuda, m) {
  m.doc() = "jaxkeops CUDA executor (XLA FFI handlers and the native op/reduction tables)";

  m.def(
      "registrations",
      [] {
        nb::dict d;
        d["jaxkeops_reduce"] = nb::capsule(reinterpret_cast<void*>(&jaxkeops_reduce_cuda));
        return d;
      },
      "FFI targets of this module: {name: PyCapsule of the handler}, for platform \"CUDA\".");

  m.def(
      "opcode_table",
      [] {
        nb::dict d;
        for (const jaxkeops::OpInfo& info : jaxkeops::kOpInfos) d[info.name] = info.code;
        return d;
      },
      "{KeOps op name: opcode} of the native executors.");

  m.def(
      "reduction_table",
      [] {
        nb::dict d;
        for (const jaxkeops::ReductionInfo& info : jaxkeops::kReductionInfos)
          d[info.name] = info.code;
        return d;
      },
      "{reduction name: code} of the native executors.");

  m.def(
      "ffi_api_version",
      [] { return std::make_pair(int(XLA_FFI_API_MAJOR), int(XLA_FFI_API_MINOR)); },
      "(major, minor) of the XLA FFI API headers this module was built with.");

  m.attr("jaxlib_build_version") = JAXKEOPS_JAXLIB_BUILD_VERSION;
}
