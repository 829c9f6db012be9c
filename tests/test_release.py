"""What a user installing jaxkeops relies on: one version everywhere, the license in the
metadata, `has_cuda`, the self-test, and install instructions that work before a release."""

import importlib.metadata
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import jaxkeops
from jaxkeops import _native, selftest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_version_agrees_with_the_installed_metadata():
    assert importlib.metadata.version("jaxkeops") == jaxkeops.__version__
    shown = subprocess.run([sys.executable, "-m", "pip", "show", "jaxkeops"], capture_output=True,
                           text=True, check=True).stdout
    fields = dict(line.split(": ", 1) for line in shown.splitlines() if ": " in line)
    assert fields["Version"] == jaxkeops.__version__, shown
    assert fields["License"] == "Apache-2.0", shown


def test_version_is_written_once():
    pyproject = (ROOT / "pyproject.toml").read_text()
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, re.M), "pyproject.toml repeats the version"
    assert re.search(r'^dynamic = \["version"\]', project, re.M)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    newest = re.search(r"^## (\S+)", changelog, re.M)
    assert newest and newest.group(1) == jaxkeops.__version__, "CHANGELOG.md's newest entry"


def test_license_files():
    assert "Apache License\n                           Version 2.0, January 2004" in (
        ROOT / "LICENSE").read_text()
    assert "Apache License, Version 2.0" in (ROOT / "NOTICE").read_text()
    assert re.search(r"^license: Apache-2.0$", (ROOT / "CITATION.cff").read_text(), re.M)


def test_has_cuda_is_a_bool_that_matches_the_module():
    assert isinstance(jaxkeops.has_cuda(), bool)
    assert jaxkeops.has_cuda() == (_native.cuda is not None)
    built = importlib.util.find_spec("jaxkeops._jaxkeops_cuda") is not None
    if not built:
        assert not jaxkeops.has_cuda() and _native.CUDA_STATUS.startswith("not built")
    elif not jaxkeops.has_cuda():  # a module file that failed to load says so
        assert "failed to load" in _native.CUDA_STATUS


def test_missing_cuda_warning_points_to_the_selftest_and_install_guide(monkeypatch):
    monkeypatch.setattr(_native, "_warned_no_cuda", False)
    with pytest.warns(RuntimeWarning) as caught:
        _native.warn_no_cuda()
    message = str(caught[0].message)
    assert "python -m jaxkeops.selftest" in message and "Installation" in message


def test_selftest_passes_on_cpu(tmp_path):
    """In a fresh process started outside the repository's root, as a user would run it, with
    two CPU devices: every check runs on each."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run([sys.executable, "-m", "jaxkeops.selftest"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    assert "CPU module: loaded" in report and "cpu:1 [cpu]" in report, report
    assert report.count("[PASS]") == 2 * len(selftest.CHECKS) and "[FAIL]" not in report, report
    assert "kernel: interpreter" in report, report  # the generic path is exercised, not only families
    if not jaxkeops.has_cuda():
        assert "CUDA module: not built" in report and "nvcc" in report, report
        assert "Installation" in report, report


def test_selftest_fails_on_a_wrong_result(monkeypatch, capsys):
    wrong = selftest.Check("off by one", selftest._gaussian_sum,
                           lambda x, y, b: np.exp(-selftest._sqdist(x, y) / 0.7 ** 2) @ b + 1)
    monkeypatch.setattr(selftest, "CHECKS", (wrong,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert selftest.main() == 1
    assert "[FAIL]" in capsys.readouterr().out


INDEX_INSTALL = re.compile(r"pip3? (?:install|download)\s+(?:-\S+\s+)*['\"]?jaxkeops\b(?!/)")


@pytest.mark.parametrize("line", ["pip install jaxkeops", "pip install 'jaxkeops[bench]'",
                                  'pip install -U "jaxkeops[cuda13]"', "pip download jaxkeops"])
def test_index_install_pattern_catches(line):
    assert INDEX_INSTALL.search(line)


def test_no_install_from_a_package_index():
    """jaxkeops is not published: every install command installs from a checkout."""
    texts = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "docs").rglob("*.py"),
             *(ROOT / "jaxkeops").rglob("*.py")]
    offending = [f"{path.relative_to(ROOT)}: {line.strip()}" for path in texts
                 for line in path.read_text().splitlines() if INDEX_INSTALL.search(line)]
    assert not offending, offending
    assert not INDEX_INSTALL.search("pip install '.[bench]' in a jaxkeops checkout")


def test_wheel_excludes_the_benchmark_sources_that_need_src():
    """A benchmark program including a header from src/ cannot build from an installed wheel:
    pyproject.toml keeps it out, and the benchmark skips it when its source is absent."""
    from jaxkeops.benchmarks import cases

    pyproject = (ROOT / "pyproject.toml").read_text()
    excluded = re.search(r"^wheel\.exclude = \[(.*)\]", pyproject, re.M).group(1)
    for source in (ROOT / "jaxkeops" / "benchmarks").glob("*.cc"):
        local_includes = re.findall(r'^#include "', source.read_text(), re.M)
        listed = f'"jaxkeops/benchmarks/{source.name}"' in excluded
        assert listed == bool(local_includes), source.name
    assert cases._run_native("no_such_program.cc", [], []) is None


class _FakeDevice:
    def __init__(self, platform: str, platform_version: str):
        self.platform = platform
        self.client = type("Client", (), {"platform_version": platform_version})()


def test_selftest_names_what_runs_on_a_gpu():
    """Without a GPU: what the selftest would say for a CUDA and a ROCm device."""
    cuda, rocm = _FakeDevice("gpu", "cuda 13000"), _FakeDevice("gpu", "rocm 7.0")
    assert selftest._kernel_platform(cuda) == "cuda"
    assert selftest._kernel_platform(rocm) is None
    data = tuple(np.ones(shape, np.float32) for shape in ((4, 3), (5, 3), (5, 2)))
    gaussian = selftest.CHECKS[0]
    assert selftest._runs_on(gaussian, data, rocm).startswith("pure-JAX fallback")
    on_cuda = selftest._runs_on(gaussian, data, cuda)
    if jaxkeops.has_cuda():  # the Gaussian sum is a fused family on the GPU, not the interpreter
        assert on_cuda and "fallback" not in on_cuda and on_cuda != "interpreter", on_cuda
    else:
        assert on_cuda.startswith("pure-JAX fallback"), on_cuda
