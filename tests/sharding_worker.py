"""The multi-device half of tests/test_sharding.py, run in its own process.

XLA's CPU device count is fixed when jax initialises, so the sharded checks cannot share the test
process: tests/test_sharding.py runs this script once with n forced CPU devices (8, or
JAXKEOPS_SHARDING_DEVICES: 4 works too, any even divisor of 48). It computes every
case sharded and on one device (and the float64 dense reference where cheap), reads the compiled
per-device HLO, and saves the arrays (npz) and HLO facts (json) for the test module to assert on.

    python tests/sharding_worker.py OUT_PREFIX SEED [N_DEVICES]
"""

import os
import sys

N_DEVICES = int(sys.argv[3]) if len(sys.argv) > 3 else 8
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={N_DEVICES}")

import json  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jaxkeops  # noqa: E402
from jaxkeops import Pm, Vi, Vj  # noqa: E402

M, N, D, E = 64, 48, 3, 2
n = N_DEVICES

_CALL = re.compile(r"custom-call\(.*custom_call_target=\"(jaxkeops_\w+)\".*"
                   r"operand_layout_constraints=\{((?:[^{}]|\{[^{}]*\})*)\}")
_SHAPE = re.compile(r"[a-z]\d+\[([\d,]*)\]")
_GATHER = re.compile(r"= [a-z]\d+\[([\d,]*)\][^ ]* all-gather\(")


def hlo_facts(compiled_text: str) -> dict:
    """Operand shapes of each jaxkeops custom call, output shapes of the all-gathers, count of
    all-reduces, in the compiled per-device HLO."""
    calls, gathers = [], []
    for line in compiled_text.splitlines():
        if (m := _CALL.search(line)) is not None:
            shapes = [[int(d) for d in s.split(",") if d] for s in _SHAPE.findall(m.group(2))]
            calls.append(shapes)
        elif (g := _GATHER.search(line)) is not None:
            gathers.append([int(d) for d in g.group(1).split(",") if d])
    return {"calls": calls, "all_gathers": gathers,
            "all_reduces": len(re.findall(r" all-reduce(?:-start)?\(", compiled_text))}


def kernels(x, y, v):
    """The reductions of the acceptance list, as a dict of outputs."""
    S = -((Vi(x) - Vj(y)) ** 2).sum()  # scores, scalar
    K = S.exp()
    F = Vi(x) - Vj(y)  # a vector formula (D=3): per-component min / argmin
    w = Vj(v) * Vj(v) + 0.25  # positive weights
    dist = -S
    values, indices = F.Kmin_argKmin(2, axis=1)
    maxv, maxi = S.max_argmax(axis=1)
    return {
        "sum_j": K.sum(axis=1),
        "sum_i": (K * Vi(x[:, :1])).sum(axis=0),
        "logsumexp": S.logsumexp(axis=1),
        "logsumexp_weight": S.logsumexp(axis=1, weight=Vj(v) + 1.0),  # signs mixed
        "logsumexp_weight_pos": S.logsumexp(axis=1, weight=w),
        "sumsoftmaxweight": S.sumsoftmaxweight(Vj(v), axis=1),
        "min": F.min(axis=1),
        "argmin": F.argmin(axis=1),
        "max_argmax.values": maxv,
        "max_argmax.indices": maxi,
        "Kmin": dist.Kmin(3, axis=1),
        "argKmin": dist.argKmin(3, axis=1),
        "Kmin_argKmin.values": values,
        "Kmin_argKmin.indices": indices,
        "K@v": K @ v,
    }


DIFFERENTIABLE = ("sum_j", "sum_i", "logsumexp", "logsumexp_weight_pos", "sumsoftmaxweight",
                  "min", "max_argmax.values", "Kmin", "Kmin_argKmin.values", "K@v")


def loss(x, y, v):
    outs = kernels(x, y, v)
    return sum(jnp.sum(jnp.sin(outs[k])) for k in DIFFERENTIABLE)


