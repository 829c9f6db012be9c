// The nanobind module jaxkeops._jaxkeops_cpu.
#include <nanobind/nanobind.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>

#include "cpu/thread_pool.h"
#include "ffi_cpu.h"
#include "ops.h"
#include "reductions.h"
#include "xla/ffi/api/c_api.h"

namespace nb = nanobind;

#ifndef JAXKEOPS_JAXLIB_BUILD_VERSION
#define JAXKEOPS_JAXLIB_BUILD_VERSION "unknown"
#endif

NB_MODULE(_jaxkeops_cpu, m) {
  m.doc() = "jaxkeops CPU executor (XLA FFI handlers and the native op/reduction tables)";

  m.def(
      "registrations",
      [] {
        nb::dict d;
        d["jaxkeops_reduce"] = nb::capsule(reinterpret_cast<void*>(&jaxkeops_reduce_cpu));
        return d;
      },
      "FFI targets of this module: {name: PyCapsule of the handler}, for platform \"cpu\".");

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

  m.def("num_threads", &jaxkeops::cpu::num_threads,
        "Threads the CPU executor uses (the caller plus its persistent pool).");
}
