"""The SASS loop counter of the static GPU benchmark (jaxkeops/benchmarks/sass.py): on a
hand-written listing (no tools needed), then on a kernel compiled here by nvcc and disassembled
by nvdisasm when both are present."""

import os
import subprocess
import tempfile

import pytest

from jaxkeops.benchmarks import cuda_tools, gpu_static, keops_codegen, sass

# Two kernels. `outer` has a loop over tiles holding two innermost loops: a copy loop without
# shared loads and the pair loop [.L_x_2, /*0130*/]: 2 j per iteration (LDS.128 at +0 and +0x10,
# 16 B per j), an out-of-line insertion skipped by the forward branch at /*00b0*/ (rare path of
# 3 instructions), BSSY/BSYNC and a uniform instruction on the path, a predicated-off
# instruction. Each shared value is read twice (two rows per thread).
LISTING = """
	.section	.text.outer,"ax",@progbits
.text.outer:
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   LDG.E R2, desc[UR4][R8.64] ;
.L_x_1:
        /*0020*/                   STS [R3], R2 ;
        /*0030*/                   IADD3 R3, R3, 0x4, RZ ;
        /*0040*/               @P0 BRA `(.L_x_1) ;
        /*0050*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
.L_x_2:
        /*0060*/                   LDS.128 R4, [UR6] ;
        /*0070*/                   LDS.128 R12, [UR6+0x10] ;
        /*0080*/                   BSSY B0, `(.L_x_3) ;
        /*0090*/                   FADD R20, R30, -R4 ;
        /*00a0*/                   FADD R21, R31, -R4 ;
        /*00b0*/               @P1 BRA `(.L_x_3) ;
        /*00c0*/                   MOV R40, R20 ;
        /*00d0*/                   MOV R41, R21 ;
        /*00e0*/                   IADD3 R42, R42, 0x1, RZ ;
.L_x_3:
        /*00f0*/                   BSYNC B0 ;
        /*0100*/                   FADD R22, R30, -R12 ;
        /*0110*/                   FADD R23, R31, -R12 ;
        /*0120*/              @!P2 MUFU.EX2 R24, R22 ;
        /*0125*/                   UIADD3 UR6, UR6, 0x20, URZ ;
        /*0130*/               @P3 BRA `(.L_x_2) ;
        /*0140*/               @P4 BRA `(.L_x_0) ;
        /*0150*/                   EXIT ;
.L_x_4:
        /*0160*/                   BRA `(.L_x_4);
	.section	.text.flat,"ax",@progbits
.text.flat:
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   EXIT ;
"""


def test_parse_splits_kernels_and_reads_instructions():
    kernels = sass.parse(LISTING)
    assert set(kernels) == {"outer", "flat"}
    code = kernels["outer"]
    assert len(code) == 24
    bra = code[11]
    assert (bra.offset, bra.predicate, bra.opcode, bra.target) == (0xb0, "@P1", "BRA", ".L_x_3")
    assert code[2].label == ".L_x_1" and code[6].label == ".L_x_2" and code[5].label is None
    assert code[7].opcode == "LDS.128" and code[7].operands == "R12, [UR6+0x10]"
    assert bra.conditional and not code[0].conditional
    assert kernels["flat"][1].base == "EXIT"


def test_loops_innermost_and_blocks():
    code = sass.parse(LISTING)["outer"]
    found = sass.loops(code)
    # Three backward branches: the copy loop, the pair loop, the tile loop; the self-loop at
    # the end (the trap after EXIT) is a fourth.
    heads = sorted((code[lp.head].offset, code[lp.latch].offset) for lp in found)
    assert heads == [(0x10, 0x140), (0x20, 0x40), (0x60, 0x130), (0x160, 0x160)]
    inner = sorted(code[lp.head].offset for lp in sass.innermost(found))
    assert inner == [0x20, 0x60, 0x160]
    blocks = sass.blocks(code)
    # The block ending with the forward branch at /*00b0*/ goes to .L_x_3 and falls through.
    (branching,) = [b for b in blocks if code[b.end - 1].offset == 0xb0]
    targets = sorted(code[blocks[s].start].offset for s in branching.successors)
    assert targets == [0xc0, 0xf0]
    # An unconditional branch does not fall through.
    (trap,) = [b for b in blocks if code[b.start].offset == 0x160]
    assert [code[blocks[s].start].offset for s in trap.successors] == [0x160]


