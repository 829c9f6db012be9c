# The CUDA executor: module jaxkeops._jaxkeops_cuda (src/cuda/), built when nvcc is found.
# Included from CMakeLists.txt only when JAXKEOPS_CUDA is ON, so CPU-only builds never enable
# the CUDA language.
#
# Options (pass with pip: --config-settings=cmake.define.NAME=VALUE, or CMAKE_ARGS):
#   CMAKE_CUDA_ARCHITECTURES  default "80-real;90-real;90-virtual": SASS for A100 and H100,
#                             PTX of sm_90 that the driver JIT-compiles for newer GPUs.
#   JAXKEOPS_CUDA=OFF         skip the CUDA module even when nvcc is present.

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES "80-real;90-real;90-virtual")
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)

nanobind_add_module(_jaxkeops_cuda NB_STATIC
  src/cuda/module_cuda.cc
  src/cuda/ffi_cuda.cc
  src/cuda/launch_plan.cc
  src/cuda/executor_f32.cu
  src/cuda/executor_f64.cu
  src/cuda/ffi_fused_cuda.cc
  src/cuda/fused.cu)
target_include_directories(_jaxkeops_cuda PRIVATE
  "${CMAKE_CURRENT_SOURCE_DIR}/src"
  "${XLA_FFI_INCLUDE_DIR}")
target_compile_definitions(_jaxkeops_cuda PRIVATE
  JAXKEOPS_JAXLIB_BUILD_VERSION="${JAXKEOPS_JAXLIB_VERSION}")
# No fast-math on either side: inf/nan must behave as on CPU. -lineinfo (source lines of the
# device code, no effect on the generated code) lets the static benchmark walk the tile
# interpreter's SASS by source line (jaxkeops/benchmarks/sass_walk.py) and profilers map it.
target_compile_options(_jaxkeops_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CXX>:-O3 -fno-math-errno>
  $<$<COMPILE_LANGUAGE:CUDA>:-O3 --expt-relaxed-constexpr -lineinfo>)
# Static runtime: importing the module needs neither libcudart on the loader path nor a GPU
# (the driver is only loaded on the first CUDA call, when a kernel runs).
target_link_libraries(_jaxkeops_cuda PRIVATE CUDA::cudart_static)
install(TARGETS _jaxkeops_cuda LIBRARY DESTINATION jaxkeops)
message(STATUS "jaxkeops: CUDA executor enabled (${CMAKE_CUDA_COMPILER}, "
               "architectures ${CMAKE_CUDA_ARCHITECTURES})")
