"""Reductions across n = 8 devices (JAXKEOPS_SHARDING_DEVICES=4 checks 4): partitioned under jit,
and inside shard_map.

The device count is fixed when jax initialises, so tests/sharding_worker.py computes every case in
one subprocess with n forced CPU devices (sharded, and on one device) and reads the compiled
per-device HLO; the tests here assert on what it saved: results equal to one device's (indices
exactly), each jaxkeops custom call on 1/n of the pairs, no gather of the reduced axis except the
documented K-min merge and fallbacks.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P

from conftest import SEED
from jaxkeops import LazyTensor, Vi, Vj
from jaxkeops.partitioning import make_plan

WORKER = Path(__file__).with_name("sharding_worker.py")
M, N, D, E = 64, 48, 3, 2
N_DEVICES = int(os.environ.get("JAXKEOPS_SHARDING_DEVICES", "8"))
n = N_DEVICES
# Block sizes (rows of x, rows of y) per layout of tests/sharding_worker.py.
BLOCKS = {"x": (M // n, N), "y": (M, N // n), "xy": (M // (n // 2), N // 2)}
KMIN_K = {2, 3}  # the K values of the K-min reductions in the worker


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("sharding") / "run")
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    subprocess.run([sys.executable, str(WORKER), prefix, str(SEED), str(N_DEVICES)], check=True,
                   env=env,
                   timeout=600)
    arrays = dict(np.load(prefix + ".npz"))
    with open(prefix + ".json") as f:
        return arrays, json.load(f)


def _pairs(arrays, group):
    names = sorted({k.split("/")[1] for k in arrays if k.startswith(group + "/")})
    assert names, f"no results for {group}"
    return [(n, arrays[f"{group}/{n}/sharded"], arrays[f"{group}/{n}/single"]) for n in names]


def _assert_same(group, arrays, rtol=1e-10, atol=1e-10):
    for name, sharded, single in _pairs(arrays, group):
        assert sharded.shape == single.shape and sharded.dtype == single.dtype, name
        if sharded.dtype.kind in "iu":
            np.testing.assert_array_equal(sharded, single, err_msg=f"{group}: {name}")
        else:
            np.testing.assert_allclose(sharded, single, rtol=rtol, atol=atol,
                                       err_msg=f"{group}: {name}")


@pytest.mark.parametrize("layout", ["x", "y", "xy", "same_axis"])
def test_forward_equals_single_device(run, layout):
    """Every reduction of the acceptance list, with x, y or both sharded (and one mesh axis on
    both grid axes: the fallback), equals the single-device result."""
    arrays, _ = run
    _assert_same(f"forward.{layout}", arrays)
    names = {n for n, _, _ in _pairs(arrays, f"forward.{layout}")}
    assert {"sum_j", "sum_i", "logsumexp", "logsumexp_weight", "sumsoftmaxweight", "min",
            "argmin", "max_argmax.indices", "Kmin", "argKmin", "Kmin_argKmin.indices",
            "K@v"} <= names


def test_ties_go_to_the_lowest_index_across_shards(run):
    """y holds every point twice (j and j + N/2, in different shards): the minimum is always
    tied, and the sharded argmin keeps the lower index, as one device does."""
    arrays, _ = run
    for layout in ("y", "xy"):
        argmin = arrays[f"forward.{layout}/argmin/sharded"]
        assert (argmin < N // 2).all()
        pairs = arrays[f"forward.{layout}/argKmin/sharded"]
        # the two copies of the nearest point come first, the lower index first
        np.testing.assert_array_equal(pairs[:, 1], pairs[:, 0] + N // 2)


@pytest.mark.parametrize("layout", ["x", "y", "xy"])
def test_each_device_computes_its_share_of_the_pairs(run, layout):
    """The per-device HLO: every jaxkeops call gets blocks of rows (M/n_x, N/n_y) whose product is
    M·N/n, and nothing of the reduced axis is all-gathered (only the n·K K-min candidates)."""
    _, facts = run
    rows_x, rows_y = BLOCKS[layout]
    assert rows_x * rows_y == M * N // n
    for stage in ("forward", "grad"):
        calls = facts[f"{stage}.{layout}"]["calls"]
        assert len(calls) >= 10
        for shapes in calls:
            rows = {s[0] for s in shapes if len(s) == 2}
            assert rows == {rows_x, rows_y}, (stage, shapes)
    # Reductions over j split the rows of y, sum_i (over i) those of x: the only all-gathers
    # are the K-min merges' n·K candidates per row.
    inner_shards = N // rows_y
    for shape in facts[f"forward.{layout}"]["all_gathers"]:
        assert shape[0] == rows_x and shape[1] in {inner_shards * K for K in KMIN_K}, shape
    if layout == "x":
        assert facts["forward.x"]["all_gathers"] == []


def test_fallbacks_gather_the_reduced_axis(run):
    """One mesh axis on both grid axes, and K larger than a block: the reduced axis is gathered
    (documented fallbacks), the outer axis stays split, results stay exact."""
    arrays, facts = run
    for shapes in facts["forward.same_axis"]["calls"]:
        # over j: M/n rows of x against all of y; over i (sum_i): N/n rows of y against all of x
        assert {s[0] for s in shapes if len(s) == 2} in ({M // n, N}, {N // n, M}), shapes
    assert [N, D] in facts["forward.same_axis"]["all_gathers"]
    _assert_same("kmin_fallback", arrays)
    assert [N, D] in facts["kmin_fallback"]["all_gathers"]


@pytest.mark.parametrize("layout", ["x", "y", "xy"])
def test_grad_and_jvp_under_jit_with_sharded_inputs(run, layout):
    arrays, _ = run
    _assert_same(f"grad.{layout}", arrays, rtol=1e-9, atol=1e-9)
    _assert_same(f"jvp.{layout}", arrays, rtol=1e-9, atol=1e-9)


def test_explicit_mesh(run):
    """jax.make_mesh's default axis type (Explicit): forward and gradient."""
    arrays, _ = run
    _assert_same("explicit.forward", arrays)
    _assert_same("explicit.grad", arrays, rtol=1e-9, atol=1e-9)


