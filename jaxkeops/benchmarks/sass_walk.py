"""Counting an interpreter's SASS instructions per pair by walking its code with known data.

The tile interpreter (src/cuda/tile_interpreter.h) has no straight-line inner loop: which code
runs per sub-tile depends on the program (a switch over each pair instruction's opcode, loops
over its dims, branches on which operands vary). sass.py's cheapest-path count does not apply;
this module follows the one path the kernel takes for a given program, as a hand walk would:

1. the SASS comes with line info (`nvdisasm -gi` of a module built with -lineinfo), so that
   each instruction knows its source line and the chain of inlined calls around it;
2. an evaluator (sass_eval.py) runs the integer part of the SASS along that path. Values are known
   integers, symbolic pointers (a register's value at the walk's start plus a known offset) or
   unknown (float data, addresses nobody needs). What it knows: the kernel parameters
   (DevProgram, DevReduction, DevCall, DevGrid in constant bank 0, filled from the program as
   host_program.h fills them), the pre-decoded pair instructions (`PairInstr` records, read
   through the pointer the dispatch loads them from), the jump tables of `BRX` (constant bank
   2) and the thread's local memory (its stores are remembered);
3. every conditional branch is decided from those values (the opcode compare tree, the jump
   table, the vary tests, the dim loops and their unrolled remainders); a branch on data (a new
   running maximum, a K-list insertion) is decided by a `Rule` naming its source line and the
   steady-state side (by a source line that side reaches first). A branch that neither
   decides raises `WalkError`: no made-up number;
4. the walk starts at the sub-tile loop's head (`pair_tile`, with l0 = 0 and a full j tile)
   and stops when it comes back: one sub-tile, every instruction issued on the way counted
   (predicated-off ones, BSSY/BSYNC and uniform ones included), divided by its kSubTile pairs.

Restricted to what the reference programs need (ops of the Gaussian sum, logsumexp, argKmin):
an instruction the evaluator does not know only makes its results unknown, which is harmless
unless a branch needs them, and then the walk fails loudly.
"""

from __future__ import annotations

import dataclasses
import heapq
import pathlib
import re
import subprocess
import tempfile

from jaxkeops.benchmarks import cuda_tools, sass
from jaxkeops.benchmarks.sass_eval import (  # noqa: F401  (WalkError: part of this API)
    MASK, Machine, Sym, WalkError, is_predicate, split_operands)
from jaxkeops.formula import CAT_I, CAT_J, Var
from jaxkeops.ops import OPS, apply_op
from jaxkeops.program import build_program

SUB_TILE = 16  # kSubTile (src/cuda/device_program.h): pairs per walked iteration
PARAM_BASE = 0x210  # sm_90: kernel parameters start at c[0x0][0x210]


# ---------------------------------------------------------------- SASS with line info

_CONTEXT = re.compile(r'File "([^"]+)", line (\d+)')
_CONST_SECTION = re.compile(r"^\s*\.nv\.constant2\.(\S+):")
_BYTES = re.compile(r"^\s*/\*[0-9a-fA-F]+\*/\s+\.byte\s+(.*)$")


@dataclasses.dataclass
class Kernel:
    code: list[sass.Instruction]
    # per instruction: its (file name, line) and those of the calls it is inlined in, innermost
    # first
    context: list[tuple[tuple[str, int], ...]]
    const2: bytes = b""
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # file name -> path seen

    def index_of_label(self) -> dict[str, int]:
        return {ins.label: k for k, ins in enumerate(self.code) if ins.label}


