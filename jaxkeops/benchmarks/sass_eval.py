"""Running the integer part of SASS with partly known values (for sass_walk.py).

A `Machine` holds a thread's registers, predicates and local memory. A value is a known 32-bit
integer, a `Sym` (what a register held when the run started, plus a known offset: pointers,
whose absolute values nobody needs) or None (unknown: float data, products of unknowns).
Known data: constant bank 0 (kernel parameters: words, and pointers as symbols), constant bank
2 (jump tables), the thread's own local stores, and whatever `read_table` answers for a load
through a symbolic pointer. The integer instructions the interpreter's control flow depends on
are modelled (moves, IMAD/IADD3/LEA/SHF/LOP3/SEL/min-max, ISETP/PLOP3, loads of constants and
local memory); any other instruction makes what it writes unknown, which only matters if a
branch needs it, and then the walk says so (sass_walk.WalkError).
"""

from __future__ import annotations

import dataclasses
import re
import struct

import numpy as np

from jaxkeops.benchmarks import sass

MASK = 0xFFFFFFFF


class WalkError(RuntimeError):
    """The walk cannot decide a branch (or meets code it does not model)."""


@dataclasses.dataclass(frozen=True)
class Sym:
    """A pointer-like value: what register `base` held when the run started, plus `off`."""
    base: str
    off: int = 0


def split_operands(text: str) -> list[str]:
    text = text.split("(*", 1)[0]  # nvdisasm's annotations, e.g. BRANCH_TARGETS
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


_REG = re.compile(r"^(-|~|!)?\|?(U?R(?:Z|\d+)|U?P(?:T|\d))"
                  r"(?:\.reuse|\.64|\.128|\.H0|\.H1|\.F32)*\|?$")
_IMM = re.compile(r"^-?0x[0-9a-fA-F]+$|^-?\d+$")
_CONST = re.compile(r"^c\[(0x[0-9a-fA-F]+)\]\[(?:(U?R\d+)\s*\+?\s*)?(-?0x[0-9a-fA-F]+)?\]$")
# A memory operand's last bracket: [R4.64+0x10], [R1+UR4+-0x8]...
_ADDRESS = re.compile(r"\[\s*(U?R(?:Z|\d+))?(?:\.64|\.U32)?\s*(?:\+\s*)?(U?R\d+)?\s*"
                      r"(?:\+\s*)?(-?0x[0-9a-fA-F]+)?\s*\]$")


def is_predicate(op: str) -> bool:
    return bool(re.match(r"^!?U?P(T|\d)$", op))


def _next_reg(name: str, k: int) -> str:
    m = re.match(r"(U?R)(\d+)$", name)
    return f"{m.group(1)}{int(m.group(2)) + k}" if m else name


