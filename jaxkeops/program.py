"""Compile formulas into the register program the native executors run (docs/program-format.md).

Steps: normalisation (jaxkeops/normalize.py: one canonical form for the many ways of writing a
formula), common-subexpression elimination (free: equal nodes are equal keys), a role for every
value (param / outer / inner / pair, so that i-only and j-only work is hoisted out of the pair
loop), register allocation (a register is reused once its value is dead), serialisation.
"""

from __future__ import annotations

import dataclasses
import functools
import struct

from jaxkeops.formula import CAT_I, CAT_J, CAT_P, Const, Node, Var, walk
from jaxkeops.normalize import normalize_formulas
from jaxkeops.ops import OPCODE_CONST, OPCODE_VAR, OPS, tensordot_labels
from jaxkeops.reductions import REDUCTIONS

MAGIC = b"JKP1"
VERSION = 1

ROLE_PARAM, ROLE_OUTER, ROLE_INNER, ROLE_PAIR = 0, 1, 2, 3


def _join_roles(a: int, b: int) -> int:
    """The role of a value computed from values of roles a and b."""
    if a == b or b == ROLE_PARAM:
        return a
    if a == ROLE_PARAM:
        return b
    return ROLE_PAIR  # outer with inner, or anything with pair


def category_role(cat: int, axis: int) -> int:
    """Role of a variable category when reducing over `axis` (1: over j, 0: over i)."""
    if cat == CAT_P:
        return ROLE_PARAM
    reduced_cat = CAT_J if axis == 1 else CAT_I
    return ROLE_INNER if cat == reduced_cat else ROLE_OUTER


@dataclasses.dataclass(frozen=True)
class Instruction:
    opcode: int
    out: int
    args: tuple[int, ...]
    int_params: tuple[int, ...] = ()
    float_params: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class Program:
    reduction_code: int
    reduction_params: tuple[int, ...]
    inputs: tuple[tuple[int, int], ...]  # (role, dim) per operand
    registers: tuple[tuple[int, int], ...]  # (role, dim) per register
    instructions: tuple[Instruction, ...]
    results: tuple[int, ...]

    def serialize(self) -> bytes:
        out = bytearray(MAGIC)

        def ints(*values):
            out.extend(struct.pack(f"<{len(values)}i", *values))

        ints(VERSION, self.reduction_code, len(self.reduction_params), *self.reduction_params)
        ints(len(self.inputs))
        for role, dim in self.inputs:
            ints(role, dim)
        ints(len(self.registers))
        for role, dim in self.registers:
            ints(role, dim)
        ints(len(self.instructions))
        for ins in self.instructions:
            ints(ins.opcode, ins.out, len(ins.args), *ins.args)
            ints(len(ins.int_params), *ins.int_params)
            ints(len(ins.float_params))
            out.extend(struct.pack(f"<{len(ins.float_params)}d", *ins.float_params))
        ints(len(self.results), *self.results)
        return bytes(out)


def _split_params(params: tuple) -> tuple[tuple[int, ...], tuple[float, ...]]:
    ints = tuple(int(p) for p in params if isinstance(p, int))
    floats = tuple(float(p) for p in params if isinstance(p, float))
    return ints, floats


# TensorDot terms (products) of one program, in all: the native decoder's limit
# (TensorDotSpec::kMaxTerms in src/ops.h, checked for the whole program in src/program.h).
MAX_TENSORDOT_TERMS = 1 << 24


def _check_tensordot_terms(nodes) -> None:
    """Fail at trace time, not in the kernel, when the TensorDot tables would be too large."""
    total = 0
    for node in nodes:
        if isinstance(node, Var) or isinstance(node, Const) or node.name != "TensorDot":
            continue
        la, lb, lout, size = tensordot_labels(node.params)
        terms = node.dim
        for label in set(la) & set(lb):
            terms *= size[label]
        total += terms
    if total > MAX_TENSORDOT_TERMS:
        raise ValueError(
            f"the formula's TensorDots have {total} terms (products) in all; the kernels' "
            f"limit is {MAX_TENSORDOT_TERMS}"
        )


def build_program(
    formulas: tuple[Node, ...],
    var_cats: tuple[int, ...],
    var_dims: tuple[int, ...],
    reduction: str,
    reduction_params: tuple[int, ...],
    axis: int,
) -> Program:
    inputs = tuple((category_role(c, axis), d) for c, d in zip(var_cats, var_dims))
    formulas = normalize_formulas(formulas)
    order = list(walk(formulas))  # children first; equal subformulas appear once (CSE)
    _check_tensordot_terms(order)

    role: dict[Node, int] = {}
    for node in order:
        if isinstance(node, Var):
            role[node] = inputs[node.index][0]
        elif isinstance(node, Const):
            role[node] = ROLE_PARAM
        else:
            r = ROLE_PARAM
            for a in node.args:
                r = _join_roles(r, role[a])
            role[node] = r

    # A register is reused once its value is dead. Executors run the instructions grouped by
    # role (param, outer, inner, pair), so a value read by an instruction of another role must
    # stay live for the whole program: only values read within their own role are freed.
    last_use: dict[Node, int] = {}
    for step, node in enumerate(order):
        for a in node.children():
            pinned = last_use.get(a) == len(order) or role[node] != role[a]
            last_use[a] = len(order) if pinned else step
    for f in formulas:
        last_use[f] = len(order)  # results stay live to the end

    registers: list[tuple[int, int]] = []
    free: dict[tuple[int, int], list[int]] = {}
    reg_of: dict[Node, int] = {}
    instructions = []
    for step, node in enumerate(order):
        key = (role[node], node.dim)
        pool = free.get(key)
        if pool:
            reg = pool.pop()
        else:
            reg = len(registers)
            registers.append(key)
        reg_of[node] = reg
        if isinstance(node, Var):
            instructions.append(Instruction(OPCODE_VAR, reg, (), (node.index,)))
        elif isinstance(node, Const):
            instructions.append(Instruction(OPCODE_CONST, reg, (), (), node.values))
        else:
            ints, floats = _split_params(node.params)
            args = tuple(reg_of[a] for a in node.args)
            instructions.append(Instruction(OPS[node.name].opcode, reg, args, ints, floats))
        # Free the arguments whose last use is this instruction (after choosing the output
        # register, so an instruction never writes over its own arguments).
        for a in set(node.children()):
            if last_use[a] == step:
                free.setdefault((role[a], a.dim), []).append(reg_of[a])

    spec = REDUCTIONS[reduction]
    return Program(
        reduction_code=spec.code,
        reduction_params=tuple(reduction_params),
        inputs=inputs,
        registers=tuple(registers),
        instructions=tuple(instructions),
        results=tuple(reg_of[f] for f in formulas),
    )


@functools.lru_cache(maxsize=4096)
def compile_program(
    formulas: tuple[Node, ...],
    var_cats: tuple[int, ...],
    var_dims: tuple[int, ...],
    reduction: str,
    reduction_params: tuple[int, ...],
    axis: int,
) -> bytes:
    """The serialised program for one reduction call (cached: formulas are hashable)."""
    return build_program(formulas, var_cats, var_dims, reduction, reduction_params, axis).serialize()
