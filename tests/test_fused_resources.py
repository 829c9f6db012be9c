"""Issue 14's static acceptance for the fused kernels, read off the built CUDA module's sm_90 code:
every fused kernel and combine kernel has a 0-byte stack frame and no local memory, hence no
spills (ptxas spills into the stack frame) and no STL/LDL. Skipped without the CUDA module (built
with sm_90 code) or cuobjdump (the CUDA toolkit's, or `pip install nvidia-cuda-cuobjdump`).
`python -m jaxkeops.benchmarks gpu_static` also counts the STL/LDL in the SASS of every kernel."""

import os
import tempfile

import pytest

from jaxkeops.benchmarks import cuda_tools, gpu_static


def _fused_kernels():
    """(demangled name, resources) of every fused / combine kernel of the sm_90 cubins."""
    cuobjdump = cuda_tools.find_tool("cuobjdump")
    if cuobjdump is None:
        pytest.skip("needs cuobjdump")
    path = gpu_static.cuda_module_path()
    if path is None or not os.path.exists(path):
        pytest.skip("no CUDA module built")
    found = []
    with tempfile.TemporaryDirectory() as folder:
        cubins = cuda_tools.extract_cubins(cuobjdump, path, "sm_90", folder)
        if not cubins:
            pytest.skip("module built without sm_90 code")
        for cubin in cubins:
            resources = cuda_tools.resource_usage(cuobjdump, cubin)
            names = cuda_tools.demangle(list(resources))
            found += [(names[m], res) for m, res in resources.items()
                      if "jaxkeops_fused_kernel" in names[m] or "jaxkeops_fused_combine" in names[m]]
    return found


def test_every_fused_kernel_has_no_stack_frame_or_local_memory():
    kernels = _fused_kernels()
    # Hot bodies (HotRows, HotPhiRows), generic bodies and combines, float and double.
    names = " ".join(name for name, _ in kernels)
    for body in ("HotRows<", "HotPhiRows<", "GenericRow<", "jaxkeops_fused_combine<"):
        for dtype in ("float", "double"):
            assert f"{body}{dtype}" in names or f"<{dtype}, {body}" in names, (body, dtype)
    bad = [f"{name}: stack {res.stack} B, local {res.local} B" for name, res in kernels
           if res.stack or res.local]
    assert not bad, "\n".join(bad)
