"""Sum reductions of randomly composed formulas against the dense float64 oracle."""

import jax
import numpy as np
import pytest
from oracle import abs_sum, assert_close, dense

from jaxkeops import LazyTensor, Pm, Vi, Vj

SIZES = [(1, 1), (7, 13), (1000, 2000), (3000, 1), (1, 3000)]
DIMS = [1, 3, 17]


def _same_dim(rng, a, b):
    """Make b usable with a in an elementwise op: equal dims, or reduce one side to dim 1."""
    if a.formula.dim == b.formula.dim or 1 in (a.formula.dim, b.formula.dim):
        return a, b
    return (a, b.sum(-1)) if rng.random() < 0.5 else (a.sqnorm2(), b)


SIGNED_KINDS = ["sub", "neg", "sqdist"]  # the ops through which a formula can cancel
POSITIVE_KINDS = ["add", "mul", "div", "exp", "log", "sqrt", "pow", "powf", "sum", "sqnorm2",
                  "dot", "const"]


def random_formula(rng, leaves, depth, signed):
    """A random formula over `leaves` whose values stay moderate (no overflow, no log(<=0)).

    With signed=False, leaves positive and no op able to cancel, every value is positive and
    well conditioned: float32 must then match float64 to ~1e-6 relative whatever the tree."""
    if depth == 0:
        return leaves[rng.integers(len(leaves))]
    a = random_formula(rng, leaves, depth - 1, signed)
    kind = rng.choice(POSITIVE_KINDS + (SIGNED_KINDS if signed else []))
    if kind in ("add", "sub", "mul", "div", "sqdist", "dot"):
        b = random_formula(rng, leaves, depth - 1, signed)
        if kind in ("sqdist", "dot"):
            if a.formula.dim != b.formula.dim:
                a, b = a.sum(-1), b.sum(-1)
            return a.sqdist(b) if kind == "sqdist" else (a | b)
        a, b = _same_dim(rng, a, b)
        if kind == "add":
            return a + b
        if kind == "sub":
            return a - b
        if kind == "mul":
            return a * b
        return a / (2.0 + b**2)
    if kind == "neg":
        return -a
    if kind == "exp":
        return (-(a**2)).exp() if signed else (-a * 0.5).exp()
    if kind == "log":
        return (1.0 + a**2).log()
    if kind == "sqrt":
        return (0.5 + a**2).sqrt() if rng.random() < 0.5 else (0.5 + a**2) ** 0.5
    if kind == "pow":
        k = int(rng.choice([3, -2, 1, 0]))
        return (1.0 + a**2) ** k
    if kind == "powf":
        return (1.0 + a**2) ** float(rng.choice([1.5, -0.7]))
    if kind == "sum":
        return a.sum(-1)
    if kind == "sqnorm2":
        return a.sqnorm2()
    c = float(rng.uniform(-2, 2) if signed else rng.uniform(0.1, 2))
    return a * c + 1


def make_arrays(rng, M, N, D, dtype):
    low = -1 if dtype == np.float64 else 0.1  # float32 trees stay positive (see random_formula)
    return (
        rng.uniform(low, 1, (M, 1, D)).astype(dtype),  # x_i
        rng.uniform(low, 1, (1, N, D)).astype(dtype),  # y_j
        rng.uniform(low, 1, (N, 1)).astype(dtype),  # b_j
        rng.uniform(0.5, 1.5, (D,)).astype(dtype),  # p
    )


def build_formula(seed, x, y, b, p):
    """The same random formula for the same seed, whatever (possibly traced) arrays it gets.

    float64 trees use every op, cancellations included; float32 trees only the positive,
    well-conditioned ones (cancellation would measure float32 itself, not the kernel)."""
    signed = x.dtype == np.float64
    x_i, y_j = LazyTensor(x), LazyTensor(y)
    D = x.shape[-1]
    base = (x_i.sqdist(y_j) if signed else (x_i | y_j)) if D > 1 else x_i * y_j  # dimension 1
    leaves = [x_i, y_j, Vj(b), Pm(p), base]
    # Adding base makes sure i and j both take part, whatever the random tree picked.
    return random_formula(np.random.default_rng(seed), leaves, 3, signed) + base


@pytest.mark.parametrize("M,N", SIZES)
@pytest.mark.parametrize("D", DIMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 1])
def test_random_formula_sum(rng, M, N, D, dtype, axis):
    arrays = make_arrays(rng, M, N, D, dtype)
    for jit in (False, True):
        seed = int(rng.integers(2**31))
        F = build_formula(seed, *arrays)
        if jit:
            out = jax.jit(lambda *a: build_formula(seed, *a).sum(axis=axis))(*arrays)
        else:
            out = F.sum(axis=axis)
        (ref,) = dense(F, "Sum", axis)
        assert out.shape == ((N if axis == 0 else M), F.formula.dim)
        assert out.dtype == dtype
        assert_close(out, ref, dtype, rtol32=1e-5, scale=abs_sum(F, axis))


@pytest.mark.parametrize("axis", [0, 1])
def test_gaussian_sum_inside_jit(rng, axis):
    M, N, D = 517, 301, 3
    x = rng.normal(size=(M, D)).astype(np.float32)
    y = rng.normal(size=(N, D)).astype(np.float32)
    b = rng.uniform(0.1, 1, size=(N if axis == 1 else M, 2)).astype(np.float32)

    @jax.jit
    def gauss(x, y, b, sigma):
        K = (-Vi(x).sqdist(Vj(y)) / Pm(sigma) ** 2).exp()
        return (K * (Vj(b) if axis == 1 else Vi(b))).sum(axis)

    out = gauss(x, y, b, np.float32(0.7))
    K = np.exp(-((x[:, None, :].astype(float) - y[None]) ** 2).sum(-1) / 0.49)
    ref = K @ b if axis == 1 else K.T @ b
    assert_close(out, ref, np.float32, rtol32=1e-5)


def test_float32_sum_of_positive_terms_is_accurate(rng):
    """Relative error <= 1e-5 on a float32 sum of many positive terms."""
    M, N, D = 40, 200_000, 3
    x = rng.normal(size=(M, 1, D)).astype(np.float32)
    y = rng.normal(size=(1, N, D)).astype(np.float32)
    F = (-((LazyTensor(x) - LazyTensor(y)) ** 2).sum(-1) * 0.1).exp()
    out = np.asarray(F.sum(1), dtype=np.float64)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    ref = np.exp(-((x64 - y64) ** 2).sum(-1) * 0.1).sum(1, keepdims=True)
    rel = np.abs(out - ref) / ref
    assert rel.max() <= 1e-5, rel.max()


def test_sum_shapes_keep_trailing_dim(rng):
    x = rng.normal(size=(6, 1, 4))
    y = rng.normal(size=(1, 9, 4))
    S = ((LazyTensor(x) - LazyTensor(y)) ** 2).sum(-1)
    V = LazyTensor(x) - LazyTensor(y)
    assert S.sum(dim=1).shape == (6, 1)
    assert S.sum(axis=0).shape == (9, 1)
    assert V.sum(axis=0).shape == (9, 4)
    assert S.shape == (6, 9) and V.shape == (6, 9, 4)
