"""The formula IR: an immutable, hashable DAG of operations over variables.

A formula is what a LazyTensor holds and what the primitive carries as a static parameter.
Equal formulas compare and hash equal, so JAX's caches (jit, lowering) and the program cache
are hit whenever the same computation is written again.

Leaves are `Var(index, dim, cat)` (an operand of the reduction; `cat` says whether it is
indexed by i, by j, or is a parameter) and `Const(values)` (numbers baked into the formula).
Interior nodes are `Op(name, args, params)`, whose meaning is the op-table entry `name`
(jaxkeops/ops.py); `params` holds the op's static arguments (an integer power, a slice).
"""

from __future__ import annotations

from typing import Callable, Iterator

# Variable categories, numbered as KeOps numbers them in `Var(index, dim, cat)`.
CAT_I = 0
CAT_J = 1
CAT_P = 2
CAT_NAMES = {CAT_I: "i", CAT_J: "j", CAT_P: "parameter"}


class Node:
    """Base of every formula node. Subclasses are immutable and cache their hash."""

    __slots__ = ("dim", "_hash")
    dim: int

    def __setattr__(self, name, value):
        raise AttributeError("formula nodes are immutable")

    def _init(self, dim: int, key: tuple) -> None:
        object.__setattr__(self, "dim", dim)
        object.__setattr__(self, "_hash", hash(key))

    def __hash__(self) -> int:
        return self._hash

    def children(self) -> tuple["Node", ...]:
        return ()


class Var(Node):
    """Operand number `index` of the reduction, of dimension `dim`, in category `cat`."""

    __slots__ = ("index", "cat")
    __hash__ = Node.__hash__  # defining __eq__ would otherwise drop it

    def __init__(self, index: int, dim: int, cat: int):
        object.__setattr__(self, "index", int(index))
        object.__setattr__(self, "cat", int(cat))
        self._init(int(dim), ("Var", self.index, dim, self.cat))

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Var)
            and self._hash == other._hash
            and (self.index, self.dim, self.cat) == (other.index, other.dim, other.cat)
        )

    def __repr__(self) -> str:
        return f"Var({self.index},{self.dim},{self.cat})"

    def __reduce__(self):  # pickle through the constructor: nodes refuse attribute writes
        return (Var, (self.index, self.dim, self.cat))


class Const(Node):
    """A vector of numbers baked into the formula (Python numbers written by the user)."""

    __slots__ = ("values",)
    __hash__ = Node.__hash__

    def __init__(self, values):
        values = tuple(float(v) for v in values)
        if not values:
            raise ValueError("a constant needs at least one value")
        object.__setattr__(self, "values", values)
        self._init(len(values), ("Const", values))

    def __eq__(self, other) -> bool:
        # Compare bit patterns through repr so that -0.0 and nan behave as distinct, stable keys.
        return isinstance(other, Const) and self._hash == other._hash and (
            [repr(v) for v in self.values] == [repr(v) for v in other.values]
        )

    def __repr__(self) -> str:
        if len(self.values) == 1:
            v = self.values[0]
            return f"IntCst({int(v)})" if v.is_integer() else f"Cst({v!r})"
        return "Cst(" + ",".join(repr(v) for v in self.values) + ")"

    def __reduce__(self):
        return (Const, (self.values,))


class Op(Node):
    """Application of the op-table entry `name` to `args`, with static `params`."""

    __slots__ = ("name", "args", "params")
    __hash__ = Node.__hash__

    def __init__(self, name: str, args: tuple[Node, ...], params: tuple = (), *, dim: int):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "args", tuple(args))
        object.__setattr__(self, "params", tuple(params))
        self._init(int(dim), ("Op", name, self.args, self.params))

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        return (
            isinstance(other, Op)
            and self._hash == other._hash
            and self.name == other.name
            and self.params == other.params
            and self.args == other.args
        )

    def children(self) -> tuple[Node, ...]:
        return self.args

    def __reduce__(self):
        return (_make_op, (self.name, self.args, self.params, self.dim))

    def __repr__(self) -> str:
        from jaxkeops.ops import OPS  # the printer lives with the op

        return OPS[self.name].format(tuple(repr(a) for a in self.args), self.params)


def _make_op(name: str, args, params, dim: int) -> Op:  # Op's unpickler (dim is keyword-only)
    return Op(name, args, params, dim=dim)


def walk(roots) -> Iterator[Node]:
    """Yield every distinct node reachable from `roots`, children before parents."""
    seen: set[Node] = set()
    stack: list[tuple[Node, bool]] = [(r, False) for r in reversed(tuple(roots))]
    while stack:
        node, expanded = stack.pop()
        if node in seen:
            continue
        if expanded:
            seen.add(node)
            yield node
            continue
        stack.append((node, True))
        for child in reversed(node.children()):
            if child not in seen:
                stack.append((child, False))


def variables(roots) -> list[Var]:
    """The distinct variables of `roots`, sorted by index."""
    return sorted((n for n in walk(roots) if isinstance(n, Var)), key=lambda v: v.index)


def substitute(node: Node, leaf_map: Callable[[Node], Node | None]) -> Node:
    """Rebuild `node` with each leaf replaced by `leaf_map(leaf)` (None keeps the leaf)."""
    memo: dict[Node, Node] = {}
    for n in walk([node]):
        if isinstance(n, Op):
            args = tuple(memo[a] for a in n.args)
            memo[n] = n if args == n.args else Op(n.name, args, n.params, dim=n.dim)
        else:
            replaced = leaf_map(n)
            memo[n] = n if replaced is None else replaced
    return memo[node]