def parse_with_lines(text: str) -> dict[str, Kernel]:
    """Kernel (mangled name) -> code, source contexts and jump tables, from `nvdisasm -gi`
    output (without -c, so that the constant bank 2 sections are there)."""
    kernels: dict[str, Kernel] = {}
    current: Kernel | None = None
    pending: str | None = None
    context: tuple = ()
    building: list = []
    in_comment = False
    const_target: Kernel | None = None
    paths: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("//##"):
            if not in_comment:
                building = []
            m = _CONTEXT.search(stripped)
            if m:
                building.append((m.group(1).rsplit("/", 1)[-1], int(m.group(2))))
                paths[building[-1][0]] = m.group(1)
            context = tuple(building)
            in_comment = True
            continue
        in_comment = False
        if stripped.startswith(".section"):  # a jump table lasts until the next section
            const_target = None
        m = sass._SECTION.match(line)
        if m:
            current = kernels.setdefault(m.group(1), Kernel([], []))
            const_target, pending, context = None, None, ()
            continue
        m = _CONST_SECTION.match(line)
        if m:
            current = None
            const_target = kernels.setdefault(m.group(1), Kernel([], []))
            continue
        if const_target is not None:
            m = _BYTES.match(line)
            if m:
                const_target.const2 += bytes(int(b, 16) for b in m.group(1).split(","))
                continue
        m = sass._LABEL.match(line)
        if m:
            pending = m.group(1)
            continue
        m = sass._INSTRUCTION.match(line)
        if m and current is not None:
            offset, predicate, opcode, operands = m.groups()
            current.code.append(sass.Instruction(int(offset, 16), predicate or "", opcode,
                                                 operands.strip(), pending))
            current.context.append(context)
            pending = None
    for k in kernels.values():
        k.files = paths
    return {name: k for name, k in kernels.items() if k.code}


# ---------------------------------------------------------------- what the walk knows

@dataclasses.dataclass
class PairRecord:
    """One pre-decoded pair instruction (PairInstr of src/cuda/device_program.h)."""
    opcode: int
    out: int
    out_dim: int
    args: list[tuple[int, int, int]]  # (role, offset, dim), at most 3
    ip0: int = 0
    ip1: int = 0
    aux: int = 0
    n_aux: int = 0
    name: str = ""

    def words(self) -> list[int]:
        args = (self.args + [(0, 0, 0)] * 3)[:3]
        return [self.opcode, self.out, self.out_dim, len(self.args),
                *[v for a in args for v in a], self.ip0, self.ip1, self.aux, self.n_aux]


RECORD_BYTES = 17 * 4  # sizeof(PairInstr)


@dataclasses.dataclass
class Setup:
    """The data of one walked call: the pair program and the kernel parameters."""
    records: list[PairRecord]
    params: dict[int, int]  # byte offset in constant bank 0 -> known 32-bit word
    tile: int  # j per tile (the walk assumes a full one)
    pointers: dict[int, str] = dataclasses.field(default_factory=dict)  # offset -> name


class _Layout:
    """Byte offsets of the kernel parameters (C++ struct layout: natural alignment)."""

    def __init__(self, start: int):
        self.at = start
        self.words: dict[int, int] = {}
        self.pointers: dict[int, str] = {}

    def _align(self, n: int):
        self.at = (self.at + n - 1) // n * n

    def i32(self, *values: int):
        self._align(4)
        for v in values:
            self.words[self.at] = v & MASK
            self.at += 4

    def i64(self, *values: int):
        self._align(8)
        for v in values:
            self.words[self.at] = v & MASK
            self.words[self.at + 4] = (v >> 32) & MASK
            self.at += 8

    def ptr(self, name: str, count: int = 1, null: bool = False):
        self._align(8)
        for k in range(count):
            if null:
                self.words[self.at] = self.words[self.at + 4] = 0
            else:
                self.pointers[self.at] = f"{name}[{k}]" if count > 1 else name
            self.at += 8

    def end_struct(self):
        self._align(8)


