"""A jnp transcription of docs/fused-kernels.md: what one `jaxkeops_fused` call computes, on the
materialised grid. The tests put it in place of the FFI call
(`families._substitute_fused_call`) to check the matcher's plans end to end without the native
target; it also documents the contract in code."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxkeops.ops import OPS
from jaxkeops.reductions import REDUCTIONS

_BY_OPCODE = {spec.opcode: spec for spec in OPS.values()}
_BY_CODE = {spec.code: spec for spec in REDUCTIONS.values()}


def _program(code, s, a, U, V, C):
    slots = [None] * 4

    def ref(r):
        if r < 4:
            return slots[r]
        if r == 4:
            return s
        if r == 5:
            return a
        if 8 <= r < 16:
            return U[..., r - 8]
        if 16 <= r < 24:
            return V[..., r - 16]
        return C[..., r - 32]

    for k in range(0, len(code), 4):
        opcode, dst, x, y = (int(v) for v in code[k:k + 4])
        spec = _BY_OPCODE[opcode]
        if spec.name == "Pow":
            value = spec.reference(ref(x), (y,))
        elif spec.arity == 1:
            value = spec.reference(ref(x), ())
        else:
            value = spec.reference(ref(x), ref(y), ())
        slots[dst] = value
    return slots[0]


def fused_call(results, X, Y, C, U, V, AO, AI, Z, *, score, phi, program, factor, reduction, k):
    name = _BY_CODE[int(reduction)].name
    value_dim = {0: 1, 1: Z.shape[-1], 2: X.shape[-1]}[int(factor)]
    dims = (value_dim,) if REDUCTIONS[name].n_formulas == 1 else (1, value_dim)
    params = (int(k),) if name.startswith(("KMin", "ArgKMin")) else ()
    trailing = REDUCTIONS[name].outputs(dims, params, X.dtype)[0][0]
    nb = results[0].ndim - len(trailing) - 1
    batch = results[0].shape[:nb]

    def full(x):
        return jnp.broadcast_to(x, batch + x.shape[nb:])

    X, Y, C, U, V, AO, AI, Z = (full(t) for t in (X, Y, C, U, V, AO, AI, Z))
    D = X.shape[-1]
    xi, yj = X[..., :, None, :], Y[..., None, :, :]
    cc = C[..., None, None, :]  # (*b, 1, 1, NC)
    score = int(score)
    if score == 0:
        s = jnp.zeros(X.shape[:-1] + (Y.shape[-2],), X.dtype)
    elif score == 1:
        s = jnp.sum((xi - yj) ** 2, -1)
    elif score == 2:
        s = jnp.sum(xi * yj, -1)
    elif score == 3:
        s = jnp.sum(jnp.abs(xi - yj), -1)
    else:
        s = jnp.sum(cc[..., :D] * (xi - yj) ** 2, -1)
    NA = AO.shape[-1]
    a = jnp.sum(AO[..., :, None, :] * AI[..., None, :, :], -1) if NA else None
    Ui, Vj = U[..., :, None, :], V[..., None, :, :]
    phi = int(phi)
    if phi in (0, 1):
        c = D if score == 4 else 0
        t = cc[..., c] * s
        if U.shape[-1]:
            t = t + Ui[..., 0]
        if V.shape[-1]:
            t = t + Vj[..., 0]
        value = t if phi == 0 else jnp.exp(t)
    elif phi == 3:
        value = jnp.ones_like(s)
    else:
        value = _program(np.asarray(program), s, a, Ui, Vj, cc)
        value = jnp.broadcast_to(value, s.shape)
    if phi != 2 and NA and name == "Sum":
        value = value * a
    factor = int(factor)
    if factor == 0:
        psi = None
    elif factor == 1:
        psi = jnp.broadcast_to(Z[..., None, :, :], s.shape + (Z.shape[-1],))
    else:
        psi = xi - yj
    if name in ("LogSumExpWeight", "SumSoftMaxWeight"):
        values = (value[..., None], psi)
    elif psi is None:
        values = (value[..., None],)
    else:
        values = (value[..., None] * psi,)
    flat = [v.reshape((-1,) + v.shape[nb:]) for v in values]
    outs = jax.vmap(lambda *v: REDUCTIONS[name].dense(v, params))(*flat)
    return tuple(o.reshape(r.shape).astype(r.dtype) for o, r in zip(outs, results))