def test_solve_with_sharded_points(run):
    """The CG loop stays global; each product K p runs on the device's rows of K against the
    whole p, gathered once per iteration."""
    arrays, facts = run
    _assert_same("solve", arrays, rtol=1e-8, atol=1e-8)
    for shapes in facts["solve"]["calls"]:
        assert {s[0] for s in shapes if len(s) == 2} == {M // n, M}, shapes
    per_iteration = [s for s in facts["solve"]["while_bodies"] if s[0] == M]
    assert sum(1 for s in per_iteration if s == [M, E]) <= 1, per_iteration


def test_vmapped_batch_sharded_over_the_batch_axis(run):
    arrays, facts = run
    _assert_same("batch", arrays, rtol=1e-9, atol=1e-9)
    for shapes in facts["batch"]["calls"]:
        assert all(s[0] == 8 // n for s in shapes if len(s) == 3), shapes  # 8 problems in all
    assert facts["batch"]["all_gathers"] == [] and facts["batch"]["all_reduces"] == 0
    # batch over "a" (n/2 shards), rows of y over "b" (2 shards): 2 problems, 7 rows of y each
    _assert_same("batch_2d", arrays)
    for shapes in facts["batch_2d"]["calls"]:
        assert all(s[0] == 8 // (n // 2) for s in shapes if len(s) == 3), shapes
        assert 7 in {s[1] for s in shapes if len(s) == 3}, shapes


def test_shard_map_gradients_with_check_vma(run):
    """Rows split, the reduced axis whole on each device: jax.grad with check_vma=True works
    (replicated operands get the varying type) and equals the single-device gradient."""
    arrays, _ = run
    _assert_same("shard_map_rows", arrays, rtol=1e-9, atol=1e-9)


def test_sharded_reduce_in_shard_map(run):
    """jaxkeops.sharded_reduce over a reduced axis split across the devices: every method equals
    the single-device reduction (indices exactly), and so do its gradient and jvp."""
    arrays, _ = run
    _assert_same("sharded_reduce", arrays)
    _assert_same("sharded_reduce_grad", arrays, rtol=1e-9, atol=1e-9)
    _assert_same("sharded_reduce_jvp", arrays, rtol=1e-9, atol=1e-9)


def test_export_lowers_the_plain_call(run):
    """jax.export of a function with sharded inputs: the plain jaxkeops call (no
    custom_partitioning in the module), same results; plain jit partitions."""
    arrays, facts = run
    assert facts["export"] == {"exported_partitions": False, "exported_calls_jaxkeops": True,
                               "jit_partitions": True}
    _assert_same("export", arrays)


# --- the split chosen for given shardings (no devices needed) ------------------------------------


def _plan(lazy_call, shapes_specs, mesh_shape=(8,), names=("d",)):
    """make_plan for the one reduction `lazy_call` traces, given (shape, spec) per operand."""
    mesh = AbstractMesh(mesh_shape, names)
    jaxpr = jax.make_jaxpr(lazy_call)(*[np.zeros(shape) for shape, _ in shapes_specs])
    (eqn,) = [e for e in jaxpr.eqns if e.primitive.name == "keops_reduce"]
    args = [jax.ShapeDtypeStruct(shape, np.float64, sharding=NamedSharding(mesh, spec))
            for shape, spec in shapes_specs]
    results = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.outvars]
    return make_plan(eqn.params, mesh, args, results)


def _nearest(K):
    return lambda x, y: ((Vi(x) - Vj(y)) ** 2).sum().argKmin(K, axis=1)


def test_plan_splits_both_grid_axes_on_two_mesh_axes():
    plan = _plan(_nearest(3), [((64, 3), P("a")), ((48, 3), P("b"))], (4, 2), ("a", "b"))
    assert (plan.outer, plan.inner, plan.local_n_outer, plan.local_n_inner) == (
        ("a",), ("b",), 16, 24)


@pytest.mark.parametrize("case", ["same_axis", "not_dividing", "K_above_block"])
def test_plan_falls_back_to_a_whole_reduced_axis(case):
    """Splits that cannot work leave the reduced axis whole (XLA gathers it)."""
    x_spec, rows_y, K = {"same_axis": (P("d"), 48, 3), "not_dividing": (P(), 50, 3),
                         "K_above_block": (P(), 48, 7)}[case]
    plan = _plan(_nearest(K), [((64, 3), x_spec), ((rows_y, 3), P("d"))])
    assert plan.inner == () and plan.local_n_inner == rows_y
    assert plan.outer == (("d",) if case == "same_axis" else ())


def test_plan_batch_dims_and_broadcast_operands():
    """A batch dim split on one mesh axis and the reduced axis on another; an operand broadcast
    along the batch (size 1) is never split along it."""
    def call(x, y):
        xi, yj = LazyTensor(x[:, :, None, :]), LazyTensor(y[:, None, :, :])
        return ((xi - yj) ** 2).sum().logsumexp(axis=2)  # over j

    plan = _plan(call, [((4, 64, 3), P("a")), ((1, 48, 3), P(None, "b"))], (4, 2), ("a", "b"))
    assert plan.batch == (("a",),) and plan.local_batch_shape == (1,)
    assert plan.inner == ("b",) and plan.local_n_inner == 24


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="median", axis=1, axis_name="d"), "method='median'; expected one of"),
    (dict(method="Kmin", axis=1, axis_name="d"), "method='Kmin' needs K, got K=None"),
    (dict(method="sumsoftmaxweight", axis=1, axis_name="d"), "needs a weight, got None"),
    (dict(method="min", axis=1, axis_name="d", weight=Vj(np.ones((5, 1)))), "weight is only"),
    (dict(method="sum", axis=1, axis_name=()), "axis_name is empty"),
    (dict(method="sum", axis=3, axis_name="d"), "axis=3"),
])
def test_sharded_reduce_errors(kwargs, message):
    from jaxkeops import sharded_reduce

    lazy = ((Vi(np.ones((4, 2))) - Vj(np.ones((5, 2)))) ** 2).sum()
    with pytest.raises(ValueError, match=message):
        sharded_reduce(lazy, **kwargs)
    with pytest.raises(TypeError, match="lazy is a ndarray; expected a LazyTensor"):
        sharded_reduce(np.ones(3), "sum", axis=1, axis_name="d")