def test_inner_loop_counts_the_cheapest_path():
    code = sass.parse(LISTING)["outer"]
    count = sass.inner_loop("outer", code)
    assert (count.head_offset, count.latch_offset) == (0x60, 0x130)
    # Body: 15 instructions; the cheapest path skips the 3 of the insertion.
    assert count.body == 15
    assert count.instructions == 12
    assert count.longest_path == 15
    assert count.opcodes == {"LDS": 2, "BSSY": 1, "FADD": 4, "BRA": 2, "BSYNC": 1, "MUFU": 1,
                             "UIADD3": 1}
    assert count.shared_bytes == 32
    assert count.reuse == pytest.approx(2.0)  # R4 and R12 read twice each, R5..R7 never
    assert count.pairs(bytes_per_j=16) == pytest.approx(4.0)  # 2 j × 2 rows
    assert count.pairs(bytes_per_j=16, rows=1) == pytest.approx(2.0)


def test_inner_loop_of_a_kernel_without_loops():
    assert sass.inner_loop("flat", sass.parse(LISTING)["flat"]) is None


def test_overlapping_shared_loads_count_once():
    listing = """
.text.k:
.L_x_0:
        /*0000*/                   LDS.128 R12, [R17] ;
        /*0010*/                   LDS R26, [R17+0xc] ;
        /*0020*/                   LDS.64 R8, [R17+0x10] ;
        /*0030*/                   LDS R10, [R17+0x18] ;
        /*0040*/                   FADD R1, R12, R26 ;
        /*0050*/               @P0 BRA `(.L_x_0) ;
"""
    count = sass.inner_loop("k", sass.parse(listing)["k"])
    assert count.shared_bytes == 28  # [0, 16) ∪ [12, 16) ∪ [16, 24) ∪ [24, 28)
    assert count.instructions == count.body == 6


def test_fused_kernel_matching_reads_template_arguments():
    gaussian = ("void jaxkeops::fused::fused_kernel<jaxkeops::fused::HotRows<float, 1, 1, 3, 2, "
                "jaxkeops::fused::SumAcc<float, 1>, (jaxkeops::fused::Extra)1> >("
                "jaxkeops::fused::FusedCall)")
    assert gpu_static._fused_match(gaussian, "gaussian") == 2
    assert gpu_static._fused_match(gaussian, "logsumexp") is None
    assert gpu_static._fused_match(gaussian.replace("float, 1, 1, 3", "float, 1, 1, 4"),
                                   "gaussian") is None
    lse = gaussian.replace("SumAcc<float, 1>", "ExpSumAcc<float, 1, jaxkeops::fused::ScaledExp"
                           "<float>, (jaxkeops::fused::ExpKind)0>").replace(
        "float, 1, 1, 3", "float, 1, 0, 3").replace("Extra)1", "Extra)0")
    assert gpu_static._fused_match(lse, "logsumexp") == 2
    assert gpu_static._fused_match(lse, "gaussian") is None
    assert gpu_static._short(gaussian) == ("fused_kernel<HotRows<float, 1, 1, 3, 2, "
                                           "SumAcc<float, 1>, (Extra)1> >")


_TOOLS = {name: cuda_tools.find_tool(name) for name in ("nvcc", "nvdisasm", "cuobjdump")}

# Two rows per thread, 4 j per iteration (explicit unroll), one float4 of shared memory per j
# (y_j and b_j), one __expf (MUFU.EX2) per pair.
_KERNEL = r"""
extern "C" __global__ void pairs(const float4* __restrict__ y, const float* __restrict__ x,
                                 float* __restrict__ out, int n) {
  __shared__ float4 tile[256];
  tile[threadIdx.x] = y[threadIdx.x];
  __syncthreads();
  const int i = 2 * (blockIdx.x * blockDim.x + threadIdx.x);
  const float a0 = x[3 * i], a1 = x[3 * i + 1], a2 = x[3 * i + 2];
  const float c0 = x[3 * i + 3], c1 = x[3 * i + 4], c2 = x[3 * i + 5];
  float s = 0.f, t = 0.f;
#pragma unroll 4
  for (int j = 0; j < n; ++j) {
    const float4 v = tile[j];
    const float d0 = a0 - v.x, d1 = a1 - v.y, d2 = a2 - v.z;
    const float e0 = c0 - v.x, e1 = c1 - v.y, e2 = c2 - v.z;
    s += __expf(-(d0 * d0 + d1 * d1 + d2 * d2)) * v.w;
    t += __expf(-(e0 * e0 + e1 * e1 + e2 * e2)) * v.w;
  }
  out[i] = s;
  out[i + 1] = t;
}
"""