def inputs(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(M, D))
    half = rng.normal(size=(N // 2, D))
    y = np.concatenate([half, half])  # every point twice, in different shards: ties
    v = rng.normal(size=(N, E))
    tangents = [rng.normal(size=a.shape) for a in (x, y, v)]
    return (x, y, v), tangents


# Layouts: the mesh, the specs of x (i points) and of y, v (j points), the per-device block
# sizes (rows of x, rows of y), and whether the reduced-axis split must fall back.
LAYOUTS = {
    "x": ((n,), ("d",), P("d"), P()),
    "y": ((n,), ("d",), P(), P("d")),
    "xy": ((n // 2, 2), ("a", "b"), P("a"), P("b")),
    # one mesh axis on both grid axes: the reduced axis is replicated (fallback)
    "same_axis": ((n,), ("d",), P("d"), P("d")),
}


def auto_mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))


def main(prefix, seed):
    (x, y, v), tangents = inputs(seed)
    arrays, facts = {}, {}

    def put(name, sharded, single):
        put_pair(arrays, name, sharded, single)

    single_fwd = jax.jit(kernels)(x, y, v)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    single_grad = dict(zip("xyv", grad(x, y, v)))

    def jvp(x, y, v, tx, ty, tv):
        return jax.jvp(lambda *a: {k: kernels(*a)[k] for k in DIFFERENTIABLE},
                       (x, y, v), (tx, ty, tv))[1]

    single_jvp = jax.jit(jvp)(x, y, v, *tangents)

    for name, (shape, names, spec_x, spec_y) in LAYOUTS.items():
        mesh = auto_mesh(shape, names)
        xs = jax.device_put(x, NamedSharding(mesh, spec_x))
        ys, vs = (jax.device_put(a, NamedSharding(mesh, spec_y)) for a in (y, v))
        forward = jax.jit(kernels)
        put(f"forward.{name}", forward(xs, ys, vs), single_fwd)
        facts[f"forward.{name}"] = hlo_facts(forward.lower(xs, ys, vs).compile().as_text())
        if name == "same_axis":
            continue
        put(f"grad.{name}", dict(zip("xyv", grad(xs, ys, vs))), single_grad)
        facts[f"grad.{name}"] = hlo_facts(grad.lower(xs, ys, vs).compile().as_text())
        ts = [jax.device_put(t, a.sharding) for t, a in zip(tangents, (xs, ys, vs))]
        put(f"jvp.{name}", jax.jit(jvp)(xs, ys, vs, *ts), single_jvp)

    # K larger than a block of the reduced axis (N/n points per device): fallback.
    mesh = auto_mesh((n,), ("d",))
    ys = jax.device_put(y, NamedSharding(mesh, P("d")))
    big_k = jax.jit(lambda x, y: {
        "argKmin": (-((Vi(x) - Vj(y)) ** 2).sum()).argKmin(N // n + 1, axis=1)})
    put("kmin_fallback", big_k(x, ys), big_k(x, y))
    facts["kmin_fallback"] = hlo_facts(big_k.lower(x, ys).compile().as_text())

    # An explicitly sharded mesh (jax.make_mesh's default axis type): forward and gradient.
    explicit = jax.make_mesh((n,), ("d",), axis_types=(AxisType.Explicit,))
    ys, vs = (jax.device_put(a, NamedSharding(explicit, P("d"))) for a in (y, v))
    xs = jax.device_put(x, NamedSharding(explicit, P()))
    put("explicit.forward", jax.jit(kernels)(xs, ys, vs), single_fwd)
    put("explicit.grad", dict(zip("xyv", grad(xs, ys, vs))), single_grad)

    export_case(arrays, facts, x, y)
    solve_case(arrays, facts, seed)
    batch_case(arrays, facts, seed)
    shard_map_cases(arrays, seed)
    np.savez(prefix + ".npz", **arrays)
    with open(prefix + ".json", "w") as f:
        json.dump(facts, f)


def export_case(arrays, facts, x, y):
    """jax.export lowers the plain call (the partitioner's callbacks cannot be serialized)."""
    mesh = auto_mesh((n,), ("d",))
    ys = jax.device_put(y, NamedSharding(mesh, P("d")))
    f = jax.jit(lambda x, y: {"logsumexp": (-((Vi(x) - Vj(y)) ** 2).sum()).logsumexp(axis=1)})
    exported = jax.export.export(f, disabled_checks=jaxkeops.export_disabled_checks())(x, ys)
    put_pair(arrays, "export", exported.call(x, ys), f(x, y))
    facts["export"] = {
        "exported_partitions": "CustomSPMDPartitioning" in exported.mlir_module(),
        "exported_calls_jaxkeops": "jaxkeops_reduce" in exported.mlir_module(),
        "jit_partitions": "CustomSPMDPartitioning" in f.lower(x, ys).as_text(),
    }


def put_pair(arrays, name, sharded, single):
    for k in sharded:
        arrays[f"{name}/{k}/sharded"] = np.asarray(sharded[k])
        arrays[f"{name}/{k}/single"] = np.asarray(single[k])


def solve_case(arrays, facts, seed):
    """(αI + K) a = b with the points and b split by rows: the CG loop stays global, each
    product K p runs on 1/n of the pairs."""
    rng = np.random.default_rng([seed, 1])
    x = rng.normal(size=(M, D))
    b = rng.normal(size=(M, E))

    def solve(x, b, sigma):
        K = (-((Vi(x) - Vj(x)) ** 2).sum() * Pm(sigma)).exp()
        return K.solve(b, alpha=0.5, eps=1e-12)

    def solve_loss(x, b, sigma):
        return jnp.sum(jnp.sin(solve(x, b, sigma)))

    mesh = auto_mesh((n,), ("d",))
    xs, bs = (jax.device_put(a, NamedSharding(mesh, P("d"))) for a in (x, b))
    sigma = np.array([0.7])
    f = jax.jit(solve)
    g = jax.jit(jax.grad(solve_loss, argnums=(0, 1, 2)))
    arrays["solve/a/sharded"], arrays["solve/a/single"] = f(xs, bs, sigma), f(x, b, sigma)
    for k, (s, one) in enumerate(zip(g(xs, bs, sigma), g(x, b, sigma))):
        arrays[f"solve/grad{k}/sharded"], arrays[f"solve/grad{k}/single"] = s, one
    text = f.lower(xs, bs, sigma).compile().as_text()
    facts["solve"] = hlo_facts(text)
    facts["solve"]["while_bodies"] = _while_body_gathers(text)


def _while_body_gathers(text: str) -> list:
    """Output shapes of the all-gathers inside the while loop bodies (per iteration)."""
    bodies = set(re.findall(r"body=%?([\w.\-]+)", text))
    gathers, current = [], None
    for line in text.splitlines():
        if (m := re.match(r"%?([\w.\-]+) \(", line.strip())) and line[:1] not in " \t":
            current = m.group(1)
        if current in bodies and (g := _GATHER.search(line)) is not None:
            gathers.append([int(d) for d in g.group(1).split(",") if d])
    return gathers


def batch_case(arrays, facts, seed):
    """A vmapped batch of problems, the batch axis split across the devices; and the batch
    split over one mesh axis while the reduced axis is split over another."""
    rng = np.random.default_rng([seed, 2])
    B = 8
    x, y = rng.normal(size=(B, 20, D)), rng.normal(size=(B, 14, D))

    def one(x, y):
        S = -((Vi(x) - Vj(y)) ** 2).sum()
        return S.logsumexp(axis=1), S.argKmin(2, axis=1), (S.exp() * Vj(y)).sum(axis=0)

    f = jax.jit(jax.vmap(one))
    g = jax.jit(jax.grad(lambda x, y: sum(jnp.sum(jnp.sin(o)) for o in jax.vmap(one)(x, y)
                                          if o.dtype.kind == "f"), argnums=(0, 1)))
    mesh = auto_mesh((n,), ("d",))
    xs, ys = (jax.device_put(a, NamedSharding(mesh, P("d"))) for a in (x, y))
    single = f(x, y)
    for k, (s, one_) in enumerate(zip(f(xs, ys), single)):
        arrays[f"batch/out{k}/sharded"], arrays[f"batch/out{k}/single"] = s, one_
    for k, (s, one_) in enumerate(zip(g(xs, ys), g(x, y))):
        arrays[f"batch/grad{k}/sharded"], arrays[f"batch/grad{k}/single"] = s, one_
    facts["batch"] = hlo_facts(f.lower(xs, ys).compile().as_text())
    mesh = auto_mesh((n // 2, 2), ("a", "b"))
    xs = jax.device_put(x, NamedSharding(mesh, P("a")))
    ys = jax.device_put(y, NamedSharding(mesh, P("a", "b")))
    for k, (s, one_) in enumerate(zip(f(xs, ys), single)):
        arrays[f"batch_2d/out{k}/sharded"], arrays[f"batch_2d/out{k}/single"] = s, one_
    facts["batch_2d"] = hlo_facts(f.lower(xs, ys).compile().as_text())


def shard_map_cases(arrays, seed):
    """Inside jax.shard_map(check_vma=True): (1) rows split, the reduced axis whole on every
    device (the plain call; grads of replicated operands need the vma type); (2) the reduced
    axis split, combined with jaxkeops.sharded_reduce."""
    rng = np.random.default_rng([seed, 3])
    x, y, v = rng.normal(size=(M, D)), rng.normal(size=(N, D)), rng.normal(size=(N, E))
    sigma = np.array([0.8])
    mesh = auto_mesh((n,), ("d",))

    def rows_loss(x, y, v, sigma):
        S = -((Vi(x) - Vj(y)) ** 2).sum() * Pm(sigma)
        out = S.logsumexp(axis=1, weight=Vj(v) * Vj(v) + 0.1) + (S.exp() * Vj(v)).sum(axis=1)
        return jnp.sum(jnp.sin(out)) + jnp.sum(S.min(axis=1))

    def total_loss(*a):  # each device's rows, summed over the devices
        return jax.lax.psum(rows_loss(*a), "d")

    grad_rows = jax.jit(jax.shard_map(
        jax.grad(total_loss, argnums=(0, 1, 2, 3)), mesh=mesh,
        in_specs=(P("d"), P(), P(), P()), out_specs=(P("d"), P(), P(), P()), check_vma=True))
    single = jax.jit(jax.grad(rows_loss, argnums=(0, 1, 2, 3)))(x, y, v, sigma)
    for k, (s, one) in enumerate(zip(grad_rows(x, y, v, sigma), single)):
        arrays[f"shard_map_rows/grad{k}/sharded"], arrays[f"shard_map_rows/grad{k}/single"] = s, one

    methods = {
        "sum": dict(), "logsumexp": dict(), "logsumexp_weight": dict(weight=True),
        "sumsoftmaxweight": dict(weight=True), "min": dict(), "argmin": dict(),
        "max_argmax": dict(), "Kmin": dict(K=3), "argKmin": dict(K=3), "Kmin_argKmin": dict(K=2),
    }

    def reductions(x, y, v, sharded):
        S = -((Vi(x) - Vj(y)) ** 2).sum()
        F = Vi(x) - Vj(y)
        w = Vj(v) * Vj(v) + 0.1
        out = {}
        for method, kw in methods.items():
            lazy = F if method in ("min", "argmin", "Kmin_argKmin") else (
                S.exp() * Vj(v) if method == "sum" else S)
            call = method.replace("_weight", "")
            args = dict(K=kw["K"]) if "K" in kw else {}
            if kw.get("weight"):
                args["weight"] = w
            if sharded:
                res = jaxkeops.sharded_reduce(lazy, call, axis=1, axis_name="d", **args)
            else:
                res = _method(lazy, call, args)
            for k, r in enumerate(res if isinstance(res, tuple) else (res,)):
                out[f"{method}.{k}"] = r
        return out

    def diff_loss(x, y, v, sharded):
        out = reductions(x, y, v, sharded)
        return sum(jnp.sum(jnp.sin(o)) for o in out.values() if o.dtype.kind == "f")

    specs = (P(), P("d"), P("d"))
    fwd = jax.jit(jax.shard_map(lambda *a: reductions(*a, True), mesh=mesh, in_specs=specs,
                                out_specs=P(), check_vma=True))
    single = jax.jit(lambda *a: reductions(*a, False))(x, y, v)
    for k, s in fwd(x, y, v).items():
        arrays[f"sharded_reduce/{k}/sharded"], arrays[f"sharded_reduce/{k}/single"] = s, single[k]
    grad = jax.jit(jax.shard_map(jax.grad(lambda *a: diff_loss(*a, True), argnums=(0, 1, 2)),
                                 mesh=mesh, in_specs=specs, out_specs=(P(), P("d"), P("d")),
                                 check_vma=True))
    single = jax.jit(jax.grad(lambda *a: diff_loss(*a, False), argnums=(0, 1, 2)))(x, y, v)
    for k, (s, one) in enumerate(zip(grad(x, y, v), single)):
        arrays[f"sharded_reduce_grad/{k}/sharded"] = s
        arrays[f"sharded_reduce_grad/{k}/single"] = one
    tangents = [rng.normal(size=a.shape) for a in (x, y, v)]

    def jvp(sharded):
        def f(x, y, v, tx, ty, tv):
            return jax.jvp(lambda *a: diff_loss(*a, sharded), (x, y, v), (tx, ty, tv))[1]
        return f

    sm_jvp = jax.jit(jax.shard_map(jvp(True), mesh=mesh, in_specs=specs * 2, out_specs=P(),
                                   check_vma=True))
    arrays["sharded_reduce_jvp/0/sharded"] = sm_jvp(x, y, v, *tangents)
    arrays["sharded_reduce_jvp/0/single"] = jax.jit(jvp(False))(x, y, v, *tangents)


def _method(lazy, method, args):
    if method in ("Kmin", "argKmin", "Kmin_argKmin"):
        return getattr(lazy, method)(args["K"], axis=1)
    if "weight" in args:
        return getattr(lazy, method)(axis=1, weight=args["weight"]) if method == "logsumexp" \
            else lazy.sumsoftmaxweight(args["weight"], axis=1)
    return getattr(lazy, method)(axis=1)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
