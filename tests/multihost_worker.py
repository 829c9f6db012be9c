"""One process of tests/test_multihost.py: `python multihost_worker.py PROCESS_ID N_PROCESSES
PORT INPUTS.npz OUTPUT.npz`.

Joins a jax.distributed job on 127.0.0.1:PORT (process 0 runs the coordinator), builds a mesh of
every device of every process, feeds it global arrays whose rows are split across the processes
(each process provides only its own rows), runs jaxkeops reductions under jit, and saves the
results next to the same reductions computed on this process's first device alone.
"""

import sys

import jax
import numpy as np

process_id, n_processes, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
inputs_path, output_path = sys.argv[4], sys.argv[5]

try:  # gloo: the CPU backend's cross-process collectives (the default from jax 0.10 on)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
except AttributeError:
    pass
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n_processes,
                           process_id=process_id, initialization_timeout=60)

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from jaxkeops import Vi, Vj  # noqa: E402

K = 3


def gaussian_sum(x, y, b):
    return ((-Vi(x).sqdist(Vj(y))).exp() * Vj(b)).sum(axis=1)


def nearest(x, y, b):  # b unused: every reduction takes (x, y, b)
    return Vi(x).sqdist(Vj(y)).argKmin(K, axis=1)


def soft_min(x, y, b):
    return (Vj(b) - Vi(x).sqdist(Vj(y))).logsumexp(axis=1)


def gaussian_grad(x, y, b):
    return jax.grad(lambda x: gaussian_sum(x, y, b).sum())(x)


REDUCTIONS = {"gaussian_sum": gaussian_sum, "argKmin": nearest, "logsumexp": soft_min,
              "grad_x": gaussian_grad}

data = np.load(inputs_path)
x, y, b = data["x"], data["y"], data["b"]
devices = jax.devices()
assert len(devices) == 2 * n_processes and jax.local_device_count() == 2, (
    f"expected 2 local devices per process, {2 * n_processes} in all; got "
    f"{jax.local_device_count()} local, {len(devices)} in all")
mesh = Mesh(np.array(devices), ("hosts",))
rows = NamedSharding(mesh, P("hosts"))  # each device holds a block of rows
replicated = NamedSharding(mesh, P())


def global_rows(a):
    """The global array of `a` sharded by rows, built from this process's rows only."""
    per_process = a.shape[0] // n_processes
    local = a[process_id * per_process:(process_id + 1) * per_process]
    return jax.make_array_from_process_local_data(rows, local, a.shape)


gx, gy, gb = global_rows(x), global_rows(y), global_rows(b)
assert not gx.is_fully_addressable  # really spread across the processes
results = {}
for name, f in REDUCTIONS.items():
    sharded = jax.jit(f, out_shardings=replicated)(gx, gy, gb)
    results[f"{name}/sharded"] = np.asarray(sharded.addressable_data(0))
    one = jax.local_devices()[0]
    single = jax.jit(f)(*(jax.device_put(a, one) for a in (x, y, b)))
    results[f"{name}/single"] = np.asarray(single)
np.savez(output_path, **results)
jax.distributed.shutdown()
print(f"process {process_id}: done", flush=True)
