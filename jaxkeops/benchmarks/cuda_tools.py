"""The CUDA command-line tools the static GPU benchmark needs, found without a GPU.

nvdisasm and cuobjdump come from PyPI (the gpu-static extra: wheels
nvidia-cuda-nvdisasm and nvidia-cuda-cuobjdump, which put them under site-packages/nvidia/*/bin)
or from a CUDA toolkit on the PATH; nvcc from the toolkit.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pathlib
import re
import shutil
import site
import subprocess
import sys
import tempfile

INSTALL_HINT = ("pip install nvidia-cuda-nvdisasm nvidia-cuda-cuobjdump keopscore==2.3 (or, in a "
                "jaxkeops checkout, pip install '.[gpu-static]')")


def find_tool(name: str) -> str | None:
    """Path of a CUDA tool: the PATH, $CUDA_HOME/bin, then the PyPI wheels' nvidia/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    roots = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"]
    for root in filter(None, roots):
        candidate = pathlib.Path(root) / "bin" / name
        if candidate.is_file():
            return str(candidate)
    packages = list(site.getsitepackages()) + [site.getusersitepackages()]
    packages += [p for p in sys.path if p.endswith("site-packages")]
    for base in packages:
        for candidate in sorted(glob.glob(os.path.join(base, "nvidia", "*", "bin", name))):
            if os.access(candidate, os.X_OK):
                return candidate
    return None


def tool_version(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+), V([\d.]+)", out)
    return m.group(2) if m else out.strip().splitlines()[-1] if out.strip() else "?"


@dataclasses.dataclass
class Resources:
    """What `cuobjdump -res-usage` says of one kernel."""
    registers: int
    stack: int  # bytes of stack frame per thread
    shared: int  # bytes of static shared memory per block
    local: int  # bytes of local memory per thread


_RES_FUNCTION = re.compile(r"^\s*Function (\S+):")
_RES_FIELDS = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def resource_usage(cuobjdump: str, binary: str) -> dict[str, Resources]:
    """Kernel (mangled name) -> resources, for a cubin or a host module embedding cubins. A
    module holding code for several architectures lists a kernel once per architecture; use
    `extract_cubins` first to get one architecture's."""
    out = subprocess.run([cuobjdump, "-res-usage", binary], capture_output=True, text=True,
                         check=True).stdout
    result, name = {}, None
    for line in out.splitlines():
        m = _RES_FUNCTION.match(line)
        if m:
            name = m.group(1)
            continue
        m = _RES_FIELDS.search(line)
        if m and name:
            result[name] = Resources(*map(int, m.groups()))
            name = None
    return result


def extract_cubins(cuobjdump: str, binary: str, arch: str, folder: str) -> list[str]:
    """The cubins of one architecture (e.g. "sm_90") embedded in a host module, written into
    folder."""
    listing = subprocess.run([cuobjdump, "-lelf", binary], capture_output=True, text=True,
                             check=True).stdout
    names = [line.split(":", 1)[1].strip() for line in listing.splitlines()
             if line.startswith("ELF file") and f".{arch}." in line]
    paths = []
    for name in names:
        subprocess.run([cuobjdump, "-xelf", name, os.path.abspath(binary)], cwd=folder,
                       capture_output=True, check=True)
        paths.append(os.path.join(folder, name))
    return paths


def disassemble(nvdisasm: str, cubin: str) -> str:
    return subprocess.run([nvdisasm, "-c", cubin], capture_output=True, text=True,
                          check=True).stdout


def demangle(names: list[str]) -> dict[str, str]:
    """Mangled -> demangled C++ names (c++filt, or cu++filt from the CUDA toolkit)."""
    tool = shutil.which("c++filt") or find_tool("cu++filt")
    if tool is None or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True
                         ).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def compile_cubin(nvcc: str, source: str, arch: str, flags: list[str], folder: str
                  ) -> tuple[str, str]:
    """Compiles CUDA source text to a cubin for one architecture (e.g. "sm_90"); returns the
    cubin's path and ptxas's report (-Xptxas -v)."""
    fd, src = tempfile.mkstemp(suffix=".cu", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.write(source)
    cubin = src[:-3] + ".cubin"
    done = subprocess.run([nvcc, "-O3", f"-arch={arch}", "-cubin", "-Xptxas", "-v", *flags,
                           "-o", cubin, src], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nvcc failed on {src}:\n{done.stderr}")
    return cubin, done.stderr


_PTXAS_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                           r"(\d+) bytes spill loads")


def ptxas_spills(report: str) -> tuple[int, int, int] | None:
    """(stack frame, spill stores, spill loads) bytes of the last function ptxas reported."""
    found = _PTXAS_SPILLS.findall(report)
    return tuple(map(int, found[-1])) if found else None