@pytest.mark.skipif(not all(_TOOLS.values()), reason="needs nvcc, nvdisasm and cuobjdump")
def test_counts_a_compiled_loop():
    with tempfile.TemporaryDirectory() as folder:
        cubin, report = cuda_tools.compile_cubin(_TOOLS["nvcc"], _KERNEL, "sm_90", [], folder)
        assert cuda_tools.ptxas_spills(report) == (0, 0, 0)
        resources = cuda_tools.resource_usage(_TOOLS["cuobjdump"], cubin)
        # sm_90 reserves 1 KiB of shared memory per block beside the kernel's own 4 KiB.
        assert resources["pairs"].stack == 0 and resources["pairs"].shared == 4096 + 1024
        code = sass.parse(cuda_tools.disassemble(_TOOLS["nvdisasm"], cubin))["pairs"]
    count = sass.inner_loop("pairs", code)
    assert count.shared_bytes == 4 * 16  # the 4-way unrolled body, not the remainder loop
    assert count.reuse == pytest.approx(2.0)
    pairs = count.pairs(bytes_per_j=16)
    assert pairs == 8
    assert count.opcodes["MUFU"] == 8  # one exp per pair
    assert count.instructions == count.body == count.longest_path  # straight-line body
    # Per pair at least: 3 differences, 3 squares/FMAs, the exp's scaling and the
    # multiply-add; all the loop's bookkeeping is shared by 8 pairs.
    assert 8 <= count.instructions / pairs <= 16


@pytest.mark.skipif(not all(_TOOLS.values()), reason="needs nvcc, nvdisasm and cuobjdump")
def test_resource_usage_of_a_host_module_built_here():
    path = gpu_static.cuda_module_path()
    if path is None or not os.path.exists(path):
        pytest.skip("no CUDA module built")
    with tempfile.TemporaryDirectory() as folder:
        cubins = cuda_tools.extract_cubins(_TOOLS["cuobjdump"], path, "sm_90", folder)
        if not cubins:
            pytest.skip("module built without sm_90 code")
        resources = cuda_tools.resource_usage(_TOOLS["cuobjdump"], cubins[0])
        kernels = sass.parse(subprocess.run([_TOOLS["nvdisasm"], "-c", cubins[0]],
                                            capture_output=True, text=True, check=True).stdout)
    assert resources and set(resources) <= set(kernels)
    assert all(r.registers > 0 for r in resources.values())


@pytest.mark.skipif(not all(_TOOLS.values()) or keops_codegen.keopscore_version() != "2.3",
                    reason="needs nvcc, nvdisasm, cuobjdump and keopscore 2.3")
def test_counter_agrees_with_the_hand_counts_of_keops_kernels():
    """KeOps 2.3's generated kernels, compiled here: the counter must land within 2 % of the
    hand counts recorded in ../shared/GPU.md (11.6 / 18.1, 19.6 / 25.6, 23.6)."""
    with tempfile.TemporaryDirectory() as folder:
        rows, _ = gpu_static.keops_rows(_TOOLS, folder)
    assert len(rows) == 6
    for row in rows:
        fast = "fast_math" in row.implementation
        reference = gpu_static.KEOPS_REFERENCE[(row.case, fast)]
        assert row.per_pair == pytest.approx(reference, rel=0.02), (row.case, fast)
        assert row.regs > 0 and row.stack == 0


def test_gpu_static_says_how_to_install_missing_tools(monkeypatch):
    monkeypatch.setattr(cuda_tools, "find_tool",
                        lambda name: None if name == "nvdisasm" else "/bin/true")
    message = gpu_static.report()
    assert "needs nvdisasm" in message and "pip install nvidia-cuda-nvdisasm" in message
