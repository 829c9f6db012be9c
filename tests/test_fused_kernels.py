"""The fused kernels' FFI target `jaxkeops_fused` (docs/fused-kernels.md), called directly on the
CPU, where it runs the host emulation of the GPU kernels (the same per-thread code), against a
float64 numpy oracle written here from the contract's formulas.

Sizes are chosen around the kernels' shapes: 128 threads per block, 2 rows per thread in the hot
bodies (256 rows per block), tiles of 128 inner points; an inner axis longer than one tile is
split over several work items whose states are merged (the emulation plans for 132 SMs).
"""

import itertools

import jax
import numpy as np
import pytest

import jaxkeops._native as native
from oracle import assert_close

OP = native.cpu.opcode_table()
RED = native.cpu.reduction_table()

SCORES = {"none": 0, "sqdist": 1, "dot": 2, "l1": 3, "wsqdist": 4}
AFFINE, EXP_AFFINE, PROGRAM, ONE = 0, 1, 2, 3
S_REF, A_REF, U_REF, V_REF, C_REF = 4, 5, 8, 16, 32


def ins(op, dst, a, b=0):
    return [OP[op], dst, a, b]


# φ programs (4 ints per instruction) and their numpy meaning; C holds what they read.
def matern52_program(ci):
    """(1 + r + r²/3) exp(-r), r = sqrt(C[ci] s); C[ci+1] = 1, C[ci+2] = 1/3."""
    one, third = C_REF + ci + 1, C_REF + ci + 2
    return sum([
        ins("Mult", 0, C_REF + ci, S_REF),   # r0 = c s
        ins("Sqrt", 0, 0),                   # r0 = r
        ins("Square", 1, 0),                 # r1 = r²
        ins("Mult", 1, 1, third),            # r1 = r²/3
        ins("Add", 1, 1, 0),                 # r1 = r + r²/3
        ins("Add", 1, 1, one),               # r1 = 1 + r + r²/3
        ins("Minus", 2, 0),                  # r2 = -r
        ins("Exp", 2, 2),                    # r2 = exp(-r)
        ins("Mult", 0, 1, 2),
    ], [])


def matern52(s, c):
    r = np.sqrt(c * s)
    return (1 + r + r * r / 3) * np.exp(-r)


def mixed_program():
    """u_i0 / (1 + s²) + v_j0 · a_ij + atan(s)·|v_j0|³ using every kind of reference and Pow."""
    return sum([
        ins("Pow", 1, S_REF, 2),             # r1 = s²
        ins("Add", 1, 1, C_REF + 0),         # r1 = s² + C0 (C0 = 1)
        ins("Divide", 0, U_REF, 1),          # r0 = u / (1 + s²)
        ins("Mult", 2, V_REF, A_REF),        # r2 = v a
        ins("Add", 0, 0, 2),
        ins("Atan", 3, S_REF),
        ins("Abs", 2, V_REF),
        ins("Pow", 2, 2, 3),
        ins("Mult", 3, 3, 2),
        ins("Add", 0, 0, 3),
    ], [])


def mixed(s, a, u, v):
    return u / (1 + s * s) + v * a + np.arctan(s) * np.abs(v) ** 3


def hot_program():
    """(u_i0 / (1 + s²) + v_j0 a_ij + log(1 + s) |v_j0|³ − √s / √(1 + s)) exp(−u_i0²): every
    op of the hot φ-program body's block interpreter (phi_block.h), every kind of reference."""
    return sum([
        ins("Pow", 1, S_REF, 2),             # r1 = s²
        ins("Add", 1, 1, C_REF + 0),         # r1 = 1 + s² (C0 = 1)
        ins("Divide", 0, U_REF, 1),          # r0 = u / (1 + s²)
        ins("Mult", 2, V_REF, A_REF),        # r2 = v a
        ins("Add", 0, 0, 2),
        ins("Add", 3, S_REF, C_REF + 0),     # r3 = 1 + s
        ins("Log", 3, 3),
        ins("Abs", 2, V_REF),
        ins("Pow", 2, 2, 3),                 # r2 = |v|³
        ins("Mult", 3, 3, 2),
        ins("Add", 0, 0, 3),
        ins("Sqrt", 1, S_REF),
        ins("Add", 2, S_REF, C_REF + 0),
        ins("Rsqrt", 2, 2),
        ins("Mult", 1, 1, 2),
        ins("Subtract", 0, 0, 1),
        ins("Square", 1, U_REF),
        ins("Minus", 1, 1),
        ins("Exp", 1, 1),                    # r1 = exp(-u²)
        ins("Mult", 0, 0, 1),
    ], [])


def hot(s, a, u, v):
    return (u / (1 + s * s) + v * a + np.log(1 + s) * np.abs(v) ** 3
            - np.sqrt(s) / np.sqrt(1 + s)) * np.exp(-u * u)


# ---------------------------------------------------------------- the oracle


def oracle_pairs(x, y, c, u, v, ao, ai, z, score, phi, factor, reduction, program_kind):
    """φ (M, N) and Ψ (M, N, dim) of one batch problem, in float64 (inf - inf is NaN, quietly)."""
    with np.errstate(invalid="ignore"):
        return _oracle_pairs(x, y, c, u, v, ao, ai, z, score, phi, factor, reduction, program_kind)


