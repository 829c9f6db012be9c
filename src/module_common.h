// What every jaxkeops extension module exports besides its handler: the native op and reduction
// tables (checked against Python's by the tests) and the FFI API / jaxlib it was built with.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>

#include "ops.h"
#include "reductions.h"
#include "xla/ffi/api/c_api.h"

#ifndef JAXKEOPS_JAXLIB_BUILD_VERSION
#define JAXKEOPS_JAXLIB_BUILD_VERSION "unknown"
#endif

namespace jaxkeops {

// Defines registrations() = {"jaxkeops_reduce": capsule of `handler`, "jaxkeops_fused": capsule
// of `fused_handler` (docs/fused-kernels.md) when given} for `platform`, and the shared tables
// and versions.
inline void define_module_common(nanobind::module_& m, void* handler, const char* platform,
                                 void* fused_handler = nullptr) {
  namespace nb = nanobind;
  m.def(
      "registrations",
      [handler, fused_handler] {
        nb::dict d;
        d["jaxkeops_reduce"] = nb::capsule(handler);
        if (fused_handler) d["jaxkeops_fused"] = nb::capsule(fused_handler);
        return d;
      },
      "FFI targets of this module: {name: PyCapsule of the handler}.");
  m.attr("platform") = platform;  // the XLA platform name to register the targets for

  m.def(
      "opcode_table",
      [] {
        nb::dict d;
        for (const OpInfo& info : kOpInfos) d[info.name] = info.code;
        return d;
      },
      "{KeOps op name: opcode} of the native executors.");

  m.def(
      "reduction_table",
      [] {
        nb::dict d;
        for (const ReductionInfo& info : kReductionInfos) d[info.name] = info.code;
        return d;
      },
      "{reduction name: code} of the native executors.");

  m.def(
      "ffi_api_version",
      [] { return std::make_pair(int(XLA_FFI_API_MAJOR), int(XLA_FFI_API_MINOR)); },
      "(major, minor) of the XLA FFI API headers this module was built with.");

  m.attr("jaxlib_build_version") = JAXKEOPS_JAXLIB_BUILD_VERSION;
}

}  // namespace jaxkeops
