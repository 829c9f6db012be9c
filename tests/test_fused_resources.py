"""Issue 14's static acceptance for the fused kernels, read off the built CUDA module's sm_90 code:
every fused kernel and combine kernel has a 0-byte stack frame, no local memory and no spills (no
STL/LDL instruction). Skipped without the CUDA module (built with sm_90 code), cuobjdump and
nvdisasm (`pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm`, the gpu-static extra)."""

import os
import tempfile

import pytest

from jaxkeops.benchmarks import cuda_tools, gpu_static, sass

_TOOLS = {name: cuda_tools.find_tool(name) for name in ("nvdisasm", "cuobjdump")}


def _fused_kernels():
    """(demangled name, resources, SASS) of every fused / combine kernel of the sm_90 cubins."""
    if not all(_TOOLS.values()):
        pytest.skip("needs cuobjdump and nvdisasm")
    path = gpu_static.cuda_module_path()
    if path is None or not os.path.exists(path):
        pytest.skip("no CUDA module built")
    found = []
    with tempfile.TemporaryDirectory() as folder:
        cubins = cuda_tools.extract_cubins(_TOOLS["cuobjdump"], path, "sm_90", folder)
        if not cubins:
            pytest.skip("module built without sm_90 code")
        for cubin in cubins:
            resources = cuda_tools.resource_usage(_TOOLS["cuobjdump"], cubin)
            code = sass.parse(cuda_tools.disassemble(_TOOLS["nvdisasm"], cubin))
            names = cuda_tools.demangle(list(resources))
            for mangled, res in resources.items():
                name = names[mangled]
                if "jaxkeops_fused_kernel" in name or "jaxkeops_fused_combine" in name:
                    found.append((name, res, code.get(mangled, [])))
    return found


def test_every_fused_kernel_has_no_stack_local_memory_or_spills():
    kernels = _fused_kernels()
    # Hot bodies (HotRows, HotPhiRows), generic bodies and combines, float and double.
    names = " ".join(name for name, _, _ in kernels)
    for body in ("HotRows<", "HotPhiRows<", "GenericRow<", "jaxkeops_fused_combine<"):
        assert body in names, body
    bad = []
    for name, res, code in kernels:
        local_ops = sum(ins.base in ("STL", "LDL") for ins in code)
        if res.stack or res.local or local_ops:
            bad.append(f"{name}: stack {res.stack} B, local {res.local} B, STL/LDL {local_ops}")
    assert not bad, "\n".join(bad)
