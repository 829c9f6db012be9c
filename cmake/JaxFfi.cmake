# Finds the XLA FFI headers shipped with the jaxlib installed for ${Python_EXECUTABLE} and the
# jaxlib version. Sets:
#   XLA_FFI_INCLUDE_DIR     directory holding xla/ffi/api/ffi.h
#   JAXKEOPS_JAXLIB_VERSION version string of that jaxlib (recorded into the module)
# The module's handlers are built against these headers, so they match the FFI API of the jax
# installed beside the package (see DESIGN.md, "XLA FFI ABI").

if(NOT Python_EXECUTABLE)
  message(FATAL_ERROR "JaxFfi.cmake: find Python (Interpreter) first")
endif()

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "import jax.ffi; print(jax.ffi.include_dir())"
  OUTPUT_VARIABLE XLA_FFI_INCLUDE_DIR
  OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE _jk_ffi_rc
  ERROR_VARIABLE _jk_ffi_err)
if(NOT _jk_ffi_rc EQUAL 0 OR NOT EXISTS "${XLA_FFI_INCLUDE_DIR}/xla/ffi/api/ffi.h")
  message(FATAL_ERROR
    "jaxkeops: cannot find the XLA FFI headers via `import jax.ffi; jax.ffi.include_dir()` "
    "with ${Python_EXECUTABLE}: ${_jk_ffi_err}\n"
    "Install jax and jaxlib (>=0.9.1,<0.12) in the build environment.")
endif()

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "import jaxlib.version; print(jaxlib.version.__version__)"
  OUTPUT_VARIABLE JAXKEOPS_JAXLIB_VERSION
  OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE _jk_ver_rc)
if(NOT _jk_ver_rc EQUAL 0)
  set(JAXKEOPS_JAXLIB_VERSION "unknown")
endif()

message(STATUS "jaxkeops: XLA FFI headers: ${XLA_FFI_INCLUDE_DIR} (jaxlib ${JAXKEOPS_JAXLIB_VERSION})")
