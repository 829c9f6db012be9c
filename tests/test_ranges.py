"""Block-sparse reductions (`ranges=`, `K.ranges`) against a dense masked numpy reference, and
the cluster tools against straightforward numpy versions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkeops
import jaxkeops.reference as reference
from jaxkeops import LazyTensor, Vi, Vj, cluster


# --- references -----------------------------------------------------------------------------


def np_mask(ranges, axis, n_outer, n_inner):
    """Which (outer, inner) pairs interact, read off the tuple with plain loops."""
    clusters, slices, inner = [np.asarray(r) for r in (ranges[:3] if axis == 1 else ranges[3:])]
    mask = np.zeros((n_outer, n_inner), bool)
    for c, (a, b) in enumerate(clusters):
        start = 0 if c == 0 else slices[c - 1]
        for s, e in inner[start: slices[c]]:
            mask[a:b, s:e] = True
    return mask


def random_runs(rng, n, n_runs):
    """A partition of [0, n) into n_runs non-empty runs, as (n_runs, 2)."""
    cuts = np.sort(rng.choice(np.arange(1, n), size=n_runs - 1, replace=False))
    edges = np.concatenate([[0], cuts, [n]])
    return np.stack([edges[:-1], edges[1:]], axis=1).astype(np.int32)


def random_ranges(rng, M, N, drop_i=True):
    """A random clustering of both axes and a random interaction matrix; one i cluster (and
    one j cluster) left out of the clusters so that some rows interact with nothing."""
    ri, rj = random_runs(rng, M, 4), random_runs(rng, N, 5)
    keep = rng.random((4, 5)) < 0.5
    keep[0, :] = False  # a cluster with no interaction
    ranges = list(cluster.from_matrix(ri, rj, keep))
    if drop_i:  # rows of the last i cluster and the last j cluster belong to no cluster
        for c, s in ((0, 1), (3, 4)):
            n_kept = ranges[c].shape[0] - 1
            ranges[c], ranges[s] = ranges[c][:n_kept], ranges[s][:n_kept]
    return tuple(ranges)


def gaussian(rng, M, N, D=3, E=2, dtype=np.float64):
    x = rng.normal(size=(M, D)).astype(dtype)
    y = rng.normal(size=(N, D)).astype(dtype)
    b = rng.normal(size=(N, E)).astype(dtype)
    return x, y, b


def np_scores(x, y):
    return -((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)  # (M, N)


# --- reductions -----------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1])
def test_sum_both_axes_keyword_and_attribute(rng, axis):
    M, N = 53, 71
    x, y, b = gaussian(rng, M, N)
    a = rng.normal(size=(M, 2))
    ranges = random_ranges(rng, M, N)
    K = (-Vi(x).sqdist(Vj(y))).exp()
    S = np.exp(np_scores(x, y))
    if axis == 1:
        expected = (S * np_mask(ranges, 1, M, N)) @ b
        got = jax.jit(lambda K, r: (K * Vj(b)).sum(1, ranges=r))(K, ranges)
        K.ranges = ranges
        by_attribute = K @ b
    else:
        expected = (S * np_mask(ranges, 0, N, M).T).T @ a
        got = jax.jit(lambda K, r: (K * Vi(a)).sum(0, ranges=r))(K, ranges)
        K.ranges = ranges
        by_attribute = (K * Vi(a)).sum(0)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(by_attribute, expected, rtol=1e-12, atol=1e-12)
    assert np.any(expected == 0)  # rows outside every cluster (or with no pair) give 0


def test_sum_float32_dense_ranges_equal_dense(rng):
    """Ranges that keep every pair (as two clusters each way) give the dense result."""
    M, N = 300, 517
    x, y, b = gaussian(rng, M, N, dtype=np.float32)
    ranges = cluster.from_matrix(random_runs(rng, M, 2), random_runs(rng, N, 3),
                                 np.ones((2, 3), bool))
    K = (-Vi(x).sqdist(Vj(y))).exp() * Vj(b)
    np.testing.assert_allclose(K.sum(1, ranges=ranges), K.sum(1), rtol=1e-5, atol=1e-6)


def _masked(values, mask, fill):
    return np.where(mask[..., None] if values.ndim == 3 else mask, values, fill)


@pytest.mark.parametrize("axis", [0, 1])
def test_logsumexp_argmin_argkmin_sumsoftmaxweight(rng, axis):
    M, N = 41, 66
    x, y, b = gaussian(rng, M, N)
    w = rng.normal(size=(M if axis == 0 else N, 2))
    ranges = random_ranges(rng, M, N)
    S = np_scores(x, y) if axis == 1 else np_scores(x, y).T  # (outer, inner)
    mask = np_mask(ranges, axis, *S.shape)
    D = Vi(x).sqdist(Vj(y))
    W = Vj(w) if axis == 1 else Vi(w)
    empty = ~mask.any(1)
    assert empty.any() and not empty.all()

    lse = (-D).logsumexp(axis, ranges=ranges)[:, 0]
    Sm = np.where(mask, S, -np.inf)
    with np.errstate(divide="ignore"):
        expected_lse = np.log(np.exp(Sm).sum(1))
    np.testing.assert_allclose(lse, expected_lse, rtol=1e-12)

    am = D.argmin(axis, ranges=ranges)[:, 0]
    expected_am = np.where(empty, -1, np.argmin(np.where(mask, -S, np.inf), 1))
    np.testing.assert_array_equal(am, expected_am)

    # argKmin with K larger than some rows' pair counts: missing slots are -1.
    ak = D.argKmin(3, axis, ranges=ranges)
    order = np.argsort(np.where(mask, -S, np.inf), 1, kind="stable")[:, :3]
    expected_ak = np.where(np.arange(3) < mask.sum(1, keepdims=True), order, -1)
    np.testing.assert_array_equal(ak, expected_ak)
    assert (mask.sum(1) < 3).any()

    ssw = (-D).sumsoftmaxweight(W, axis, ranges=ranges)
    e = np.exp(Sm)
    with np.errstate(invalid="ignore"):
        expected_ssw = (e @ w) / e.sum(1, keepdims=True)
    np.testing.assert_allclose(ssw, expected_ssw, rtol=1e-12, atol=1e-12)  # NaN rows equal


def test_min_and_kmin_values_fill_empty_rows(rng):
    M, N = 29, 40
    x, y, _ = gaussian(rng, M, N)
    ranges = random_ranges(rng, M, N)
    mask = np_mask(ranges, 1, M, N)
    D = Vi(x).sqdist(Vj(y))
    Dn = -np_scores(x, y)
    vals, idx = D.Kmin_argKmin(2, 1, ranges=ranges)
    srt = np.sort(np.where(mask, Dn, np.inf), 1)[:, :2]
    np.testing.assert_allclose(vals, srt, rtol=1e-12)
    np.testing.assert_allclose(D.min(1, ranges=ranges)[:, 0], srt[:, 0], rtol=1e-12)
    assert np.isinf(np.asarray(vals)[~mask.any(1)]).all()
    assert (np.asarray(idx)[~mask.any(1)] == -1).all()


def test_vmap_shared_and_batched_ranges(rng):
    M, N = 33, 45
    x, y, _ = gaussian(rng, M, N)
    bs = rng.normal(size=(3, N, 1))
    r1 = random_ranges(rng, M, N)
    # Same shapes, other values: the i clusters' rows handed out in reverse order.
    r2 = (r1[0][::-1],) + r1[1:]
    S = np.exp(np_scores(x, y))

    def f(b, r):
        return ((-Vi(x).sqdist(Vj(y))).exp() * Vj(b)).sum(1, ranges=r)

    shared = jax.jit(jax.vmap(f, in_axes=(0, None)))(bs, r1)
    for k in range(3):
        np.testing.assert_allclose(shared[k], (S * np_mask(r1, 1, M, N)) @ bs[k], rtol=1e-12)
    # One clustering per batch element: one call each.
    stacked = tuple(jnp.stack([a, a2]) for a, a2 in zip(r1, r2))
    per = jax.vmap(f, in_axes=(None, 0))(bs[0], stacked)
    for k, r in enumerate((r1, r2)):
        np.testing.assert_allclose(per[k], (S * np_mask(r, 1, M, N)) @ bs[0], rtol=1e-12)


def test_keops_batch_dims_share_the_ranges(rng):
    """A LazyTensor with batch dims (x broadcast over the batch): one ranges tuple for all."""
    M, N = 21, 34
    x = rng.normal(size=(M, 3))
    ys = rng.normal(size=(2, N, 3))
    ranges = random_ranges(rng, M, N)
    K = (-LazyTensor(x[None, :, None, :]).sqdist(LazyTensor(ys[:, None, :, :]))).exp()
    got = K.sum(2, ranges=ranges)  # (2, M, 1)
    mask = np_mask(ranges, 1, M, N)
    for k in range(2):
        expected = (np.exp(np_scores(x, ys[k])) * mask).sum(1, keepdims=True)
        np.testing.assert_allclose(got[k], expected, rtol=1e-12)


def test_grad_sum_and_logsumexp(rng):
    """Gradients in x, y and b (the transposed reductions read the other half of the tuple)
    against jax.grad of a dense masked jnp computation."""
    M, N = 23, 31
    x, y, b = gaussian(rng, M, N, E=1)
    # Both halves describe the same blocks (as from_matrix makes them): the gradient of the
    # masked matrix is then what the transposed reductions compute.
    ranges = random_ranges(rng, M, N, drop_i=False)
    mask_ij = jnp.asarray(np_mask(ranges, 1, M, N))
    np.testing.assert_array_equal(mask_ij, np_mask(ranges, 0, N, M).T)

    def keops_loss(x, y, b):
        K = (-Vi(x).sqdist(Vj(y))).exp()
        K.ranges = ranges
        s = (K * Vj(b)).sum(1)
        lse = (-Vi(x).sqdist(Vj(y))).logsumexp(0, ranges=ranges)
        return (jnp.sin(s) ** 2).sum() + jnp.where(jnp.isfinite(lse), lse, 0).sum()

    def dense_loss(x, y, b):
        S = -((x[:, None] - y[None]) ** 2).sum(-1)
        s = (jnp.where(mask_ij, jnp.exp(S), 0) @ b)
        lse = jax.nn.logsumexp(jnp.where(mask_ij, S, -jnp.inf), axis=0)
        return (jnp.sin(s) ** 2).sum() + jnp.where(jnp.isfinite(lse), lse, 0).sum()

    got = jax.jit(jax.grad(keops_loss, argnums=(0, 1, 2)))(x, y, b)
    expected = jax.grad(dense_loss, argnums=(0, 1, 2))(x, y, b)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)


def test_grad_of_kmin_values(rng):
    M, N = 17, 25
    x, y, _ = gaussian(rng, M, N)
    ranges = random_ranges(rng, M, N, drop_i=False)
    mask = jnp.asarray(np_mask(ranges, 1, M, N))

    def keops(x):
        v = Vi(x).sqdist(Vj(y)).Kmin(2, 1, ranges=ranges)
        return jnp.where(jnp.isfinite(v), v, 0).sum()

    def dense(x):
        d = jnp.where(mask, ((x[:, None] - y[None]) ** 2).sum(-1), jnp.inf)
        v = -jax.lax.top_k(-d, 2)[0]
        return jnp.where(jnp.isfinite(v), v, 0).sum()

    np.testing.assert_allclose(jax.grad(keops)(x), jax.grad(dense)(x), rtol=1e-10, atol=1e-12)


def test_fallback_masks_the_grid(rng, monkeypatch):
    """The pure-JAX chunked path (platforms without a native kernel) honours ranges."""
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 2000)  # many blocks, a ragged last one
    M, N = 61, 37
    x, y, _ = gaussian(rng, M, N)
    ranges = random_ranges(rng, M, N)
    F = Vi(x).sqdist(Vj(y))
    cats = tuple(v.cat for v in F.variables)
    ops = [jnp.asarray(v.array) for v in F.variables]
    S = -np_scores(x, y)
    for axis, reduction in ((1, "ArgKMin"), (0, "Sum"), (1, "LogSumExp")):
        params = dict(reduction=reduction, reduction_params=(2,) if reduction == "ArgKMin" else (),
                      axis=axis, ni=M, nj=N)
        (got,) = reference.chunked_reduce((F.formula,), cats, ops, ranges=ranges, **params)
        Sa = S if axis == 1 else S.T
        mask = np_mask(ranges, axis, *Sa.shape)
        if reduction == "Sum":
            expected = np.where(mask, Sa, 0).sum(1, keepdims=True)
        elif reduction == "LogSumExp":
            with np.errstate(divide="ignore"):
                expected = np.log(np.where(mask, np.exp(Sa), 0).sum(1, keepdims=True))
        else:
            order = np.argsort(np.where(mask, Sa, np.inf), 1, kind="stable")[:, :2]
            expected = np.where(np.arange(2) < mask.sum(1, keepdims=True), order, -1)
        np.testing.assert_allclose(got, expected, rtol=1e-12)


# --- errors ---------------------------------------------------------------------------------


def test_bad_ranges_are_named(rng):
    x, y, _ = gaussian(rng, 5, 6)
    K = Vi(x).sqdist(Vj(y))
    good = random_ranges(rng, 5, 6)
    with pytest.raises(TypeError, match="6-tuple"):
        K.sum(1, ranges=good[:5])
    with pytest.raises(TypeError, match="slices_i has dtype float64"):
        K.sum(1, ranges=(good[0], good[1].astype(np.float64)) + good[2:])
    with pytest.raises(ValueError, match=r"redranges_j has shape \(3,\); expected \(n, 2\)"):
        K.sum(1, ranges=good[:2] + (jnp.zeros(3, jnp.int32),) + good[3:])
    with pytest.raises(ValueError, match="one slice end per cluster"):
        K.sum(1, ranges=(good[0], good[1][:0]) + good[2:])
    bad = (jnp.asarray([[0, 9]], jnp.int32), jnp.asarray([0], jnp.int32)) + good[2:]
    with pytest.raises(Exception, match=r"outer cluster 0 is \[0, 9\)"):
        jax.block_until_ready(K.sum(1, ranges=bad))
    int64 = tuple(np.asarray(r, np.int64) for r in good)  # int64 accepted
    np.testing.assert_allclose(K.sum(1, ranges=int64), K.sum(1, ranges=good))
    with pytest.raises(NotImplementedError, match="solve"):
        K2 = (-K).exp()
        K2.ranges = good
        K2.solve(np.ones((5, 1)))
    with pytest.raises(NotImplementedError, match="sharded_reduce"):
        jaxkeops.sharded_reduce(K2, "sum", axis=1, axis_name="x")


# --- cluster tools ----------------------------------------------------------------------------


def test_grid_cluster_sort_ranges_centroids(rng):
    x = rng.normal(size=(200, 3))
    size = 0.7
    lab = np.asarray(cluster.grid_cluster(x, size))
    cells = np.floor(x / size).astype(int)
    keys = sorted({tuple(c) for c in cells})
    np.testing.assert_array_equal(lab, [keys.index(tuple(c)) for c in cells])

    xs, ls = cluster.sort_clusters(x, jnp.asarray(lab))
    perm = np.argsort(lab, kind="stable")
    np.testing.assert_array_equal(xs, x[perm])
    np.testing.assert_array_equal(ls, lab[perm])
    (xs2, ys2), _ = cluster.sort_clusters((x, 2 * x), jnp.asarray(lab))
    np.testing.assert_array_equal(ys2, 2 * x[perm])

    w = rng.random(200)
    r, c, wc = cluster.cluster_ranges_centroids(xs, ls, weights=w[perm])
    n = len(keys)
    starts = [int(np.searchsorted(ls, k)) for k in range(n)]
    ends = [int(np.searchsorted(ls, k, side="right")) for k in range(n)]
    np.testing.assert_array_equal(r, np.stack([starts, ends], 1))
    ws = w[perm]
    for k in range(n):
        part = slice(starts[k], ends[k])
        np.testing.assert_allclose(wc[k], ws[part].sum(), rtol=1e-12)
        np.testing.assert_allclose(c[k], (xs[part] * ws[part, None]).sum(0) / ws[part].sum(),
                                   rtol=1e-12)
    plain = cluster.cluster_centroids(xs, ls)
    np.testing.assert_allclose(plain[1], np.asarray(xs)[starts[1]:ends[1]].mean(0), rtol=1e-12)
    jitted = jax.jit(lambda l: cluster.cluster_ranges(l, n_clusters=n))(ls)
    np.testing.assert_array_equal(jitted, r)


def test_from_matrix_and_swap_axes(rng):
    ri, rj = random_runs(rng, 20, 3), random_runs(rng, 30, 4)
    keep = rng.random((3, 4)) < 0.5
    r = cluster.from_matrix(ri, rj, keep)
    np.testing.assert_array_equal(r[0], ri)
    np.testing.assert_array_equal(r[3], rj)
    redj = [rj[q] for p in range(3) for q in range(4) if keep[p, q]]
    redi = [ri[p] for q in range(4) for p in range(3) if keep[p, q]]
    np.testing.assert_array_equal(r[2], np.reshape(redj, (-1, 2)))
    np.testing.assert_array_equal(r[5], np.reshape(redi, (-1, 2)))
    np.testing.assert_array_equal(r[1], np.cumsum(keep.sum(1)))
    np.testing.assert_array_equal(r[4], np.cumsum(keep.sum(0)))
    s = cluster.swap_axes(r)
    for a, b in zip(s, r[3:] + r[:3]):
        np.testing.assert_array_equal(a, b)
    # The mask of the swapped tuple over j is the transposed mask over i.
    np.testing.assert_array_equal(np_mask(s, 1, 30, 20), np_mask(r, 0, 30, 20))
    with pytest.raises(ValueError, match="keep is"):
        cluster.from_matrix(ri, rj, keep[:2])


def test_transposed_lazy_tensor_swaps_ranges(rng):
    M, N = 19, 27
    x, y, b = gaussian(rng, M, N, E=1)
    ranges = random_ranges(rng, M, N)
    K = (-Vi(x).sqdist(Vj(y))).exp()
    K.ranges = ranges
    a = rng.normal(size=(M, 1))
    expected = (np.exp(np_scores(x, y)) * np_mask(ranges, 0, N, M).T).T @ a
    np.testing.assert_allclose(K.T @ a, expected, rtol=1e-12)
    # The ranges travel with K through jit (they are leaves of its pytree).
    np.testing.assert_allclose(jax.jit(lambda K: K.T @ a)(K), expected, rtol=1e-12)


# --- the CUDA executor, through its host emulation ------------------------------------------


def test_cuda_tile_interpreter_emulation(rng):
    """The CUDA kernels' per-thread code (src/cuda/thread_steps.h for_each_span) run on the host:
    row blocks of 128 cut through clusters; clusters with several inner ranges."""
    from test_tile_interpreter import on_emulated_gpu

    M, N = 300, 517
    x, y, _ = gaussian(rng, M, N)
    w = rng.normal(size=(N, 2))
    a = rng.normal(size=(M, 1))
    ri, rj = random_runs(rng, M, 5), random_runs(rng, N, 6)
    keep = rng.random((5, 6)) < 0.5
    keep[1] = False
    ranges = cluster.from_matrix(ri, rj, keep)
    S = np_scores(x, y)
    mask = np_mask(ranges, 1, M, N)
    D = Vi(x).sqdist(Vj(y))
    with on_emulated_gpu():
        s1 = ((-D).exp() * Vj(w)).sum(1, ranges=ranges)
        s0 = ((-D).exp() * Vi(a)).sum(0, ranges=ranges)
        ak = D.argKmin(4, 1, ranges=ranges)
        ssw = (-D).sumsoftmaxweight(Vj(w), 1, ranges=ranges)
    np.testing.assert_allclose(s1, (np.exp(S) * mask) @ w, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(s0, (np.exp(S) * mask).T @ a, rtol=1e-12, atol=1e-14)
    order = np.argsort(np.where(mask, -S, np.inf), 1, kind="stable")[:, :4]
    np.testing.assert_array_equal(ak, np.where(np.arange(4) < mask.sum(1, keepdims=True),
                                               order, -1))
    e = np.exp(np.where(mask, S, -np.inf))
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(ssw, (e @ w) / e.sum(1, keepdims=True), rtol=1e-10,
                                   atol=1e-15)


def test_cuda_lowering_sends_ranges_to_the_interpreter(rng):
    """A Gaussian sum (a fused-kernel family) with ranges lowers for CUDA to the interpreter's
    target, with the three operands of the reduced axis' half after the variables."""
    from jaxkeops import _native

    if not _native.has_cuda():
        pytest.skip("jaxkeops._jaxkeops_cuda was not built (no nvcc at build time)")
    x, y, b = gaussian(rng, 40, 50, dtype=np.float32)
    ranges = random_ranges(rng, 40, 50)

    def f(x, y, b, r):
        return ((-Vi(x).sqdist(Vj(y))).exp() * Vj(b)).sum(1, ranges=r)

    text = jax.jit(f).trace(x, y, b, ranges).lower(lowering_platforms=("cuda",)).as_text()
    assert "jaxkeops_fused" not in text
    call = next(line for line in text.splitlines() if "jaxkeops_reduce" in line)
    operand_types = call.rsplit(" : (", 1)[1].split(") ->")[0].split(", ")
    assert [t.endswith("xf32>") for t in operand_types] == [True] * 3 + [False] * 3
    assert operand_types[3:] == [f"tensor<{len(ranges[0])}x2xi32>", f"tensor<{len(ranges[0])}xi32>",
                                 f"tensor<{len(ranges[2])}x2xi32>"]  # the i half: axis=1
    dense = jax.jit(lambda x, y, b: ((-Vi(x).sqdist(Vj(y))).exp() * Vj(b)).sum(1))
    assert "jaxkeops_fused" in dense.trace(x, y, b).lower(lowering_platforms=("cuda",)).as_text()