def _oracle_pairs(x, y, c, u, v, ao, ai, z, score, phi, factor, reduction, program_kind):
    x, y, c, u, v, ao, ai, z = (np.asarray(t, np.float64) for t in (x, y, c, u, v, ao, ai, z))
    D = x.shape[1]
    diff = x[:, None, :] - y[None, :, :]
    s = {
        0: lambda: np.zeros(diff.shape[:2]),
        1: lambda: (diff**2).sum(-1),
        2: lambda: x @ y.T,
        3: lambda: np.abs(diff).sum(-1),
        4: lambda: (c[:D] * diff**2).sum(-1),
    }[score]()
    a = ao @ ai.T if ao.shape[1] else np.ones_like(s)
    if phi in (AFFINE, EXP_AFFINE):
        t = c[D if score == 4 else 0] * s
        if u.shape[1]:
            t = t + u[:, :1]
        if v.shape[1]:
            t = t + v[None, :, 0]
        f = np.exp(t) if phi == EXP_AFFINE else t
    elif phi == ONE:
        f = np.ones_like(s)
    elif program_kind == "matern":
        f = matern52(s, c[D if score == 4 else 0])
    elif program_kind == "hot":
        f = hot(s, a, u[:, :1], v[None, :, 0])
    else:
        f = mixed(s, a, u[:, :1], v[None, :, 0])
    if ao.shape[1] and phi != PROGRAM and reduction == RED["Sum"]:
        f = f * a
    psi = {0: lambda: np.ones(s.shape + (1,)), 1: lambda: np.broadcast_to(z[None], s.shape + z.shape[1:]),
           2: lambda: diff}[factor]()
    return f, psi


def oracle_reduce(f, psi, reduction, k):
    """Outputs of one problem (the list the FFI target returns), float64 / int64."""
    M, N = f.shape
    name = {v: n for n, v in RED.items()}[reduction]
    if name == "Sum":
        return [(f[..., None] * psi).sum(1)]
    if name in ("LogSumExp", "LogSumExpWeight", "SumSoftMaxWeight"):
        with np.errstate(all="ignore"):
            if N == 0:
                m = np.full(M, -np.inf)
            else:
                m = np.max(f, axis=1)  # NaN propagates
            mf = np.where(np.isfinite(m), m, 0.0)
            e = np.exp(f - mf[:, None])
            if name == "LogSumExp":
                out = mf + np.log(e.sum(1))
                out = np.where(m == np.inf, np.inf, out)
                return [out[:, None]]
            num = (e[..., None] * psi).sum(1)
            if name == "LogSumExpWeight":
                out = mf[:, None] + np.log(num)
            else:
                out = num / e.sum(1)[:, None]
            return [np.where((m == np.inf)[:, None], np.nan, out)]
    vals = f[..., None] * psi  # (M, N, dim)
    dim = vals.shape[2]
    if name in ("Min", "ArgMin", "Min_ArgMin", "Max", "ArgMax", "Max_ArgMax"):
        is_max = name.startswith("Max") or name == "ArgMax"
        sign = -1.0 if is_max else 1.0
        best = np.full((M, dim), np.inf * sign)
        idx = np.full((M, dim), -1, np.int64)
        for i, d in itertools.product(range(M), range(dim)):
            col = vals[i, :, d] * sign
            ok = np.flatnonzero(~np.isnan(col))
            if ok.size:
                j = ok[np.argmin(col[ok])]  # first of the smallest
                best[i, d], idx[i, d] = col[j] * sign, j
        pick = {"Min": [best], "Max": [best], "ArgMin": [idx], "ArgMax": [idx]}
        return pick.get(name, [best, idx])
    # K-min family
    kv = np.full((M, k, dim), np.inf)
    ki = np.full((M, k, dim), -1, np.int64)
    for i, d in itertools.product(range(M), range(dim)):
        col = vals[i, :, d]
        ok = np.flatnonzero(~np.isnan(col))
        order = ok[np.argsort(col[ok], kind="stable")][:k]
        kv[i, : order.size, d], ki[i, : order.size, d] = col[order], order
    if dim == 1:
        kv, ki = kv[..., 0], ki[..., 0]
    return {"KMin": [kv], "ArgKMin": [ki]}.get(name, [kv, ki])


def batch_shape(ops):
    ranks = [2, 2, 1, 2, 2, 2, 2, 2]
    return np.broadcast_shapes(*(o.shape[: o.ndim - r] for o, r in zip(ops, ranks)))


def oracle(ops, score, phi, factor, reduction, k, program_kind=None):
    bshape = batch_shape(ops)
    ranks = [2, 2, 1, 2, 2, 2, 2, 2]
    outs = None
    for b in np.ndindex(*bshape):
        sl = []
        for o, r in zip(ops, ranks):
            ob = o.shape[: o.ndim - r]
            sl.append(o[tuple(bi if n != 1 else 0 for bi, n in zip(b, ob))])
        f, psi = oracle_pairs(*sl, score, phi, factor, reduction, program_kind)
        res = oracle_reduce(f, psi, reduction, k)
        if outs is None:
            outs = [np.empty(bshape + r.shape, r.dtype) for r in res]
        for o, r in zip(outs, res):
            o[b] = r
    return outs


# ---------------------------------------------------------------- the call


