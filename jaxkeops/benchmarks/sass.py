"""Counting the machine instructions of a GPU kernel's steady-state inner loop, statically.

Input: the text `nvdisasm -c` prints for a cubin (SASS, one `/*offset*/ [@pred] OPCODE ... ;`
per instruction, labels `.L_x_N:`, one `.text.<kernel>:` section per kernel). Method:

1. split each kernel into basic blocks at labels and after branches;
2. a loop is a branch to a label at or before the branch (a backward branch); its body is the
   address range [label, branch];
3. the steady-state inner loop is, among the loops whose cheapest path (4.) runs no other loop,
   the one that reads the most distinct bytes of shared memory per iteration (the j-tile's data,
   staged in shared memory by KeOps's kernels and by ours);
4. one iteration is the cheapest path through the body's blocks from the label to the backward
   branch (every instruction on it counted, predicated-off ones, BSSY/BSYNC and uniform-datapath
   ones included: each takes an issue slot). Rare work (inserting into a K-list, rescaling a
   running maximum) sits on the longer branches; the longest path is reported beside it;
5. pairs per iteration = j per iteration × rows per thread: j from the distinct shared-memory
   bytes read on that path over the bytes one j takes, rows from how many times each value
   loaded from shared memory is read before it is overwritten (each y_j component serves every
   output row of the thread once).
"""

from __future__ import annotations

import dataclasses
import re

_INSTRUCTION = re.compile(
    r"^\s*/\*([0-9a-fA-F]{4,})\*/\s+(?:\{\s*)?(@!?U?P(?:T|\d))?\s*([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_LABEL = re.compile(r"^\s*(\.L_\w+):")
_SECTION = re.compile(r"^\s*\.text\.(\S+):")
_TARGET = re.compile(r"`\((\.L_\w+)\)")
_REGISTER = re.compile(r"\b(U?R)(\d+)(?:\.(64|128))?\b")
_SHARED_ADDRESS = re.compile(r"\[\s*(U?R\d+|URZ|RZ)?\s*(?:\+\s*)?(-?0x[0-9a-fA-F]+)?\s*\]")

# Branches that move control flow (BSSY names a reconvergence point, not a jump).
_BRANCHES = ("BRA", "BRX", "JMP", "JMX")
_ENDS = ("EXIT", "RET", "KILL")


@dataclasses.dataclass
class Instruction:
    offset: int
    predicate: str  # "" when unconditional ("@PT" counts as unconditional)
    opcode: str  # with its modifiers, e.g. "LDS.128"
    operands: str
    label: str | None = None  # the label this instruction carries, if any

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]

    @property
    def target(self) -> str | None:
        if self.base not in _BRANCHES:
            return None
        m = _TARGET.search(self.operands)
        return m.group(1) if m else None

    @property
    def conditional(self) -> bool:
        return self.predicate not in ("", "@PT")


@dataclasses.dataclass
class Block:
    start: int  # index of the first instruction in the kernel's list
    end: int  # one past the last
    successors: list[int]  # indices of successor blocks


@dataclasses.dataclass
class Loop:
    head: int  # instruction index of the loop's label
    latch: int  # instruction index of the backward branch

    def contains(self, other: "Loop") -> bool:
        return self.head <= other.head and other.latch <= self.latch and self != other


@dataclasses.dataclass
class LoopCount:
    """One steady-state iteration of a loop."""
    kernel: str
    head_offset: int
    latch_offset: int
    instructions: int  # on the cheapest path through the body
    longest_path: int  # on the most expensive path (rare work included)
    body: int  # every instruction of the body's address range
    shared_bytes: int  # distinct shared-memory bytes read on the cheapest path
    reuse: float  # reads per value loaded from shared memory (rows per thread)
    opcodes: dict[str, int]  # opcode (without modifiers) -> count on the cheapest path
    path: list[Instruction]

    def pairs(self, bytes_per_j: int, rows: int | None = None) -> float:
        """Pairs one iteration handles: j per iteration (shared bytes / bytes_per_j) times rows
        per thread (the measured reuse, rounded, unless given)."""
        if rows is None:
            rows = max(1, round(self.reuse))
        return self.shared_bytes / bytes_per_j * rows


def parse(text: str) -> dict[str, list[Instruction]]:
    """Kernel name (mangled) -> its instructions, from `nvdisasm -c` output."""
    kernels: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    pending: str | None = None
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            current = kernels.setdefault(m.group(1), [])
            pending = None
            continue
        m = _LABEL.match(line)
        if m:
            pending = m.group(1)
            continue
        m = _INSTRUCTION.match(line)
        if m and current is not None:
            offset, predicate, opcode, operands = m.groups()
            current.append(Instruction(int(offset, 16), predicate or "", opcode,
                                       operands.strip(), pending))
            pending = None
    return kernels


def blocks(code: list[Instruction]) -> list[Block]:
    """Basic blocks in address order, with their successors (block indices)."""
    labels = {ins.label: k for k, ins in enumerate(code) if ins.label}
    leaders = {0} | set(labels.values())
    for k, ins in enumerate(code):
        if (ins.target or ins.base in _ENDS) and k + 1 < len(code):
            leaders.add(k + 1)
    starts = sorted(leaders)
    block_of = {s: b for b, s in enumerate(starts)}
    result = []
    for b, start in enumerate(starts):
        end = starts[b + 1] if b + 1 < len(starts) else len(code)
        last = code[end - 1]
        successors = []
        if last.target in labels:
            successors.append(block_of[labels[last.target]])
        falls_through = last.conditional or not (last.target or last.base in _ENDS
                                                  or last.base in _BRANCHES)
        if falls_through and end < len(code):
            successors.append(b + 1)
        result.append(Block(start, end, successors))
    return result


