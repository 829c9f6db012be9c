"""The pure-JAX chunked path (platforms without a native kernel) against the dense oracle."""

import jax.numpy as jnp
import numpy as np
import pytest
from oracle import assert_close

import jaxkeops.reference as reference
from jaxkeops import Pm, Vi, Vj


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("M,N", [(1, 1), (37, 1000), (1000, 3)])
def test_chunked_matches_dense(rng, monkeypatch, axis, M, N):
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 5000)  # force many blocks, a ragged last one
    x = rng.normal(size=(M, 3))
    y = rng.normal(size=(N, 3))
    b = rng.normal(size=(N if axis == 1 else M, 2))
    s = np.array([0.7])
    w = Vj(b) if axis == 1 else Vi(b)
    F = (-Vi(x).sqdist(Vj(y)) * Pm(s)).exp() * w + Vi(x).sum(-1)
    args = dict(
        reduction="Sum", reduction_params=(), axis=axis, ni=M, nj=N,
    )
    cats = tuple(v.cat for v in F.variables)
    operands = [jnp.asarray(v.array) for v in F.variables]
    (chunked,) = reference.chunked_reduce((F.formula,), cats, operands, **args)
    (dense,) = reference.dense_reduce((F.formula,), cats, operands, **args)
    assert_close(chunked, dense, np.float64)