def out_shapes(ops, factor, reduction, k, index_dtype=np.int64):
    X, Y, C, U, V, AO, AI, Z = ops
    bshape = batch_shape(ops)
    M = X.shape[-2]
    dim = {0: 1, 1: Z.shape[-1], 2: X.shape[-1]}[factor]
    name = {v: n for n, v in RED.items()}[reduction]
    val = lambda shape: jax.ShapeDtypeStruct(bshape + (M,) + shape, X.dtype)
    idx = lambda shape: jax.ShapeDtypeStruct(bshape + (M,) + shape, index_dtype)
    if name.endswith("KMin") or name == "KMin_ArgKMin":
        row = (k,) if dim == 1 else (k, dim)
    elif name == "LogSumExp":
        row = (1,)
    else:
        row = (dim,)
    if name in ("ArgMin", "ArgMax", "ArgKMin"):
        return [idx(row)]
    if name in ("Min_ArgMin", "Max_ArgMax", "KMin_ArgKMin"):
        return [val(row), idx(row)]
    return [val(row)]


def fused(ops, score, phi, factor, reduction, k=0, program=(), index_dtype=np.int64, shapes=None):
    shapes = shapes or out_shapes(ops, factor, reduction, k, index_dtype)
    call = jax.ffi.ffi_call("jaxkeops_fused", shapes)
    outs = call(*ops, score=np.int32(score), phi=np.int32(phi), program=np.asarray(program, np.int32),
                factor=np.int32(factor), reduction=np.int32(reduction), k=np.int32(k))
    return [np.asarray(o) for o in outs]


def operands(rng, M, N, D, dtype, NC=4, NU=0, NV=0, NA=0, E=0, batch=(), scale=1.0, **batch_of):
    """Fresh random operands; batch_of[name] overrides the batch dims of one operand."""
    def arr(name, *shape):
        b = batch_of.get(name, batch)
        return (rng.standard_normal(b + shape) * scale).astype(dtype)
    C = rng.uniform(0.2, 1.0, batch_of.get("C", batch) + (NC,)).astype(dtype)
    return [arr("X", M, D), arr("Y", N, D), C, arr("U", M, NU), arr("V", N, NV),
            arr("AO", M, NA), arr("AI", N, NA), arr("Z", N, E)]


def program_for(phi, kind, score, D):
    if phi != PROGRAM:
        return ()
    if kind == "hot":
        return hot_program()
    return matern52_program(D if score == 4 else 0) if kind == "matern" else mixed_program()


def coefficients(ops, score, phi, kind):
    """C with what the programs read: the coefficient, 1 and 1/3 (Matérn) after the weights."""
    C = ops[2].copy()
    D = ops[0].shape[-1]
    base = D if score == 4 else 0
    if phi == PROGRAM and kind == "matern":
        C[..., base + 1] = 1.0
        C[..., base + 2] = 1.0 / 3.0
    if phi == PROGRAM and kind in ("mixed", "hot"):
        C[..., 0] = 1.0
    if phi in (AFFINE, EXP_AFFINE) and score in (0, 2, 3):
        C[..., 0] *= -0.3 if phi == EXP_AFFINE else 1.0  # keep exp of dot/l1 scores moderate
    return C


def check_values(out, ref, dtype, scale=None):
    with np.errstate(invalid="ignore"):  # inf - inf where both are inf
        assert_close(out, ref, dtype, rtol32=2e-4, rtol64=1e-9, scale=scale)


def check_index_output(idx, ref_idx, vals_at, ref_vals, dtype):
    """Indices: exact in float64; in float32 through the values they select (near ties)."""
    idx = np.asarray(idx)
    if np.dtype(dtype) == np.float64:
        np.testing.assert_array_equal(idx, ref_idx)
    else:
        assert ((idx >= -1) & (idx < max(vals_at.shape[1], 1))).all()
        np.testing.assert_array_equal(idx < 0, ref_idx < 0)


# ---------------------------------------------------------------- cases

DS = [1, 3, 8, 17]
SIZES = [(1, 1), (7, 5), (300, 130), (5, 1000), (129, 257)]