def loops(code: list[Instruction]) -> list[Loop]:
    """Every backward branch, as the loop [its target label, the branch]."""
    labels = {ins.label: k for k, ins in enumerate(code) if ins.label}
    return [Loop(labels[ins.target], k) for k, ins in enumerate(code)
            if ins.target in labels and labels[ins.target] <= k]


def innermost(found: list[Loop]) -> list[Loop]:
    return [lp for lp in found if not any(lp.contains(other) for other in found)]


def _paths(code: list[Instruction], loop: Loop) -> tuple[list[int], int]:
    """The cheapest path (instruction indices) from the loop's head to its backward branch,
    staying inside the body, and the cost of the most expensive one."""
    bl = blocks(code)
    inside = [b for b, blk in enumerate(bl) if loop.head <= blk.start and blk.end - 1 <= loop.latch]
    first = next(b for b in inside if bl[b].start == loop.head)
    last = next(b for b in inside if bl[b].end - 1 == loop.latch)
    # The body is a DAG once the backward branch is cut: relax in address order.
    best: dict[int, tuple[int, list[int]]] = {first: (0, [])}
    worst: dict[int, int] = {first: 0}
    for b in inside:
        if b not in best:
            continue
        cost, path = best[b]
        size = bl[b].end - bl[b].start
        here = path + list(range(bl[b].start, bl[b].end))
        if b == last:
            return here, worst[b] + size
        for s in bl[b].successors:
            if s in inside and s > b:
                if s not in best or best[s][0] > cost + size:
                    best[s] = (cost + size, here)
                worst[s] = max(worst.get(s, 0), worst[b] + size)
    raise ValueError(f"no path through the loop at /*{code[loop.head].offset:04x}*/")


def _registers(operands: str) -> list[str]:
    """Registers an operand string names (a .64 or .128 operand names 2 or 4)."""
    names = []
    for kind, number, width in _REGISTER.findall(operands):
        count = {"64": 2, "128": 4}.get(width, 1)
        names += [f"{kind}{int(number) + k}" for k in range(count)]
    return names


def _load_width(opcode: str) -> int:
    for suffix, size in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1),
                         (".S8", 1)):
        if suffix in opcode:
            return size
    return 4


def _shared_loads(path: list[Instruction]):
    """(instruction, destination registers, address base, byte range) of each shared load."""
    for ins in path:
        if ins.base not in ("LDS", "LDSM"):
            continue
        dest, _, address = ins.operands.partition(",")
        m = _SHARED_ADDRESS.search(address)
        base = (m.group(1) or "") if m else address
        start = int(m.group(2), 16) if m and m.group(2) else 0
        width = _load_width(ins.opcode)
        registers = _registers(dest)[:max(1, width // 4)]
        yield ins, registers, base, (start, start + width)


def _distinct_bytes(path: list[Instruction]) -> int:
    covered: dict[str, set[int]] = {}
    for _, _, base, (lo, hi) in _shared_loads(path):
        covered.setdefault(base, set()).update(range(lo, hi))
    return sum(len(v) for v in covered.values())


def _reuse(path: list[Instruction]) -> float:
    """Mean number of reads of each register loaded from shared memory (among those read at
    least once) before the register is written again: the rows each y_j value serves."""
    live: dict[str, int] = {}  # register -> reads so far
    done: list[int] = []
    loaded = {id(ins): regs for ins, regs, _, _ in _shared_loads(path)}
    for ins in path:
        dest, _, sources = ins.operands.partition(",")
        written = _registers(dest) if ins.base not in ("ST", "STS", "STG", "STL", "BRA") else []
        for reg in _registers(sources if written else ins.operands):
            if reg in live:
                live[reg] += 1
        for reg in written:
            if reg in live:
                done.append(live.pop(reg))
        for reg in loaded.get(id(ins), []):
            live[reg] = 0
    done += live.values()
    used = [n for n in done if n > 0]
    return sum(used) / len(used) if used else 0.0


def count_loop(kernel: str, code: list[Instruction], loop: Loop) -> LoopCount:
    indices, longest = _paths(code, loop)
    path = [code[k] for k in indices]
    opcodes: dict[str, int] = {}
    for ins in path:
        opcodes[ins.base] = opcodes.get(ins.base, 0) + 1
    return LoopCount(kernel, code[loop.head].offset, code[loop.latch].offset, len(path), longest,
                     loop.latch - loop.head + 1, _distinct_bytes(path), _reuse(path), opcodes,
                     path)


def inner_loop(kernel: str, code: list[Instruction]) -> LoopCount | None:
    """The steady-state inner loop of a kernel: among the loops whose cheapest path runs no
    other loop's backward branch (innermost on the hot path: a loop on a rare branch, such as
    a K-list insertion, does not count), the one reading the most distinct shared-memory bytes
    per iteration (then the longest); None if the kernel has no loop."""
    found = loops(code)
    latches = {lp.latch for lp in found}
    counts = []
    for lp in found:
        count = count_loop(kernel, code, lp)
        on_path = {id(ins) for ins in count.path}
        if not any(id(code[k]) in on_path for k in latches - {lp.latch}):
            counts.append(count)
    if not counts:
        return None
    return max(counts, key=lambda c: (c.shared_bytes, c.instructions))
