"""The compiled extension agrees with the Python tables and loads on the running jaxlib."""

import jaxlib

from jaxkeops import _native
from jaxkeops.ops import opcode_table
from jaxkeops.reductions import reduction_table


def test_opcode_tables_agree():
    assert dict(_native.cpu.opcode_table()) == opcode_table()


def test_reduction_tables_agree():
    assert dict(_native.cpu.reduction_table()) == reduction_table()


def test_built_ffi_api_is_not_newer_than_running():
    built = tuple(_native.cpu.ffi_api_version())
    running = _native._jaxlib_ffi_api_version(jaxlib.__version__)
    assert built[0] == running[0] and built[1] <= running[1]


def test_ffi_api_version_brackets():
    v = _native._jaxlib_ffi_api_version
    assert v("0.8.0") == (0, 1)
    assert v("0.8.1") == (0, 2) and v("0.9.0") == (0, 2)
    assert v("0.9.1") == (0, 3) and v("0.11.0") == (0, 3)
