"""jaxkeops across processes with jax.distributed: 2 processes × 2 CPU devices on loopback, one
global mesh of 4 devices, rows of x, y and b split across the processes. Each process runs the
reductions of tests/multihost_worker.py under jit on the global arrays and on its first device
alone; the results must agree (indices exactly, values to float tolerance), and with a dense
float64 reference."""

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np

N_PROCESSES = 2
TIMEOUT_S = 120  # the whole job; a stuck collective must fail the test, never hang CI
WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
K = 3  # as in the worker


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_job(tmp_path, inputs):
    """Starts the processes, waits for all of them (killing all at the deadline), and returns
    their output files; fails with every process's stderr if one fails or the job times out."""
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAXKEOPS_NUM_THREADS="1")  # 4 devices on a 2-core CI machine: no oversubscribing
    outputs = [tmp_path / f"process{p}.npz" for p in range(N_PROCESSES)]
    logs = [open(tmp_path / f"process{p}.log", "w+") for p in range(N_PROCESSES)]
    # cwd outside the repository, so that the processes import the installed package.
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(p), str(N_PROCESSES), str(port),
                               str(inputs), str(outputs[p])], env=env, cwd=tmp_path,
                              stdout=logs[p], stderr=subprocess.STDOUT)
             for p in range(N_PROCESSES)]
    deadline = time.monotonic() + TIMEOUT_S
    timed_out = False
    try:
        for proc in procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                break
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    report = []
    for p, log in enumerate(logs):
        log.seek(0)
        report.append(f"--- process {p} (exit code {procs[p].returncode}):\n{log.read()[-6000:]}")
        log.close()
    report = "\n".join(report)
    assert not timed_out, f"the jax.distributed job did not finish in {TIMEOUT_S} s\n{report}"
    assert all(proc.returncode == 0 for proc in procs), f"a process failed\n{report}"
    return [np.load(out) for out in outputs]


def _dense_reference(x, y, b):
    x, y, b = (a.astype(np.float64) for a in (x, y, b))
    sqdist = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    kernel = np.exp(-sqdist)
    scores = b[:, 0][None, :] - sqdist
    top = scores.max(1, keepdims=True)
    diff = x[:, None, :] - y[None, :, :]
    return {
        "gaussian_sum": kernel @ b,
        "argKmin": np.argsort(sqdist, axis=1, kind="stable")[:, :K],
        "logsumexp": top + np.log(np.exp(scores - top).sum(1, keepdims=True)),
        "grad_x": -2 * np.einsum("ij,ijd->id", kernel * b[:, 0][None, :], diff),
    }


def test_two_processes_equal_one(tmp_path, rng):
    # Rows divisible by the 4 devices; neither is a multiple of any tile size.
    M, N, D = 36, 44, 3
    x = rng.normal(size=(M, D)).astype(np.float32)
    y = rng.normal(size=(N, D)).astype(np.float32)
    b = rng.normal(size=(N, 1)).astype(np.float32)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=x, y=y, b=b)
    results = _run_job(tmp_path, inputs)
    reference = _dense_reference(x, y, b)
    single = results[0]
    for name, expected in reference.items():
        if name == "argKmin":
            np.testing.assert_array_equal(single[f"{name}/single"], expected, err_msg=name)
        else:
            np.testing.assert_allclose(single[f"{name}/single"], expected, rtol=1e-4,
                                       atol=1e-5, err_msg=name)
        for p, result in enumerate(results):
            got, want = result[f"{name}/sharded"], single[f"{name}/single"]
            message = f"{name}: process {p}'s sharded result against process 0's single device"
            assert got.shape == want.shape, message
            if name == "argKmin":
                np.testing.assert_array_equal(got, want, err_msg=message)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=message)