def _add(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return (a + b) & MASK
    if isinstance(a, Sym) and isinstance(b, int):
        return Sym(a.base, a.off + _signed(b))
    if isinstance(b, Sym) and isinstance(a, int):
        return Sym(b.base, b.off + _signed(a))
    return None


def _mul(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return (a * b) & MASK
    if isinstance(a, Sym) and b == 1:
        return a
    if isinstance(b, Sym) and a == 1:
        return b
    if a == 0 or b == 0:
        return 0
    return None


def _signed(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


class Machine:
    """One thread's integer state, stepped one instruction at a time."""

    def __init__(self, params: dict[int, int], pointers: dict[int, str], const2: bytes,
                 read_table=None):
        self.params = params  # constant bank 0: byte offset -> known word
        self.pointers = pointers  # constant bank 0: byte offset -> pointer name
        self.const2 = const2  # constant bank 2: the jump tables
        # (Sym address, source context) -> a known word or None, for loads through pointers
        self.read_table = read_table or (lambda address, context: None)
        self.regs: dict[str, object] = {}
        self.local: dict[object, object] = {}

    def get(self, op: str):
        op = op.strip()
        m = _REG.match(op)
        if m:
            sign, name = m.group(1), m.group(2)
            if name in ("RZ", "URZ"):
                value = 0
            elif name in ("PT", "UPT"):
                value = True
            else:
                value = self.regs.get(name, Sym(name) if name[-1].isdigit() and "P" not in name
                                      else None)
            if sign == "!" and isinstance(value, bool):
                return not value
            if sign == "-" and isinstance(value, int) and not isinstance(value, bool):
                return (-value) & MASK
            if sign == "~" and isinstance(value, int) and not isinstance(value, bool):
                return (~value) & MASK
            return value if not sign else None
        if _IMM.match(op):
            return int(op, 16 if "x" in op else 10) & MASK
        m = _CONST.match(op)
        if m:
            return self._const(int(m.group(1), 16), m.group(2), int(m.group(3) or "0", 16)
                               if m.group(3) and not m.group(3).startswith("-") else
                               -int(m.group(3)[1:], 16) if m.group(3) else 0)
        return None

    def _const(self, bank: int, reg: str | None, off: int, k: int = 0):
        if reg is not None:
            index = self.regs.get(reg)
            if not isinstance(index, int) or isinstance(index, bool):
                return None
            off += _signed(index)
        off += 4 * k
        if bank == 0:
            return Sym(self.pointers[off]) if off in self.pointers else self.params.get(off)
        if bank == 2 and 0 <= off <= len(self.const2) - 4:
            return struct.unpack_from("<I", self.const2, off)[0]
        return None

    def set(self, name: str, value):
        if name in ("RZ", "URZ", "PT", "UPT"):
            return
        self.regs[name] = value

    def address(self, op: str):
        """The address of a memory operand `[R4.64+0x10]` / `desc[UR8][R4.64]`."""
        m = _ADDRESS.search(op)
        if not m:
            return None
        base = self.get(m.group(1)) if m.group(1) else 0
        if m.group(2):
            base = _add(base, self.get(m.group(2)))
        off = m.group(3)
        return _add(base, int(off, 16) & MASK if not off.startswith("-") else
                    (-int(off[1:], 16)) & MASK) if off else base

    # -- one instruction
    def step(self, ins: sass.Instruction, context=()) -> None:
        """Applies one instruction (not a branch) to the registers and local memory."""
        guard = True
        if ins.predicate:
            guard = self.get(ins.predicate.lstrip("@"))
        if guard is False:
            return
        ops = split_operands(ins.operands)
        dests = self._execute(ins, ops, context)
        if guard is None:  # may or may not have run: whatever it wrote is unknown
            for d in dests:
                self.set(d, None)
            if ins.base == "STL":
                self.local.clear()

    def _execute(self, ins, ops, context) -> list[str]:
        """Applies the instruction; returns the registers/predicates it may have written."""
        # Uniform-datapath instructions (UIADD3, ULDC...) compute as their vector twins.
        base = ins.base[1:] if ins.base.startswith("U") else ins.base
        mods = ins.opcode.split(".")[1:]
        g = self.get
        if base in ("BSSY", "BSYNC", "WARPSYNC", "NOP", "BAR", "BREAK", "YIELD", "DEPBAR",
                    "BMOV", "BRA", "BRX", "EXIT") or not ops:
            return []
        d = ops[0]
        if base in ("ATOM", "ATOMS", "ATOMG"):  # returns the old value: unknown
            self.set(d.split(".")[0], None)
            return [d.split(".")[0]]
        if base in ("ST", "STG", "STS", "STL", "RED"):
            if base == "STL":  # the thread's local memory is remembered word by word
                addr = self.address(ops[0])
                if addr is None:  # a store we cannot place: forget everything
                    self.local.clear()
                for k in range(_width(mods) if addr is not None else 0):
                    self.local[_add(addr, 4 * k)] = g(_next_reg(ops[1].split(".")[0], k))
            return []
        if base in ("LD", "LDG", "LDS", "LDL", "LDC"):
            width = _width(mods)
            values = self._load(base, ops, width, context)
            names = [_next_reg(d.split(".")[0], k) for k in range(width)]
            for n, v in zip(names, values):
                self.set(n, v)
            return names
        if base == "ISETP" or base == "PLOP3":
            p, q = ops[0], ops[1]
            if base == "ISETP":
                r, nr = self._isetp(mods, ops)
            else:
                a, b, c = (g(o) for o in ops[2:5])
                lut = int(ops[5], 16)
                r = _lut_bool(lut, a, b, c)
                nr = _lut_bool(int(ops[6], 16), a, b, c) if len(ops) > 6 else None
            self.set(p, r)
            self.set(q, nr)
            return [p, q]
        if is_predicate(d):  # FSETP, DSETP, R2P...: predicates we do not model
            outs = [o for o in ops[:2] if is_predicate(o)]
            for o in outs:
                self.set(o, None)
            return outs
        dname = d.split(".")[0]
        if base == "CS2R" and ops[1] == "SRZ":  # zeroes a register pair
            self.set(dname, 0)
            self.set(_next_reg(dname, 1), 0)
            return [dname, _next_reg(dname, 1)]
        width = 2 if base.startswith("D") or "F64" in mods[:1] or base == "CS2R" else 1
        value = self._arith(base, mods, ops, g)
        if isinstance(value, tuple):  # (lo, hi) of a wide result
            self.set(dname, value[0])
            self.set(_next_reg(dname, 1), value[1])
            written = [dname, _next_reg(dname, 1)]
        else:
            self.set(dname, value)
            written = [dname]
            if width == 2:
                self.set(_next_reg(dname, 1), None)
                written.append(_next_reg(dname, 1))
        for extra in self._carry_outs(base, ops):
            written.append(extra)
        return written

    def _carry_outs(self, base, ops) -> list[str]:
        if base not in ("IADD3", "LEA", "IMAD"):
            return []
        return [o for o in ops[1:3] if is_predicate(o) and o not in ("PT",)]

    def _load(self, base, ops, width, context) -> list:
        if base == "LDC":
            m = _CONST.match(ops[1].strip())
            if not m:
                return [None] * width
            off = m.group(3)
            off = (int(off, 16) if not off.startswith("-") else -int(off[1:], 16)) if off else 0
            return [self._const(int(m.group(1), 16), m.group(2), off, k) for k in range(width)]
        addr = self.address(ops[1])
        if base == "LDL":
            return [self.local.get(_add(addr, 4 * k)) if addr is not None else None
                    for k in range(width)]
        if isinstance(addr, Sym) and base in ("LD", "LDS"):
            return [self.read_table(Sym(addr.base, addr.off + 4 * k), context)
                    for k in range(width)]
        return [None] * width

    def _isetp(self, mods, ops):
        g = self.get
        cmp = mods[0]
        unsigned = "U32" in mods
        ex = "EX" in mods
        bop = next((m for m in mods if m in ("AND", "OR", "XOR")), "AND")
        a, b, c = g(ops[2]), g(ops[3]), g(ops[4])
        lo = g(ops[5]) if ex and len(ops) > 5 else None
        if isinstance(a, Sym) and isinstance(b, Sym) and a.base == b.base:
            a, b = a.off & MASK, b.off & MASK
        if not (isinstance(a, int) and isinstance(b, int)) or isinstance(a, bool):
            r = None
        else:
            x, y = (a, b) if unsigned else (_signed(a), _signed(b))
            strict = {"LT": x < y, "LE": x < y, "GT": x > y, "GE": x > y, "EQ": False,
                      "NE": x != y}[cmp]
            plain = {"LT": x < y, "LE": x <= y, "GT": x > y, "GE": x >= y, "EQ": x == y,
                     "NE": x != y}[cmp]
            if ex:  # the high words of a 64-bit compare; `lo` is the low words' result
                if lo is None:
                    r = None
                elif cmp == "EQ":
                    r = x == y and lo
                elif cmp == "NE":
                    r = x != y or lo
                else:
                    r = strict or (x == y and lo)
            else:
                r = plain
        return _combine(bop, r, c), _combine(bop, None if r is None else not r, c)

    def _arith(self, base, mods, ops, g):
        src = [g(o) for o in ops[1:]]
        srcs_no_pred = [s for o, s in zip(ops[1:], src) if not is_predicate(o)]
        if base in ("MOV", "R2UR"):
            return src[0]
        if base == "S2R" or base == "S2UR":
            return 0 if ops[1] in ("SR_TID.X", "SR_CTAID.X", "SR_CgaCtaId") else None
        if base == "HFMA2" and "MMA" in mods and ops[1] == "-RZ" and ops[2] == "RZ":
            return (_half_bits(ops[3]) << 16) | _half_bits(ops[4]) \
                if None not in (_half_bits(ops[3]), _half_bits(ops[4])) else None
        if base == "IMAD" or base == "IMAD.MOV":
            if "WIDE" in mods:
                return self._imad_wide(mods, ops)
            if "X" in mods:  # with carry-in: only known values
                vals = srcs_no_pred[:3]
                carry = g(ops[4]) if len(ops) > 4 else False
                if all(isinstance(v, int) for v in vals) and isinstance(carry, bool):
                    return (vals[0] * vals[1] + vals[2] + int(carry)) & MASK
                return None
            if "HI" in mods:
                a, b, c = srcs_no_pred[:3]
                if all(isinstance(v, int) for v in (a, b, c)):
                    x, y = (a, b) if "U32" in mods else (_signed(a), _signed(b))
                    return (((x * y) >> 32) + c) & MASK
                return None
            a, b, c = srcs_no_pred[:3]
            return _add(_mul(a, b), c)  # IMAD.SHL shows the multiplier (0x4: shift by 2)
        if base == "IADD3":
            vals = [s for o, s in zip(ops[1:], src) if not is_predicate(o)][:3]
            carries = [s for o, s in zip(ops[1:], src) if is_predicate(o)] if "X" in mods else []
            total = 0
            for v in vals:
                total = _add(total, v)
            for c in carries[-2:]:
                total = _add(total, int(c)) if isinstance(c, bool) else None
            self._set_carry(ops, vals, total)
            return total
        if base == "VIADD":
            return _add(src[0], src[1])
        if base in ("VIADDMNMX", "IMNMX", "VIMNMX"):
            if base == "VIADDMNMX":
                a, b, pick = _add(src[0], src[1]), src[2], src[3]
            else:
                a, b, pick = src[0], src[1], src[2]
            if not (isinstance(a, int) and isinstance(b, int) and isinstance(pick, bool)):
                return None
            x, y = (a, b) if "U32" in mods else (_signed(a), _signed(b))
            return (min(x, y) if pick else max(x, y)) & MASK
        if base == "SEL":
            p = src[2]
            return None if p is None else src[0] if p else src[1]
        if base == "LEA":
            return self._lea(mods, ops, src)
        if base == "SHF":
            return _shf(mods, src)
        if base == "LOP3":
            vals = srcs_no_pred[:4]
            if all(isinstance(v, int) for v in vals):
                return _lut_int(vals[3], vals[0], vals[1], vals[2])
            return None
        if base == "SHL" and len(src) >= 2 and all(isinstance(v, int) for v in src[:2]):
            return (src[0] << src[1]) & MASK
        return None

    def _set_carry(self, ops, vals, total):
        outs = [o for o in ops[1:3] if is_predicate(o) and o != "PT"]
        if not outs:
            return
        if all(isinstance(v, int) for v in vals):
            carry = sum(vals) > MASK
            self.set(outs[0], carry)
            for o in outs[1:]:
                self.set(o, None)
        else:
            for o in outs:
                self.set(o, None)

    def _imad_wide(self, mods, ops):
        g = self.get
        a, b, c = g(ops[1]), g(ops[2]), ops[3]
        c_lo = g(c)
        c_hi = g(_next_reg(c.split(".")[0], 1)) if re.match(r"U?R\d", c) else \
            (0 if isinstance(c_lo, int) and not c_lo & 0x80000000 else None)
        if isinstance(a, int) and isinstance(b, int):
            x, y = (a, b) if "U32" in mods else (_signed(a), _signed(b))
            prod = x * y
            if isinstance(c_lo, Sym):
                return Sym(c_lo.base, c_lo.off + prod), None
            if isinstance(c_lo, int) and isinstance(c_hi, int):
                total = (c_hi << 32 | c_lo) + prod
                return total & MASK, (total >> 32) & MASK
        return None, None

    def _lea(self, mods, ops, src):
        vals = [(o, s) for o, s in zip(ops[1:], src) if not is_predicate(o)]
        if "HI" in mods:
            return None  # high words of 64-bit addresses: never needed for a branch
        a, b, sh = vals[0][1], vals[1][1], vals[2][1]
        if isinstance(a, int) and isinstance(sh, int):
            value = _add((a << sh) & MASK, b)
            if isinstance(b, int) and not isinstance(b, bool):
                self._set_carry(ops, [(a << sh) & MASK, b], None)
            return value
        return None


def _width(mods: list[str]) -> int:
    return 4 if "128" in mods else 2 if "64" in mods else 1


def _combine(bop, r, c):
    if bop == "AND":
        return False if r is False or c is False else (None if r is None or c is None else True)
    if bop == "OR":
        return True if r is True or c is True else (None if r is None or c is None else False)
    return None if r is None or c is None else r != c


def _lut_bool(lut: int, a, b, c):
    if any(v is None for v in (a, b, c)):
        return None
    return bool(lut >> ((int(a) << 2) | (int(b) << 1) | int(c)) & 1)


def _lut_int(lut: int, a: int, b: int, c: int) -> int:
    r = 0
    for i in range(8):
        if lut >> i & 1:
            r |= (a if i & 4 else ~a) & (b if i & 2 else ~b) & (c if i & 1 else ~c)
    return r & MASK


def _shf(mods, src):
    if not all(isinstance(v, int) for v in src[:3]):
        return None
    lo, sh, hi = src[0], src[1] & 63, src[2]
    if "L" in mods:
        wide = ((hi << 32) | lo) << sh
        return (wide >> 32) & MASK if "HI" in mods else wide & MASK
    if "S32" in mods:
        wide = (_signed(hi) << 32) | lo
    else:
        wide = (hi << 32) | lo
    return (wide >> (sh + (0 if "HI" not in mods else 32))) & MASK if "HI" in mods else \
        (wide >> sh) & MASK


def _half_bits(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(np.array(value, dtype=np.float16).view(np.uint16))
