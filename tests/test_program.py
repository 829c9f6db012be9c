"""The program compiler: CSE, hoisting by role, register reuse, and the C++ validator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkeops import Pm, Vi, Vj
from jaxkeops._native import REDUCE_TARGET
from jaxkeops.program import (
    ROLE_INNER, ROLE_OUTER, ROLE_PAIR, ROLE_PARAM, build_program, compile_program,
)


def _program(F, axis=1):
    cats = tuple(v.cat for v in F.variables)
    dims = tuple(v.array.shape[-1] for v in F.variables)
    return build_program((F.formula,), cats, dims, "Sum", (), axis)


def test_common_subexpressions_are_computed_once():
    x, y = Vi(np.ones((4, 3))), Vj(np.ones((5, 3)))
    d = x.sqdist(y)
    F = (-d).exp() * d + d  # d appears three times
    prog = _program(F)
    sqdist_count = sum(1 for ins in prog.instructions if ins.opcode == 16)
    assert sqdist_count == 1


def test_roles_hoist_i_only_and_j_only_work():
    x, y, s = Vi(np.ones((4, 3))), Vj(np.ones((5, 3))), Pm(np.ones(1))
    F = (x.sqnorm2() * s).exp() + (y.sqnorm2() / s).exp()  # exp of i-only and of j-only parts
    prog = _program(F, axis=1)
    role = {i: prog.registers[ins.out][0] for i, ins in enumerate(prog.instructions)}
    exps = [i for i, ins in enumerate(prog.instructions) if ins.opcode == 7]
    assert sorted(role[i] for i in exps) == [ROLE_OUTER, ROLE_INNER]
    add = [i for i, ins in enumerate(prog.instructions) if ins.opcode == 2]
    assert [role[i] for i in add] == [ROLE_PAIR]
    # reducing over i swaps outer and inner
    prog0 = _program(F, axis=0)
    roles0 = sorted(prog0.registers[prog0.instructions[i].out][0] for i in exps)
    assert roles0 == [ROLE_OUTER, ROLE_INNER]
    params = [ins for ins in prog.instructions if prog.registers[ins.out][0] == ROLE_PARAM]
    # the load of s, and 1/s once (normalisation turns the division by s into a product)
    assert [ins.opcode for ins in params] == [0, 1, 5]


def test_registers_are_reused_and_never_in_place():
    x, y = Vi(np.ones((4, 3))), Vj(np.ones((5, 3)))
    F = x - y
    for _ in range(10):
        F = (F * 0.5 + 1).exp()
    prog = _program(F)
    assert len(prog.registers) < len(prog.instructions) / 2
    for ins in prog.instructions:
        assert ins.out not in ins.args


def _call(program: bytes, x, n_inner=3):
    out = jax.ShapeDtypeStruct((x.shape[0], 1), x.dtype)
    return jax.ffi.ffi_call(REDUCE_TARGET, out)(x, program=program, n_inner=np.int64(n_inner))


def test_malformed_programs_are_errors_not_crashes(rng):
    x, y = Vi(np.ones((4, 1), np.float32)), Vj(np.ones((3, 1), np.float32))
    good = compile_program(((x - y).formula,), (0, 1), (1, 1), "Sum", (), 1)
    xs = jnp.ones((4, 1), jnp.float32)
    bad_programs = [b"", b"garbage", good[:-3], good[: len(good) // 2], good + b"\0\0\0\0"]
    for _ in range(30):
        mutated = bytearray(good)
        for _ in range(3):
            mutated[rng.integers(len(mutated))] = rng.integers(256)
        bad_programs.append(bytes(mutated))
    for program in bad_programs:
        try:
            out = _call(program, xs)
            out.block_until_ready()
        except Exception as e:  # a clean error status: what we want
            assert "jaxkeops" in str(e) or "program" in str(e).lower() or "operand" in str(e).lower()
        # mutations that stay valid may run: no crash is the point


def test_operand_count_mismatch_is_an_error():
    with pytest.raises(Exception, match=r"operand|input"):
        x, y = Vi(np.ones((4, 1), np.float32)), Vj(np.ones((3, 1), np.float32))
        good = compile_program(((x - y).formula,), (0, 1), (1, 1), "Sum", (), 1)
        _call(good, jnp.ones((4, 1), jnp.float32)).block_until_ready()