def cases(*axes):
    """The product of the axes, each case with a D and sizes cycling through DS and SIZES."""
    out = []
    for n, combo in enumerate(itertools.product(*axes)):
        out.append(combo + (DS[n % len(DS)], SIZES[(n // len(DS) + n) % len(SIZES)]))
    return out


def value_scale(f, psi):
    """Σ_j |φ Ψ|: what rounding errors of a sum grow with."""
    return np.abs(f[..., None] * psi).sum(1)


def run_case(rng, score, phi, factor, reduction, dtype, D, size, kind="matern", k=0, NU=1, NV=1,
             NA=0, E=3, batch=()):
    M, N = size
    ops = operands(rng, M, N, D, dtype, NC=D + 4, NU=NU, NV=NV, NA=NA, E=E, batch=batch,
                   scale=0.5 if score == 2 else 1.0)
    if phi == PROGRAM and kind == "matern" and score == 2:
        ops[0], ops[1] = np.abs(ops[0]), np.abs(ops[1])  # Matérn of a dot needs s >= 0
    ops[2] = coefficients(ops, score, phi, kind)
    prog = program_for(phi, kind, score, D)
    outs = fused(ops, score, phi, factor, reduction, k=k, program=prog)
    refs = oracle(ops, score, phi, factor, reduction, k, kind)
    return ops, outs, refs


SUM_CASES = cases(range(5), [AFFINE, EXP_AFFINE, ONE, PROGRAM], [0, 1, 2], [np.float32, np.float64])


@pytest.mark.parametrize("score,phi,factor,dtype,D,size", SUM_CASES)
def test_sum(rng, score, phi, factor, dtype, D, size):
    kind = "mixed" if (score + factor) % 2 else "matern"
    NA = 2 if kind == "mixed" or phi == AFFINE else 0
    ops, (out,), (ref,) = run_case(rng, score, phi, factor, RED["Sum"], dtype, D, size, kind=kind,
                                   NA=NA)
    sl = [o.astype(np.float64) for o in ops]
    f, psi = oracle_pairs(*sl, score, phi, factor, RED["Sum"], kind)
    check_values(out, ref, dtype, scale=value_scale(f, psi) + 1e-300)


EXP_CASES = cases(range(5), [(RED["LogSumExp"], 0), (RED["LogSumExpWeight"], 1),
                             (RED["LogSumExpWeight"], 2), (RED["SumSoftMaxWeight"], 1),
                             (RED["SumSoftMaxWeight"], 2)],
                  [AFFINE, EXP_AFFINE, PROGRAM, ONE], [np.float32, np.float64])


@pytest.mark.parametrize("score,red,phi,dtype,D,size", EXP_CASES)
def test_logsumexp_family(rng, score, red, phi, dtype, D, size):
    reduction, factor = red
    E = 2 + D % 3
    ops, (out,), (ref,) = run_case(rng, score, phi, factor, reduction, dtype, D, size, E=E,
                                   kind="mixed" if score % 2 else "matern")
    sl = [o.astype(np.float64) for o in ops]
    f, psi = oracle_pairs(*sl, score, phi, factor, reduction, "mixed" if score % 2 else "matern")
    # Rounding grows with Σ exp(φ - m) |Ψ| (weights of both signs cancel in the numerators).
    e = np.exp(f - f.max(1, keepdims=True))
    num_abs = (e[..., None] * np.abs(psi)).sum(1)
    # ... and with the rounding of the scores φ themselves, which the softmax weights feel as
    # absolute errors: |Δφ| ≈ |φ| (3 + |t|) ulp for φ = exp(t) (exp of a rounded argument).
    ulp = float(np.finfo(dtype).eps)
    with np.errstate(all="ignore"):
        growth = 3.0 + np.abs(np.log(np.abs(f))) if phi == EXP_AFFINE else 3.0
        dphi = np.nan_to_num(np.abs(f) * growth * ulp, posinf=0.0).max(1)[:, None]
    rtol = 2e-4 if np.dtype(dtype) == np.float32 else 1e-9
    spread = (dphi / rtol) * (num_abs / e.sum(1)[:, None] + np.abs(ref))
    with np.errstate(all="ignore"):
        if reduction == RED["LogSumExpWeight"]:
            # log of a weighted sum: NaN where the sum is negative, so compare where it is not.
            ok = np.isfinite(ref)
            np.testing.assert_array_equal(np.isfinite(out), ok)
            num = (e[..., None] * psi).sum(1)
            check_values(out[ok], ref[ok], dtype, scale=(1.0 + np.abs(ref) + num_abs / np.abs(num))[ok])
        elif reduction == RED["LogSumExp"]:
            check_values(out, ref, dtype, scale=1.0 + np.abs(ref))
        else:
            check_values(out, ref, dtype, scale=np.abs(ref) + num_abs / e.sum(1)[:, None] + spread)


MINMAX = ["Min", "ArgMin", "Min_ArgMin", "Max", "ArgMax", "Max_ArgMax"]
MINMAX_CASES = cases(range(5), MINMAX, [(AFFINE, 0), (EXP_AFFINE, 0), (ONE, 2), (PROGRAM, 0)],
                     [np.float32, np.float64])


def check_pick(outs, refs, name, dtype, grid):
    """Value and index outputs of a min/max/K-min reduction against the oracle's."""
    has_val = not name.startswith("Arg")
    has_idx = "Arg" in name
    if has_val:
        check_values(outs[0], refs[0], dtype, scale=1.0 + np.abs(refs[0]))
    if has_idx:
        idx, ref_idx = outs[-1], refs[-1]
        if np.dtype(dtype) == np.float64:
            np.testing.assert_array_equal(idx, ref_idx)
        else:
            # float32 may swap near ties: the selected values must be the best ones.
            np.testing.assert_array_equal(idx < 0, ref_idx < 0)
            M = grid.shape[0]
            g = grid.reshape(M, grid.shape[1], -1)
            ii = idx.reshape(M, -1, g.shape[2])
            ri = ref_idx.reshape(M, -1, g.shape[2])
            picked = np.take_along_axis(g, np.maximum(ii, 0), axis=1)
            best = np.take_along_axis(g, np.maximum(ri, 0), axis=1)
            assert_close(np.where(ii < 0, 0, picked), np.where(ri < 0, 0, best), dtype,
                         rtol32=2e-4, scale=1.0 + np.abs(best))


@pytest.mark.parametrize("score,name,pf,dtype,D,size", MINMAX_CASES)
def test_min_max(rng, score, name, pf, dtype, D, size):
    phi, factor = pf
    ops, outs, refs = run_case(rng, score, phi, factor, RED[name], dtype, D, size, kind="mixed")
    sl = [o.astype(np.float64) for o in ops]
    f, psi = oracle_pairs(*sl, score, phi, factor, RED[name], "mixed")
    check_pick(outs, refs, name, dtype, f[..., None] * psi)


KMIN_CASES = cases(range(5), ["KMin", "ArgKMin", "KMin_ArgKMin"],
                   [(AFFINE, 0), (EXP_AFFINE, 0), (PROGRAM, 0), (ONE, 2)],
                   [1, 4], [np.float32, np.float64])


@pytest.mark.parametrize("score,name,pf,k,dtype,D,size", KMIN_CASES)
def test_kmin(rng, score, name, pf, k, dtype, D, size):
    phi, factor = pf
    ops, outs, refs = run_case(rng, score, phi, factor, RED[name], dtype, D, size, k=k,
                               kind="matern")
    sl = [o.astype(np.float64) for o in ops]
    f, psi = oracle_pairs(*sl, score, phi, factor, RED[name], "matern")
    check_pick(outs, refs, name, dtype, f[..., None] * psi)


# ---------------------------------------------------------------- hot bodies vs generic


HOT_CASES = list(itertools.product(
    [1, 2], [1, 2, 3, 4],
    [("Sum", AFFINE, 0), ("Sum", EXP_AFFINE, 0), ("Sum", AFFINE, 1), ("Sum", EXP_AFFINE, 1),
     ("LogSumExp", AFFINE, 0), ("ArgKMin", AFFINE, 0), ("KMin_ArgKMin", AFFINE, 0)],
    [np.float32, np.float64]))


@pytest.fixture
def generic_only():
    previous = native.cpu.set_fused_emulation_hot(False)
    yield
    native.cpu.set_fused_emulation_hot(previous)


def _hot_case(rng, score, D, spec, dtype, n_rows):
    name, phi, factor = spec
    N = [1, 127, 300, 1000][D - 1]
    ops = operands(rng, n_rows, N, D, dtype, NC=2, NU=1, NV=0 if factor else 1, E=1,
                   scale=0.6)
    ops[2][..., 0] = -0.7 if (score == 1 and name != "ArgKMin" and name != "KMin_ArgKMin") else 0.4
    k = 5 if "KMin" in name else 0
    return ops, name, phi, factor, k


@pytest.mark.parametrize("score,D,spec,dtype", HOT_CASES)
def test_hot_bodies_match_the_oracle(rng, score, D, spec, dtype):
    """The calls the hot bodies take (sqdist/dot × affine/exp × Sum/LSE/K-min, D ≤ 4), sizes
    around their 256-row blocks."""
    _check_hot_case(rng, score, D, spec, dtype, [1, 255, 257, 600][D - 1])


@pytest.mark.parametrize("score,D,spec,dtype", HOT_CASES[::3])
def test_generic_body_takes_the_hot_calls_too(rng, generic_only, score, D, spec, dtype):
    _check_hot_case(rng, score, D, spec, dtype, 129)


def _check_hot_case(rng, score, D, spec, dtype, n):
    """One call of the hot bodies' kind against the oracle (whichever body runs it)."""
    ops, name, phi, factor, k = _hot_case(rng, score, D, spec, dtype, n)
    outs = fused(ops, score, phi, factor, RED[name], k=k)
    refs = oracle(ops, score, phi, factor, RED[name], k)
    sl = [o.astype(np.float64) for o in ops]
    f, psi = oracle_pairs(*sl, score, phi, factor, RED[name], None)
    if name == "Sum":
        check_values(outs[0], refs[0], dtype, scale=value_scale(f, psi))
    elif name == "LogSumExp":
        check_values(outs[0], refs[0], dtype, scale=1.0 + np.abs(refs[0]))
    else:
        check_pick(outs, refs, name, dtype, f[..., None] * psi)


# The hot φ-program body (src/fused/phi_rows.h: sqdist, D ≤ 4, Sum with factor none, Z of
# E ≤ 3 or the difference, NU, NV ≤ 1, NA ≤ 3, the block interpreter's ops) against the oracle and
# against the generic body; then calls just outside it, which must fall back to the generic body.
# (factor, NA, E, D, dtype, (M, N), whether the hot φ body takes it, program kind)
HOT_PHI_CASES = [
    (0, 2, 0, 1, np.float32, (1, 130), True, "hot"),
    (1, 0, 1, 3, np.float64, (257, 1), True, "hot"),
    (1, 0, 3, 4, np.float32, (300, 1000), True, "hot"),     # several splits, merged
    (2, 3, 0, 3, np.float64, (129, 257), True, "hot"),
    (2, 0, 0, 2, np.float32, (33, 35), True, "hot"),
    (2, 1, 0, 4, np.float64, (7, 5), True, "matern"),
    (1, 0, 2, 3, np.float32, (300, 0), True, "hot"),        # empty inner axis: zeros
    (2, 2, 0, 5, np.float32, (40, 70), False, "hot"),       # D > 4
    (1, 0, 4, 2, np.float64, (40, 70), False, "hot"),       # E > 3
    (0, 4, 0, 2, np.float32, (40, 70), False, "hot"),       # NA > 3
    (1, 1, 2, 2, np.float64, (40, 70), False, "hot"),       # a_ij with Z_j
    (0, 2, 0, 3, np.float32, (40, 70), False, "mixed"),     # Atan: not a block-interpreter op
]


@pytest.mark.parametrize("factor,NA,E,D,dtype,size,takes,kind", HOT_PHI_CASES)
def test_hot_phi_program_body(rng, factor, NA, E, D, dtype, size, takes, kind):
    M, N = size
    ops = operands(rng, M, N, D, dtype, NC=4, NU=1, NV=1, NA=NA, E=E, scale=0.7)
    ops[2] = coefficients(ops, 1, PROGRAM, kind)
    prog = program_for(PROGRAM, kind, 1, D)
    (ref,) = oracle(ops, 1, PROGRAM, factor, RED["Sum"], 0, kind)
    sl = [o.astype(np.float64) for o in ops]
    f, psi = oracle_pairs(*sl, 1, PROGRAM, factor, RED["Sum"], kind)
    for allow_hot in (True, False):
        previous = native.cpu.set_fused_emulation_hot(allow_hot)
        try:
            before = native.cpu.fused_emulation_hot_phi_launches()
            (out,) = fused(ops, 1, PROGRAM, factor, RED["Sum"], program=prog)
            launches = native.cpu.fused_emulation_hot_phi_launches() - before
        finally:
            native.cpu.set_fused_emulation_hot(previous)
        assert launches == (1 if takes and allow_hot else 0)
        check_values(out, ref, dtype, scale=value_scale(f, psi) + 1e-300)


# ---------------------------------------------------------------- edges


EMPTY = {"Sum": [0.0], "LogSumExp": [-np.inf], "LogSumExpWeight": [-np.inf],
         "SumSoftMaxWeight": [np.nan], "Min": [np.inf], "ArgMin": [-1], "Min_ArgMin": [np.inf, -1],
         "Max": [-np.inf], "ArgMax": [-1], "Max_ArgMax": [-np.inf, -1], "KMin": [np.inf],
         "ArgKMin": [-1], "KMin_ArgKMin": [np.inf, -1]}


@pytest.mark.parametrize("name", list(EMPTY))
@pytest.mark.parametrize("hot", [True, False])
def test_empty_inner_axis(rng, name, hot):
    """n_inner = 0: the empty-axis values of src/reductions.h, hot and generic bodies."""
    factor = 1 if name in ("LogSumExpWeight", "SumSoftMaxWeight") else 0
    k = 3 if "KMin" in name else 0
    ops = operands(rng, 300, 0, 3, np.float32, NV=1, E=1)
    previous = native.cpu.set_fused_emulation_hot(hot)
    try:
        outs = fused(ops, 1, AFFINE, factor, RED[name], k=k)
    finally:
        native.cpu.set_fused_emulation_hot(previous)
    for out, want in zip(outs, EMPTY[name]):
        np.testing.assert_array_equal(out, np.full(out.shape, want, out.dtype))


def test_empty_outer_axis_and_empty_batch(rng):
    for shape_x, shape_y in [((0, 3), (5, 3)), ((0, 4, 3), (0, 5, 3))]:
        ops = operands(rng, 1, 1, 3, np.float64)
        ops[0] = np.zeros(shape_x)
        ops[1] = np.zeros(shape_y)
        b = shape_x[:-2]
        ops[2:] = [np.zeros(b + (1,))] + [np.zeros(b + (shape_x[-2] if i % 2 == 0 else shape_y[-2], 0))
                                           for i in range(5)]
        (out,) = fused(ops, 1, EXP_AFFINE, 0, RED["Sum"])
        assert out.shape == b + (shape_x[-2], 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hot", [True, False])
def test_batch_dims_broadcast(rng, dtype, hot):
    """Batch dims (2, 3): operands with 1 entries are broadcast, not copied."""
    M, N, D = 70, 300, 3
    ops = operands(rng, M, N, D, dtype, NU=1, NV=1, E=1, batch=(2, 3),
                   X=(2, 1), Y=(1, 3), C=(1, 1), U=(2, 3), V=(1, 1), Z=(2, 3))
    previous = native.cpu.set_fused_emulation_hot(hot)
    try:
        for name, phi, factor, k in [("Sum", EXP_AFFINE, 0, 0), ("LogSumExp", AFFINE, 0, 0),
                                     ("ArgKMin", AFFINE, 0, 4), ("Max_ArgMax", AFFINE, 0, 0),
                                     ("SumSoftMaxWeight", AFFINE, 1, 0)]:
            ops[2][..., 0] = -0.5 if name == "Sum" else 1.0
            outs = fused(ops, 1, phi, factor, RED[name], k=k)
            refs = oracle(ops, 1, phi, factor, RED[name], k)
            assert outs[0].shape[:3] == (2, 3, M)
            if "Arg" in name and np.dtype(dtype) == np.float64:
                np.testing.assert_array_equal(outs[-1], refs[-1])
            if not name.startswith("Arg"):
                check_values(outs[0], refs[0], dtype, scale=np.abs(refs[0]) + 1.0)
    finally:
        native.cpu.set_fused_emulation_hot(previous)


def test_more_than_four_batch_dims(rng):
    """Leading batch dims beyond the four the kernels resolve run as separate launches."""
    ops = operands(rng, 9, 140, 2, np.float64, NV=1, batch=(2, 1, 2, 1, 2, 3), X=(2, 1, 2, 1, 1, 3))
    ops[2][..., 0] = -1.0
    (out,) = fused(ops, 1, EXP_AFFINE, 0, RED["Sum"])
    (ref,) = oracle(ops, 1, EXP_AFFINE, 0, RED["Sum"], 0)
    check_values(out, ref, np.float64)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_index_dtypes(rng, index_dtype):
    ops = operands(rng, 20, 300, 3, np.float64)
    ops[2][..., 0] = 1.0
    for name, k in [("ArgMin", 0), ("ArgKMin", 3), ("Max_ArgMax", 0), ("KMin_ArgKMin", 3)]:
        outs = fused(ops, 1, AFFINE, 0, RED[name], k=k, index_dtype=index_dtype)
        refs = oracle(ops, 1, AFFINE, 0, RED[name], k)
        assert outs[-1].dtype == index_dtype
        np.testing.assert_array_equal(outs[-1], refs[-1])


@pytest.mark.parametrize("hot", [True, False])
@pytest.mark.parametrize("N", [9, 300])
def test_exact_ties_keep_the_lowest_index(rng, hot, N):
    """Integer points: many exactly equal distances, in float32 too; ties across tiles and
    splits (N = 300: three tiles, merged in inner order)."""
    M, D = 40, 2
    X = rng.integers(-2, 3, (M, D)).astype(np.float32)
    Y = rng.integers(-2, 3, (N, D)).astype(np.float32)
    ops = [X, Y, np.ones(1, np.float32)] + [np.zeros((n, 0), np.float32) for n in (M, N, M, N, N)]
    previous = native.cpu.set_fused_emulation_hot(hot)
    try:
        for name, k in [("Min_ArgMin", 0), ("Max_ArgMax", 0), ("KMin_ArgKMin", 6)]:
            outs = fused(ops, 1, AFFINE, 0, RED[name], k=k)
            refs = oracle(ops, 1, AFFINE, 0, RED[name], k)
            for out, ref in zip(outs, refs):
                np.testing.assert_array_equal(out, ref.astype(out.dtype))
    finally:
        native.cpu.set_fused_emulation_hot(previous)


@pytest.mark.parametrize("hot", [True, False])
def test_nan_and_infinite_scores(rng, hot):
    """NaN scores are skipped by min/max/K-min and make logsumexp NaN; rows of only NaN or ±inf
    values still pick the first ±inf as reductions.h does; -inf scores add nothing to
    logsumexp, +inf makes it +inf. V_j (added to the score) injects them."""
    M, N, D = 6, 260, 1
    X = np.zeros((M, D))
    Y = rng.standard_normal((N, D))
    V = rng.standard_normal((N, 1))
    U = np.zeros((M, 1))
    U[1] = np.nan               # row 1: every score NaN
    U[2] = np.inf               # row 2: every score +inf
    U[3] = -np.inf              # row 3: every score -inf
    V[[5, 140]] = np.nan        # some NaN scores in every row
    V[200] = -np.inf
    ops = [X, Y, np.ones(1), U, V, np.zeros((M, 0)), np.zeros((N, 0)), np.zeros((N, 0))]
    previous = native.cpu.set_fused_emulation_hot(hot)
    try:
        for name, k in [("Min_ArgMin", 0), ("Max_ArgMax", 0), ("KMin_ArgKMin", 3)]:
            outs = fused(ops, 1, AFFINE, 0, RED[name], k=k)
            refs = oracle(ops, 1, AFFINE, 0, RED[name], k)
            for out, ref in zip(outs, refs):
                np.testing.assert_array_equal(out, ref)
        (lse,) = fused(ops, 1, AFFINE, 0, RED["LogSumExp"])
        assert np.isnan(lse[[0, 1, 4, 5]]).all()
        assert lse[2, 0] == np.inf and np.isnan(lse[3, 0])  # row 3: -inf and NaN scores
        # Without the NaN columns: -inf scores add nothing, a row of -inf gives -inf.
        V[[5, 140]] = 0.0
        (lse,) = fused(ops, 1, AFFINE, 0, RED["LogSumExp"])
        (ref,) = oracle(ops, 1, AFFINE, 0, RED["LogSumExp"], 0)
        assert lse[3, 0] == -np.inf and lse[2, 0] == np.inf and np.isnan(lse[1, 0])
        ok = [0, 4, 5]
        check_values(lse[ok], ref[ok], np.float64)
    finally:
        native.cpu.set_fused_emulation_hot(previous)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logsumexp_of_huge_scores(rng, dtype):
    """Scores far beyond exp's range neither overflow nor vanish; the running maximum moves up
    across tiles and splits (increasing V)."""
    M, N = 33, 700
    ops = operands(rng, M, N, 3, dtype, NV=1)
    ops[4] = (np.linspace(-3e3, 3e3, N)[:, None] * (1 if dtype == np.float64 else 0.01)).astype(dtype)
    for sign in (1.0, -1.0):
        ops[2][0] = -sign
        (out,) = fused(ops, 1, AFFINE, 0, RED["LogSumExp"])
        (ref,) = oracle(ops, 1, AFFINE, 0, RED["LogSumExp"], 0)
        check_values(out, ref, dtype, scale=1.0 + np.abs(ref))


def test_float32_sums_are_double_across_tiles(rng):
    """10^5 positive float32 terms of ~1: a float32 running sum would lose ~1e-3."""
    N = 100_000
    ops = operands(rng, 3, N, 1, np.float32, NV=0)
    ops[0][:] = 0
    ops[1] = (rng.uniform(0, 1e-2, (N, 1))).astype(np.float32)
    ops[2][0] = -1.0
    (out,) = fused(ops, 1, EXP_AFFINE, 0, RED["Sum"])
    (ref,) = oracle(ops, 1, EXP_AFFINE, 0, RED["Sum"], 0)
    np.testing.assert_allclose(out, ref, rtol=2e-6)


# ---------------------------------------------------------------- errors


def _error_case(rng, **changes):
    ops = operands(rng, 5, 7, 3, np.float32, NV=1, E=2)
    kw = dict(score=1, phi=AFFINE, factor=0, reduction=RED["Sum"], k=0, program=())
    kw.update(changes)
    return ops, kw


@pytest.mark.parametrize("changes,message", [
    (dict(score=7), "attribute score = 7 is unknown"),
    (dict(phi=9), "attribute phi = 9 is unknown"),
    (dict(factor=3), "attribute factor = 3 is unknown"),
    (dict(reduction=99), "attribute reduction = 99 is unknown"),
    (dict(reduction=RED["LogSumExp"], factor=1), "attribute factor = 1 is not allowed with LogSumExp"),
    (dict(reduction=RED["SumSoftMaxWeight"], factor=0), "is not allowed with SumSoftMaxWeight"),
    (dict(reduction=RED["ArgMin"], factor=2), "is not allowed with ArgMin"),
    (dict(reduction=RED["KMin"], k=0), "attribute k = 0 must be >= 1 for KMin"),
    (dict(k=2), "attribute k = 2 must be 0 for Sum"),
    (dict(phi=PROGRAM, program=[OP["Exp"], 0, S_REF, 0] * 33), "33 instructions, at most 32"),
    (dict(phi=PROGRAM, program=[OP["Exp"], 0, S_REF]), "4 per instruction"),
    (dict(phi=PROGRAM, program=()), "at least one instruction"),
    (dict(program=[OP["Exp"], 0, S_REF, 0]), "phi = 0 is not 2 (program)"),
    (dict(phi=PROGRAM, program=[OP["Exp"], 0, 6, 0]), "operand a = 6 is not a reference"),
    (dict(phi=PROGRAM, program=[OP["Add"], 0, S_REF, U_REF]), "reads U_i0 but U has NU = 0"),
    (dict(phi=PROGRAM, program=[OP["Add"], 0, S_REF, V_REF + 1]), "reads V_j1 but V has NV = 1"),
    (dict(phi=PROGRAM, program=[OP["Add"], 0, S_REF, C_REF + 4]), "reads C[4] but C has NC = 4"),
    (dict(phi=PROGRAM, program=[OP["Add"], 4, S_REF, S_REF]), "dst = 4 is not a slot"),
    (dict(phi=PROGRAM, program=[OP["SqDist"], 0, S_REF, S_REF]), "opcode 16 is not a unary or binary"),
    (dict(phi=PROGRAM, program=[OP["IfElse"], 0, S_REF, S_REF]), "opcode 35 is not a unary or binary"),
    (dict(phi=PROGRAM, program=[OP["Exp"], 1, S_REF, 0, OP["Cos"], 0, 1, 0]),
     "instruction 1: opcode 19 (Cos) is not run by the fused kernels"),
    (dict(phi=PROGRAM, program=[OP["Sin"], 0, S_REF, 0]), "opcode 18 (Sin) is not run"),
    (dict(phi=PROGRAM, program=[OP["SinXDivX"], 0, S_REF, 0]), "opcode 25 (SinXDivX) is not run"),
])
def test_bad_attributes_are_named(rng, changes, message):
    ops, kw = _error_case(rng, **changes)
    shapes = [jax.ShapeDtypeStruct((5, 1), np.float32)]
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        fused(ops, kw["score"], kw["phi"], kw["factor"], kw["reduction"], k=kw["k"],
              program=kw["program"], shapes=shapes)


def test_bad_operands_are_named(rng):
    ops = operands(rng, 5, 7, 3, np.float32, NV=1, E=2)
    shapes = [jax.ShapeDtypeStruct((5, 1), np.float32)]
    bad = list(ops)
    bad[1] = bad[1][:, :2]
    with pytest.raises(Exception, match=r"operand Y has shape \(7, 2\), expected \(\*b, 7, 3\)"):
        fused(bad, 1, AFFINE, 0, RED["Sum"], shapes=shapes)
    bad = list(ops)
    bad[4] = bad[4][:3]
    with pytest.raises(Exception, match=r"operand V has shape \(3, 1\), expected \(\*b, 7, 1\)"):
        fused(bad, 1, AFFINE, 0, RED["Sum"], shapes=shapes)
    bad = list(ops)
    bad[3] = bad[3].astype(np.float64)
    with pytest.raises(Exception, match="operand U has dtype float64, expected float32"):
        fused(bad, 1, AFFINE, 0, RED["Sum"], shapes=shapes)
    with pytest.raises(Exception, match=r"output 0 has shape \(5, 2\), expected \(\*b, 5, 1\)"):
        fused(ops, 1, AFFINE, 0, RED["Sum"], shapes=[jax.ShapeDtypeStruct((5, 2), np.float32)])
    bad = list(ops)
    bad[2] = bad[2][:3]
    with pytest.raises(Exception, match="weighted sqdist"):
        fused(bad, 4, AFFINE, 0, RED["Sum"], shapes=shapes)  # NC = 3 < D + 1
    bad = list(ops)
    bad[5] = np.ones((5, 2), np.float32)
    bad[6] = np.ones((7, 2), np.float32)
    with pytest.raises(Exception, match="multiplies the pair value of Sum only"):
        fused(bad, 1, AFFINE, 0, RED["Min"], shapes=shapes)