def kernel_setup(program, reduction_family: int, state_size: int, dim: int, k: int = 1,
                 kind: int = 0, pick: int = 0, n: int = 1_000_000, tile: int = 128
                 ) -> Setup:
    """The pair records and kernel parameters of `program` (a jaxkeops.program.Program), as
    src/cuda/host_program.h and launch_plan.cc build them for an M = N = n call (one batch
    problem, no split, the pair program in shared memory)."""
    names = {spec.opcode: name for name, spec in OPS.items()}
    size = [0, 0, 0, 0]
    where = []
    for role, rdim in program.registers:
        where.append((role, size[role], rdim))
        size[role] += rdim
    roles = [[], [], [], []]
    for ins in program.instructions:
        roles[program.registers[ins.out][0]].append(ins)
    records = []
    for ins in roles[3]:
        role, off, odim = where[ins.out]
        records.append(PairRecord(ins.opcode, off, odim, [where[a] for a in ins.args],
                                  *(list(ins.int_params) + [0, 0])[:2],
                                  name=names.get(ins.opcode, str(ins.opcode))))
    phase, at = [], 0
    for r in range(4):
        phase.append(at)
        at += len(roles[r]) if r < 3 else 0
    phase.append(at)
    results = list(program.results)[:2]
    result_args = [where[r] for r in results] + [where[results[0]]] * (2 - len(results))
    lay = _Layout(PARAM_BASE)
    # DevProgram
    lay.ptr("p.regs"), lay.ptr("p.instrs"), lay.ptr("p.pair"), lay.ptr("p.terms")
    lay.ptr("p.consts")
    lay.i32(*phase, len(records), len(results), *(results + [0] * (2 - len(results))))
    for role, off, rdim in result_args:
        lay.i32(role, off, rdim)
    lay.i32(*size)
    lay.end_struct()
    # DevReduction
    lay.i32(reduction_family, kind, pick, 0, dim, 1, k, state_size)
    lay.end_struct()
    # DevCall
    lay.ptr("c.inputs", 64)
    lay.i64(*([0] * 64 * 4), *([1] + [0] * 3))  # in_stride, batch_dims
    outputs = {0: [0], 1: [1], 2: [0, 1]}[pick] if reduction_family >= 2 else [0]
    lay.i32(0, len(outputs))  # batch_rank, n_outputs
    lay.i64(1, n, n)  # batch_count, n_outer, n_inner
    for out_type in (outputs + [0])[:2]:  # DevOutput: data, width, type (value or int32)
        lay.ptr("c.outs.data")
        lay.i64(dim * k)
        lay.i32(out_type)
        lay.end_struct()
    lay.end_struct()
    # DevGrid
    lay.ptr("g.params"), lay.ptr("g.file"), lay.ptr("g.inner", null=True)
    lay.ptr("g.pair", null=True), lay.ptr("g.state"), lay.ptr("g.partial")
    row_blocks = (n + 127) // 128
    lay.i64(row_blocks, 1, n, row_blocks)  # row_blocks, n_splits, range, n_items
    lay.i32(tile, (len(records) * RECORD_BYTES + 15) // 16 * 16)  # tile, prog_smem
    # Driver constants: blockDim (128, 1, 1) and gridDim, as c[0x0][0x0..0x14].
    driver = {0x0: 128, 0x4: 1, 0x8: 1, 0xC: 132 * 16, 0x10: 1, 0x14: 1}
    return Setup(records, {**driver, **lay.words}, tile, dict(lay.pointers))


# ---------------------------------------------------------------- the walk

@dataclasses.dataclass
class Rule:
    """How to decide a branch on data the walk does not know (a float compare): the branch's
    source line (file name and a text found on that line) and the steady-state side, named by
    a text found on a source line that side reaches first: the successor with the shorter
    static path (in instructions, whatever the branches) to an instruction of such a line is
    taken. Layout-independent: it does not matter which side the compiler made the jump."""
    file: str
    line_text: str
    toward: str
    why: str
    innermost: bool = True  # match `toward` on the innermost line only, or on any inlined frame


class Walker:
    """Runs one kernel's SASS from a label with known data (see the module docstring)."""

    def __init__(self, kernel: Kernel, setup: Setup, sources: dict[str, list[str]],
                 rules: list[Rule] = ()):
        self.k = kernel
        self.setup = setup
        self.sources = sources  # file name -> its lines (for rules and function ranges)
        self.rules = list(rules)
        self.labels = kernel.index_of_label()
        self.by_offset = {ins.offset: k for k, ins in enumerate(kernel.code)}
        self.machine = Machine(setup.params, setup.pointers, kernel.const2, self._read_record)
        self.get, self.set = self.machine.get, self.machine.set
        self.records_base: str | None = None
        self.record_index: int | None = None  # the pair instruction being dispatched
        self.decisions: list[str] = []
        self._dispatch_lines = self._function_lines("tile_interpreter.h",
                                                    ("run_pair_subtile", "view_of"))

    # -- source helpers
    def _function_lines(self, file: str, names: tuple[str, ...]) -> set[int]:
        """Lines of the named functions' bodies (from their signature to the closing brace)."""
        lines = self.sources.get(file, [])
        found: set[int] = set()
        k = 0
        while k < len(lines):
            if any(re.search(rf"\b{n}\s*\(", lines[k]) for n in names) and \
                    not lines[k].lstrip().startswith("//") and "inline" in lines[k]:
                depth, started, j = 0, False, k
                while j < len(lines):
                    depth += lines[j].count("{") - lines[j].count("}")
                    started = started or "{" in lines[j]
                    found.add(j + 1)
                    if started and depth <= 0:
                        break
                    j += 1
                k = j
            k += 1
        return found

    def _line_text(self, file: str, line: int) -> str:
        lines = self.sources.get(file, [])
        return lines[line - 1] if 0 < line <= len(lines) else ""

    def _read_record(self, address: Sym, context):
        """A load through the pair program's pointer: a word of a PairInstr record. The pointer
        is the one the dispatch (run_pair_subtile, view_of) first loads through."""
        if self.records_base is None and context and context[0][0] == "tile_interpreter.h" \
                and context[0][1] in self._dispatch_lines:
            self.records_base = address.base
        if address.base != self.records_base:
            return None
        index, word = divmod(address.off, RECORD_BYTES)
        if not 0 <= index < len(self.setup.records) or word % 4:
            raise WalkError(f"a load from the pair program at byte {address.off} is outside "
                            f"its {len(self.setup.records)} records")
        self.record_index = index
        return self.setup.records[index].words()[word // 4] & MASK

    # -- the walk
    def decide(self, ins: sass.Instruction, index: int) -> bool:
        """Whether a branch is taken: its guard predicate and, in `@P0 BRA P3, target`, the
        second one must both hold."""
        guard, extra = _conditions(ins)
        taken = True if guard is None else self.get(guard)
        if extra is not None and taken is not False:
            e = self.get(extra)
            taken = False if e is False else (taken if e is True else None)
        if taken is not None:
            return taken
        context = self.k.context[index]
        for file, line in context[:1]:
            text = self._line_text(file, line)
            for rule in self.rules:
                if rule.file == file and rule.line_text in text:
                    return self._apply(rule, ins, index, f"{file}:{line}")
        where = " <- ".join(f"{f}:{ln}" for f, ln in context[:4]) or "no line info"
        raise WalkError(f"cannot decide the branch /*{ins.offset:04x}*/ {ins.predicate} "
                        f"{ins.opcode} {ins.operands} at {where} "
                        f"({self._line_text(*context[0]).strip() if context else ''!r}): its "
                        f"predicate depends on data the walk does not know")

    def _apply(self, rule: Rule, ins, index: int, where: str) -> bool:
        taken_at = self.labels.get(ins.target)
        if taken_at is None:
            raise WalkError(f"branch target of /*{ins.offset:04x}*/ not found")
        d_taken = self._distance(taken_at, rule)
        d_fall = self._distance(index + 1, rule)
        if d_taken == d_fall:
            raise WalkError(f"rule '{rule.why}' at {where} cannot tell the sides of "
                            f"/*{ins.offset:04x}*/ apart (both {d_taken} instructions from "
                            f"{rule.toward!r})")
        taken = d_taken < d_fall
        self.decisions.append(f"{where} {'taken' if taken else 'fallthrough'} ({rule.why})")
        return taken

    def _distance(self, start: int, rule: Rule, limit: int = 20_000) -> float:
        """Fewest instructions from `start` to one whose source line contains `rule.toward`,
        following every branch (a static search: no values)."""
        code, ctx = self.k.code, self.k.context
        best = {start: 0}
        queue = [(0, start)]
        while queue:
            dist, k = heapq.heappop(queue)
            if dist > best.get(k, limit) or k >= len(code):
                continue
            ins = code[k]
            # Only instructions that compute mark a line: a reconvergence point or a branch
            # carries the line info of whatever precedes it in the listing.
            frames = ctx[k][:1] if rule.innermost else ctx[k]
            if ins.base not in _CONTROL and \
                    any(rule.toward in self._line_text(*frame) for frame in frames):
                return dist
            nexts = []
            if ins.base in ("EXIT", "RET", "BRX", "JMX", "KILL"):
                nexts = []
            elif ins.base == "BRA":
                if ins.target in self.labels:
                    nexts.append(self.labels[ins.target])
                if _conditions(ins) != (None, None):
                    nexts.append(k + 1)
            else:
                nexts.append(k + 1)
            for n in nexts:
                if dist + 1 < best.get(n, limit):
                    best[n] = dist + 1
                    heapq.heappush(queue, (dist + 1, n))
        return float("inf")

    def run(self, start: int, stop: int, limit: int = 200_000,
            on_instruction=None) -> int:
        """Executes from instruction index `start` until control reaches index `stop`
        (after at least one instruction); returns the instructions issued."""
        k, count = start, 0
        code = self.k.code
        while True:
            if count and k == stop:
                return count
            if count > limit or k >= len(code):
                raise WalkError(f"the walk did not come back to /*{code[stop].offset:04x}*/ "
                                f"within {limit} instructions")
            ins = code[k]
            count += 1
            next_k = self._execute(ins, k)
            if on_instruction:  # after the instruction: a record load counts for its record
                on_instruction(k, ins)
            k = next_k

    def _execute(self, ins: sass.Instruction, k: int) -> int:
        """Runs instruction k; returns the index of the next one."""
        if ins.base in ("CALL", "RET", "EXIT", "JMP", "JMX", "KILL"):
            raise WalkError(f"{ins.opcode} at /*{ins.offset:04x}*/ on the walked path: "
                            f"not modelled")
        if ins.base == "BRX":
            return self._indirect(ins, k)
        if ins.base == "BRA":
            if not self.decide(ins, k):
                return k + 1
            if ins.target not in self.labels:
                raise WalkError(f"branch target of /*{ins.offset:04x}*/ not found")
            return self.labels[ins.target]
        self.machine.step(ins, self.k.context[k])
        return k + 1

    def _indirect(self, ins, k) -> int:
        ops = split_operands(ins.operands)
        parts = ops[0].split()
        value = self.get(parts[0])
        rel = int(parts[1], 16) if len(parts) > 1 and not parts[1].startswith("-") else \
            -int(parts[1][1:], 16) if len(parts) > 1 else 0
        if ins.conditional:
            guard = self.get(ins.predicate.lstrip("@"))
            if guard is False:
                return k + 1
            if guard is None:
                raise WalkError(f"cannot decide the guard of /*{ins.offset:04x}*/ BRX")
        if not isinstance(value, int):
            raise WalkError(f"cannot decide the jump table target of /*{ins.offset:04x}*/ "
                            f"BRX {parts[0]}: its index is not known")
        target = (value + rel + ins.offset + 16) & MASK
        if target not in self.by_offset:
            raise WalkError(f"BRX /*{ins.offset:04x}*/ jumps to /*{target:04x}*/, not an "
                            f"instruction")
        listed = re.search(r'BRANCH_TARGETS ([^"]*)"', ins.operands)
        label = self.k.code[self.by_offset[target]].label
        if listed and label not in listed.group(1).split(","):
            raise WalkError(f"BRX /*{ins.offset:04x}*/ jumps to /*{target:04x}*/, not one of "
                            f"the targets nvdisasm lists ({listed.group(1)})")
        self.decisions.append(f"BRX /*{ins.offset:04x}*/ -> /*{target:04x}*/")
        return self.by_offset[target]


def _conditions(ins: sass.Instruction) -> tuple[str | None, str | None]:
    """A branch's guard predicate (None: always) and second predicate operand, if any."""
    ops = split_operands(ins.operands)
    extra = ops[0] if ops and is_predicate(ops[0]) else None
    return (ins.predicate.lstrip("@") if ins.conditional else None), extra


_CONTROL = ("BSSY", "BSYNC", "BRA", "BRX", "NOP", "WARPSYNC", "BMOV", "BREAK", "EXIT", "RET",
            "JMP", "JMX")


# ---------------------------------------------------------------- one sub-tile of pair_tile

@dataclasses.dataclass
class SubTileCount:
    instructions: int  # issued in one steady-state sub-tile
    pairs: int  # pairs of that sub-tile (kSubTile)
    parts: dict[str, int]  # where they go: loop head, each pair instruction, reducer
    decisions: list[str]  # the jump tables taken and the rules applied
    head_offset: int

    @property
    def per_pair(self) -> float:
        return self.instructions / self.pairs


def _pair_tile_loop(kernel: Kernel, sources) -> tuple[int, int]:
    """(head, latch) instruction indices of pair_tile's sub-tile loop: the backward branch
    whose source line is thread_steps.h's `for (int l0 ...`."""
    lines = sources.get("thread_steps.h", [])
    wanted = {n + 1 for n, text in enumerate(lines) if re.search(r"for \(int l0\b", text)}
    labels = kernel.index_of_label()
    found = []
    for k, ins in enumerate(kernel.code):
        ctx = kernel.context[k]
        if ins.base == "BRA" and ins.target in labels and labels[ins.target] <= k and ctx and \
                ctx[0][0] == "thread_steps.h" and ctx[0][1] in wanted:
            found.append((labels[ins.target], k))
    if not found:
        raise WalkError("pair_tile's sub-tile loop (thread_steps.h `for (int l0`) not found: "
                        "is the module built with -lineinfo?")
    return found[0]


def _seed_loop_registers(kernel: Kernel, head: int, latch: int) -> tuple[str, str]:
    """The registers of l0 and nv: in the latch block, the one incremented by kSubTile and the
    one it is compared with."""
    l0 = nv = None
    for k in range(latch, max(head, latch - 12), -1):
        ins = kernel.code[k]
        ops = split_operands(ins.operands)
        if ins.base in ("VIADD", "IADD3") and len(ops) >= 3 and ops[0] == ops[1] and \
                ops[2] in (hex(SUB_TILE), str(SUB_TILE)):
            l0 = ops[0]
    for k in range(latch, max(head, latch - 12), -1):
        ins = kernel.code[k]
        ops = split_operands(ins.operands)
        if ins.base == "ISETP" and l0 in ops[2:4]:
            nv = ops[3] if ops[2] == l0 else ops[2]
    if l0 is None or nv is None:
        raise WalkError("cannot find l0 and nv in pair_tile's loop latch")
    return l0, nv


def _op_lists(ops_h: list[str]) -> dict[str, str]:
    """Op name -> the X-macro list of src/ops.h that declares it (e.g.
    JAXKEOPS_UNARY_ELEMENTWISE_OPS), for the ops whose switch cases one macro expands."""
    found, current = {}, None
    for text in ops_h:
        m = re.match(r"#define (JAXKEOPS_\w+_OPS)\(X\)", text)
        if m:
            current = m.group(1)
            continue
        m = re.match(r"\s*X\((\w+),", text)
        if m and current:
            found[m.group(1)] = current
        elif not text.rstrip().endswith("\\"):
            current = None
    return found


def _check_op_code_ran(setup: Setup, seen: dict[int, set], sources) -> None:
    """Each pair instruction's part of the walk must go through its op's case of the switch
    (the run_pair_subtile line naming `Op::<name>`, or the X-macro list that expands it) and
    through no other op's functor (`struct <name>` lines of ops.h). A wrong turn in the
    dispatch would fail here instead of counting another op's code."""
    ops_h = sources.get("ops.h", [])
    interp = sources.get("tile_interpreter.h", [])
    lists = _op_lists(ops_h)
    functors = {("ops.h", n + 1): m.group(1) for n, text in enumerate(ops_h)
                if (m := re.match(r"\s*struct (\w+) \{", text))}
    for index, rec in enumerate(setup.records):
        case_lines = {("tile_interpreter.h", n + 1) for n, text in enumerate(interp)
                      if re.search(rf"\bOp::{rec.name}\b", text)
                      or (rec.name in lists and lists[rec.name] + "(" in text)}
        here = seen.get(index, set())
        others = {functors[c] for c in here if c in functors} - {rec.name}
        if not case_lines & here or others:
            raise WalkError(f"the walk of pair instruction {index} ({rec.name}) "
                            + (f"ran the code of {sorted(others)}" if others else
                               "never went through its case of the switch")
                            + ": a wrong turn in the dispatch")


def walk_sub_tile(kernel: Kernel, setup: Setup, sources: dict[str, list[str]],
                  rules: list[Rule] = ()) -> SubTileCount:
    """Instructions the kernel issues for one steady-state sub-tile of a full j tile: the
    first sub-tile (l0 = 0) and the second are walked; they must agree."""
    head, latch = _pair_tile_loop(kernel, sources)
    l0, nv = _seed_loop_registers(kernel, head, latch)
    walker = Walker(kernel, setup, sources, rules)
    walker.set(l0, 0)
    walker.set(nv, setup.tile)
    dispatch = walker._function_lines("tile_interpreter.h", ("run_pair_subtile",))
    counts: list[int] = []
    parts: dict[str, int] = {}  # where the instructions of the sub-tile go
    seen: dict[int, set] = {}  # the source lines each pair instruction's part ran
    for _ in range(2):
        parts.clear()
        seen.clear()

        def account(k, ins):
            ctx = kernel.context[k]
            in_dispatch = any(f == "tile_interpreter.h" and ln in dispatch for f, ln in ctx)
            if in_dispatch and walker.record_index is not None:
                rec = setup.records[walker.record_index]
                label = f"{walker.record_index}: {rec.name}"
                seen.setdefault(walker.record_index, set()).update(ctx)
            elif walker.record_index is None:
                label = "loop head"
            else:
                label = "reducer and loop back"
            parts[label] = parts.get(label, 0) + 1

        walker.record_index = None
        counts.append(walker.run(head, head, on_instruction=account))
        _check_op_code_ran(setup, seen, sources)
    if counts[0] != counts[1]:
        raise WalkError(f"the first two sub-tiles issue {counts[0]} and {counts[1]} "
                        f"instructions: not a steady state")
    return SubTileCount(counts[1], SUB_TILE, dict(parts), walker.decisions,
                        kernel.code[head].offset)


# ---------------------------------------------------------------- the reference workloads

# The interpreter kernel of each reference workload, and its reduction as host_program.h
# describes it (family, reduction name and parameters, state doubles, K, pick).
INTERPRETER_KERNELS = {"gaussian": "SumOps", "logsumexp": "ExpSumOps", "argkmin": "KMinOps"}

# Branches on data (float values the walk does not know), decided for the steady state of a
# long reduction: the running maximum of a logsumexp rarely moves, and a K-min list rarely takes
# a new entry. Each names its source line; a branch on data that no rule names fails the walk.
STEADY_STATE_RULES: list[Rule] = [
    # ExpSumOps::accumulate (src/cuda/reducers.cuh)
    Rule("reducers.cuh", "if (st[0] == inf) return;", "mx = x > mx ? x : mx;",
         "the row is not already +inf"),
    Rule("reducers.cuh", "if (mx == tinf) {", "if (static_cast<double>(mx) > st[0]) {",
         "no +inf score"),
    Rule("reducers.cuh", "if (static_cast<double>(mx) > st[0]) {",
         "const T m = static_cast<T>(st[0]);", "the running maximum does not move"),
    Rule("reducers.cuh", "w[s] = keep[s] ? opfn::exp_(", "return exp(a);",
         "no -inf score: every lane takes its exp", innermost=False),
    # KMinOps::insert
    Rule("reducers.cuh", "if (x != x) return;", "if (idx[K - 1] >= 0",
         "no NaN candidate"),
    Rule("reducers.cuh", "if (idx[K - 1] >= 0 && !(x < vals[K - 1])) return;",
         "for (int d = 0; d < r.dim; ++d) insert(",
         "the K-list is full and the candidate is no better: no insertion"),
]


def reference_setup(case: str, n: int = 1_000_000) -> Setup:
    """The kernel data of a reference workload (float32, D = 3), its program built by the real
    compiler (jaxkeops.program, normalisation included)."""

    x, y, b = Var(0, 3, CAT_I), Var(1, 3, CAT_J), Var(2, 1, CAT_J)
    sqdist = apply_op("SqDist", (x, y))
    if case == "gaussian":
        formula = apply_op("Mult", (apply_op("Exp", (apply_op("Minus", (sqdist,)),)), b))
        prog = build_program((formula,), (CAT_I, CAT_J, CAT_J), (3, 3, 1), "Sum", (), 1)
        return kernel_setup(prog, 0, state_size=1, dim=1, n=n)
    if case == "logsumexp":
        formula = apply_op("Minus", (sqdist,))
        prog = build_program((formula,), (CAT_I, CAT_J), (3, 3), "LogSumExp", (), 1)
        return kernel_setup(prog, 1, state_size=2, dim=1, kind=0, n=n)
    if case == "argkmin":
        prog = build_program((sqdist,), (CAT_I, CAT_J), (3, 3), "ArgKMin", (10,), 1)
        return kernel_setup(prog, 3, state_size=20, dim=1, k=10, pick=1, n=n)
    raise ValueError(f"unknown reference workload {case!r}; expected one of "
                     f"{sorted(INTERPRETER_KERNELS)}")


def _sources(kernel: Kernel) -> dict[str, list[str]]:
    """The source files named by the line info: where the build saw them, else this
    checkout's src/ (by file name)."""
    root = pathlib.Path(__file__).resolve().parents[2] / "src"
    found = {}
    for name, path in kernel.files.items():
        for candidate in (pathlib.Path(path), *sorted(root.rglob(name))):
            if candidate.is_file():
                found[name] = candidate.read_text().splitlines()
                break
    return found


def interpreter_counts(disassembly: str, cases=tuple(INTERPRETER_KERNELS)
                       ) -> dict[str, SubTileCount | str]:
    """Per reference workload: the walked count of `reduce_kernel<float, Ops>` in an
    `nvdisasm -gi` listing, or why there is none (a sentence starting with CHECK)."""
    kernels = parse_with_lines(disassembly)
    names = cuda_tools.demangle(list(kernels))
    result: dict[str, SubTileCount | str] = {}
    for case in cases:
        ops = INTERPRETER_KERNELS[case]
        pattern = re.compile(rf"reduce_kernel<float, (?:[\w:]+::)?{ops}>")
        matches = [m for m, d in names.items() if pattern.search(d)]
        if not matches:
            result[case] = f"CHECK: no reduce_kernel<float, {ops}> in the module"
            continue
        kernel = kernels[matches[0]]
        if not any(kernel.context):
            result[case] = ("CHECK: the module has no line info (build it with -lineinfo, as "
                            "cmake/JaxkeopsCuda.cmake does)")
            continue
        try:
            result[case] = walk_sub_tile(kernel, reference_setup(case), _sources(kernel),
                                         STEADY_STATE_RULES)
        except WalkError as e:
            result[case] = f"CHECK: walk failed: {e}"
    return result


def module_interpreter_counts(nvdisasm: str, cuobjdump: str, module: str,
                              cases=tuple(INTERPRETER_KERNELS), arch: str = "sm_90"
                              ) -> dict[str, SubTileCount | str]:
    """interpreter_counts of a built module (or of one cubin)."""

    with tempfile.TemporaryDirectory(prefix="jaxkeops_sass_walk_") as folder:
        cubins = [module] if module.endswith(".cubin") else \
            cuda_tools.extract_cubins(cuobjdump, module, arch, folder)
        result: dict[str, SubTileCount | str] = {
            c: f"CHECK: {module} holds no {arch} code" for c in cases}
        for cubin in cubins:
            if all(isinstance(result[c], SubTileCount) for c in cases):
                break
            text = disassemble_with_lines(nvdisasm, cubin)
            for case, count in interpreter_counts(text, cases).items():
                if not isinstance(result.get(case), SubTileCount):
                    result[case] = count
    return result


def disassemble_with_lines(nvdisasm: str, cubin: str) -> str:
    """`nvdisasm -gi` of a cubin: code with inlined-call line info, and the constant bank 2
    sections (jump tables)."""
    return subprocess.run([nvdisasm, "-gi", cubin], capture_output=True, text=True,
                          check=True).stdout
