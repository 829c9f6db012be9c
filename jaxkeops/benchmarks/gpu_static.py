"""`python -m jaxkeops.benchmarks gpu_static`: static evidence about the GPU kernels, no GPU needed.

From the built CUDA module's sm_90 code: every kernel's registers, stack frame, local and shared
memory (cuobjdump -res-usage) and its local-memory instructions (STL/LDL in the SASS: spills or
stack arrays); and SASS instructions per (i, j) pair of the steady-state inner loop (sass.py)
for three reference workloads, float32, D = 3: the Gaussian sum Σ_j exp(−‖x_i−y_j‖²) b_j, the
Sinkhorn logsumexp_j(−‖x_i−y_j‖²) and argKmin K = 10 of ‖x_i−y_j‖². Beside them, the same
figures for the kernels KeOps 2.3 generates for those formulas (keops_codegen.py), compiled
here by nvcc with and without -use_fast_math (KeOps's default is with).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import glob
import importlib.util
import os
import pathlib
import re
import tempfile

from jaxkeops.benchmarks import cuda_tools, keops_codegen, sass, sass_walk

ARCH = "sm_90"
D = 3
CASES = {
    "gaussian": "Gaussian sum Σ_j exp(−‖x_i−y_j‖²) b_j",
    "logsumexp": "Sinkhorn logsumexp_j(−‖x_i−y_j‖²)",
    "argkmin": "argKmin K=10 of ‖x_i−y_j‖²",
}
# ../shared/GPU.md's reference figures for KeOps 2.3 (instructions per pair; fast-math flag),
# measured by hand on 2026-11-29: the counter is validated against them.
KEOPS_REFERENCE = {("gaussian", True): 11.6, ("gaussian", False): 18.1,
                   ("logsumexp", True): 19.6, ("logsumexp", False): 25.6,
                   ("argkmin", True): 23.6, ("argkmin", False): 23.6}

# How each workload appears among the fused kernels: the hot body
# HotRows<T, S, PhiK, DC, R, Acc, Extra> of src/fused/kernel_body.h (S 1 = sqdist; PhiK 0 affine,
# 1 exp_affine; DC = D; R rows per thread; Extra 0 = V_j, 1 = Z_j in the staged row's extra slot).
FUSED_BODIES = {
    "gaussian": {"phi": "1", "acc": "SumAcc<", "extra": "1"},
    "logsumexp": {"phi": "0", "acc": "ExpSumAcc<", "extra": "0"},
    "argkmin": {"phi": "0", "acc": "KMinAcc<", "extra": "0"},
}

# Two φ-program workloads (float32, D = 3) on the hot φ-program body
# HotPhiRows<T, DC, F, R, J> (src/fused/phi_rows.h; F 1 = Z_j, 2 = X_i − Y_j): resources only.
# Its program runs through a dispatch per instruction (jump tables, BRX) that sass.py's path
# walk does not follow, so no instructions-per-pair figure is printed for them.
PHI_CASES = {
    "laplace": ("Laplace sum Σ_j exp(−‖x_i−y_j‖) b_j", "1"),
    "matern52_grad_x": ("Matérn 5/2 sum, gradient wrt x", "2"),
}
PHI_NOTE = "instr/pair: not counted (φ program dispatched per block of pairs; see docs)"


def _phi_match(demangled: str, case: str) -> bool:
    args = _template_args(demangled, "HotPhiRows")
    return (args is not None and len(args) == 5 and args[0] == "float" and args[1] == str(D)
            and args[2] == PHI_CASES[case][1])


# The interpreter's kernel of each workload (src/cuda/executor.cu), for its resources.
INTERPRETER_KERNELS = {"gaussian": "reduce_kernel<float, SumOps>",
                       "logsumexp": "reduce_kernel<float, ExpSumOps>",
                       "argkmin": "reduce_kernel<float, KMinOps>"}
INTERPRETER_NOTE = "not counted (no line info, or the walk failed: see sass_walk.py)"


def staged_bytes_per_j(d: int) -> int:
    """Bytes of one inner point in the fused kernels' shared tile (float32): D values and one
    extra slot, padded to 2, 4 or 8 values (kStagedWidth in src/fused/kernel_body.h)."""
    width = 2 if d + 1 <= 2 else 4 if d + 1 <= 4 else 8
    return 4 * width


@dataclasses.dataclass
class Row:
    implementation: str
    case: str
    regs: int | None = None
    stack: int | None = None
    local: str = "—"  # local memory: bytes, and spills or STL/LDL counts
    per_pair: float | None = None
    longest: float | None = None
    pairs: str = ""  # pairs per iteration and how they were derived
    note: str = ""


# ---------------------------------------------------------------- the built module

def cuda_module_path() -> str | None:
    """The built CUDA module: $JAXKEOPS_CUDA_MODULE (a module, or one sm_90 cubin), the
    installed jaxkeops/_jaxkeops_cuda*.so, or the build folder's."""
    if os.environ.get("JAXKEOPS_CUDA_MODULE"):
        return os.environ["JAXKEOPS_CUDA_MODULE"]
    spec = importlib.util.find_spec("jaxkeops._jaxkeops_cuda")
    if spec is not None and spec.origin and os.path.isfile(spec.origin):
        return spec.origin
    root = pathlib.Path(__file__).resolve().parents[2]
    found = sorted(glob.glob(str(root / "build" / "*" / "_jaxkeops_cuda*.so")))
    return found[-1] if found else None


def _short(demangled: str) -> str:
    """A kernel's name without namespaces and parameter list."""
    name = re.sub(r"^void\s+", "", demangled)
    depth, cut = 0, len(name)
    for k, ch in enumerate(name):  # drop the top-level parameter list
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not name[k:].startswith("(anonymous"):
            cut = k
            break
    name = name[:cut]
    return re.sub(r"\(anonymous namespace\)::|\b[a-z_]+::", "", name)


def _template_args(name: str, template: str) -> list[str] | None:
    """The top-level template arguments of `template<...>` inside a demangled name."""
    start = name.find(template + "<")
    if start < 0:
        return None
    args, depth, current = [], 0, ""
    for ch in name[start + len(template) + 1:]:
        if ch == "<":
            depth += 1
        elif ch == ">":
            if depth == 0:
                args.append(current.strip())
                return args
            depth -= 1
        if ch == "," and depth == 0:
            args.append(current.strip())
            current = ""
        else:
            current += ch
    return None


def _fused_match(demangled: str, case: str) -> int | None:
    """Rows per thread when the kernel is the float32, D = 3 sqdist hot body of a case."""
    args = _template_args(demangled, "HotRows")
    if args is None or len(args) != 7:
        return None
    t, score, phi, dc, rows, acc, extra = args
    want = FUSED_BODIES[case]
    acc = re.sub(r"^(\w+::)*", "", acc)
    extra_value = re.sub(r"^\([\w:]+\)", "", extra)
    if (t == "float" and score == "1" and phi == want["phi"] and dc == str(D)
            and acc.startswith(want["acc"]) and extra_value == want["extra"]):
        return int(rows)
    return None


def _local_instructions(code: list[sass.Instruction]) -> str:
    stl = sum(ins.base == "STL" for ins in code)
    ldl = sum(ins.base == "LDL" for ins in code)
    return f"STL {stl} / LDL {ldl}"


def module_rows(tools, folder) -> tuple[list[str], dict[tuple[str, str], Row], str]:
    """Per-kernel resource table of the built module, its rows of the reference cases keyed by
    (case, "fused" or "interpreter"), and a description of the module."""
    path = cuda_module_path()
    if path is None:
        return [], {}, "no built CUDA module found (build with nvcc present, or set " \
                       "JAXKEOPS_CUDA_MODULE)"
    cubins = ([path] if path.endswith(".cubin")  # a cubin given directly
              else cuda_tools.extract_cubins(tools["cuobjdump"], path, ARCH, folder))
    if not cubins:
        return [], {}, f"{path} holds no {ARCH} code (build with CMAKE_CUDA_ARCHITECTURES=90-real)"
    table = ["| kernel | regs | stack (B) | local (B) | shared (B) | local-memory instructions |",
             "|---|---|---|---|---|---|"]
    found: dict[tuple[str, str], Row] = {}
    interpreter_cubins: list[str] = []
    for cubin in cubins:
        resources = cuda_tools.resource_usage(tools["cuobjdump"], cubin)
        kernels = sass.parse(cuda_tools.disassemble(tools["nvdisasm"], cubin))
        names = cuda_tools.demangle(list(resources))
        for mangled, res in sorted(resources.items(), key=lambda kv: _short(names[kv[0]])):
            code = kernels.get(mangled, [])
            table.append(f"| `{_short(names[mangled])}` | {res.registers} | {res.stack} | "
                         f"{res.local} | {res.shared} | {_local_instructions(code)} |")
            for case, ops in INTERPRETER_KERNELS.items():
                if _short(names[mangled]) == ops:
                    found[case, "interpreter"] = Row(
                        "jaxkeops interpreter", case, res.registers, res.stack,
                        f"{res.local} B; {_local_instructions(code)}", note=INTERPRETER_NOTE)
                    interpreter_cubins.append(cubin)
            for case in PHI_CASES:
                if _phi_match(names[mangled], case):
                    found[case, "fused"] = Row(
                        "jaxkeops fused (HotPhiRows)", case, res.registers, res.stack,
                        f"{res.local} B; {_local_instructions(code)}", note=PHI_NOTE)
            for case in CASES:
                rows = _fused_match(names[mangled], case)
                if rows is None or (case, "fused") in found:
                    continue
                row = _loop_row("jaxkeops fused", case, mangled, code, staged_bytes_per_j(D),
                                rows)
                row.regs, row.stack = res.registers, res.stack
                row.local = f"{res.local} B; {_local_instructions(code)}"
                found[case, "fused"] = row
    _count_interpreter(tools, sorted(set(interpreter_cubins)), found)
    return table, found, f"{os.path.basename(path)} ({len(cubins)} {ARCH} cubin)"


def _count_interpreter(tools, cubins, found) -> None:
    """The interpreter rows' instructions per pair: one sub-tile walked with each workload's
    program (sass_walk.py); a failed walk leaves its CHECK sentence in the note."""
    rows = {case: row for (case, kind), row in found.items() if kind == "interpreter"}
    counts: dict = {}
    for cubin in cubins:
        text = sass_walk.disassemble_with_lines(tools["nvdisasm"], cubin)
        for case, count in sass_walk.interpreter_counts(text, tuple(rows)).items():
            if not isinstance(counts.get(case), sass_walk.SubTileCount):
                counts[case] = count
    for case, row in rows.items():
        count = counts.get(case, INTERPRETER_NOTE)
        if isinstance(count, str):
            row.note = count
            continue
        row.per_pair = count.per_pair
        row.pairs = (f"{count.pairs} = one sub-tile (kSubTile), its path walked with the "
                     f"workload's program")
        row.note = "per sub-tile: " + "; ".join(f"{label} {n}"
                                                 for label, n in count.parts.items())


def _loop_row(implementation, case, kernel, code, bytes_per_j, rows, known_rows=False) -> Row:
    """A row with the instructions per pair of a kernel's steady-state inner loop."""
    row = Row(implementation, case)
    count = sass.inner_loop(kernel, code)
    if count is None:
        row.note = "no loop found"
        return row
    measured = count.reuse
    j_per_iteration = count.shared_bytes / bytes_per_j
    pairs = j_per_iteration * rows
    row.per_pair = count.instructions / pairs
    row.longest = count.longest_path / pairs
    check = "" if round(measured) == rows else f", CHECK: shared values read {measured:.2f}×"
    source = "one per thread" if known_rows else "template R"
    row.pairs = (f"{pairs:g} = {j_per_iteration:g} j × {rows} row ({source}; shared values "
                 f"read {measured:.2f}×{check})")
    mufu = count.opcodes.get("MUFU", 0)
    if mufu:
        row.note = f"MUFU {mufu / pairs:g}/pair"
    return row


# ---------------------------------------------------------------- KeOps 2.3

def keops_rows(tools, folder) -> tuple[list[Row], str]:
    version = keops_codegen.keopscore_version()
    if version is None:
        return [], f"keopscore not installed: no KeOps rows ({cuda_tools.INSTALL_HINT})"
    if tools.get("nvcc") is None:
        return [], "nvcc not found: no KeOps rows (needs the CUDA toolkit)"
    jobs = [(case, fast) for case in CASES for fast in (True, False)]
    sources = {case: keops_codegen.generate(case) for case in CASES}

    def one(job):
        case, fast = job
        cubin, report = cuda_tools.compile_cubin(
            tools["nvcc"], sources[case], ARCH, ["-use_fast_math"] if fast else [], folder)
        kernels = sass.parse(cuda_tools.disassemble(tools["nvdisasm"], cubin))
        resources = cuda_tools.resource_usage(tools["cuobjdump"], cubin)
        (name, code), = kernels.items()
        row = _loop_row(f"KeOps {version}" + (" (-use_fast_math)" if fast else " (accurate)"),
                        case, name, code, keops_codegen.bytes_per_j(case), 1, known_rows=True)
        res = resources[name]
        row.regs, row.stack = res.registers, res.stack
        spills = cuda_tools.ptxas_spills(report)
        row.local = (f"{res.local} B; spills {spills[1]}/{spills[2]} B" if spills
                     else f"{res.local} B")
        return row

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        rows = list(pool.map(one, jobs))
    return rows, f"keopscore {version}"


def validation(rows: list[Row]) -> str:
    """Agreement of the counter with ../shared/GPU.md's hand counts of KeOps's kernels."""
    parts, worst = [], 0.0
    for row in rows:
        fast = "fast_math" in row.implementation
        ref = KEOPS_REFERENCE.get((row.case, fast))
        if ref is None or row.per_pair is None:
            continue
        worst = max(worst, abs(row.per_pair - ref) / ref)
        parts.append(f"{row.case} {'fast' if fast else 'accurate'} {row.per_pair:.1f} vs {ref}")
    if not parts:
        return ""
    return (f"Counter check against the hand counts of ../shared/GPU.md (KeOps, instr/pair): "
            f"{'; '.join(parts)}; largest deviation {worst * 100:.1f} %.")


# ---------------------------------------------------------------- the report

def _fmt(value, digits=1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def report() -> str:
    tools = {name: cuda_tools.find_tool(name) for name in ("nvdisasm", "cuobjdump", "nvcc")}
    missing = [n for n in ("nvdisasm", "cuobjdump") if tools[n] is None]
    if missing:
        return (f"needs {' and '.join(missing)}, not found on the PATH, in $CUDA_HOME/bin or in "
                f"the PyPI wheels: {cuda_tools.INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="jaxkeops_gpu_static_") as folder:
        resource_table, ours, module_note = module_rows(tools, folder)
        keops, keops_note = keops_rows(tools, folder)
    table = ["| workload (float32, D=3) | implementation | regs | stack (B) | local memory | "
             "SASS instr / pair (steady state) | with rare branches | pairs / iteration (how) "
             "| note |", "|---|---|---|---|---|---|---|---|---|"]
    for case, title in CASES.items():
        rows = [ours.get((case, "fused")) or Row("jaxkeops fused", case,
                                                 note="n/a (no fused kernel in this build)"),
                ours.get((case, "interpreter")) or Row("jaxkeops interpreter", case,
                                                       note=INTERPRETER_NOTE)]
        rows += [r for r in keops if r.case == case]
        for r in rows:
            table.append(f"| {title} | {r.implementation} | {_fmt(r.regs, 0)} | "
                         f"{_fmt(r.stack, 0)} | {r.local} | {_fmt(r.per_pair)} | "
                         f"{_fmt(r.longest)} | {r.pairs} | {r.note} |")
    for case, (title, _) in PHI_CASES.items():
        r = ours.get((case, "fused")) or Row("jaxkeops fused (HotPhiRows)", case,
                                             note="n/a (no such kernel in this build)")
        table.append(f"| {title} | {r.implementation} | {_fmt(r.regs, 0)} | {_fmt(r.stack, 0)} "
                     f"| {r.local} | — | — | | {r.note} |")
    versions = ", ".join(f"{n} {cuda_tools.tool_version(p)}" for n, p in tools.items() if p)
    notes = [
        "\n".join(table),
        f"Module: {module_note}. Toolchain: {versions}; {keops_note}; "
        f"{datetime.date.today()}.",
    ]
    check = validation(keops)
    if check:
        notes.append(check)
    notes.append("Method (jaxkeops/benchmarks/sass.py): the loop whose cheapest path runs no "
                 "other loop and reads the most shared memory; every instruction on that path "
                 "from its label to its backward branch (predicated-off, BSSY/BSYNC and uniform "
                 "ones included); "
                 "'with rare branches' is the most expensive path (K-list insertion, max "
                 "rescaling). Pairs per iteration = j per iteration (distinct shared-memory bytes "
                 "read on that path / bytes of one j: KeOps's dimy floats; the fused kernels' "
                 "staged row, D + 1 floats padded to 2, 4 or 8) × rows per thread (KeOps: one; "
                 "fused: the template argument R of HotRows, checked against how many times each "
                 "value loaded from shared memory is read).")
    notes.append("Interpreter rows (jaxkeops/benchmarks/sass_walk.py): no straight-line loop, "
                 "so one steady-state sub-tile (16 pairs of a full j tile) is walked on the "
                 "module's SASS with line info: the kernel parameters, pre-decoded pair "
                 "instructions and jump tables of the workload's program (built by "
                 "jaxkeops.program) decide every branch, branches on data take their "
                 "steady-state side (no new maximum, no K-list insertion), and every issued "
                 "instruction is counted; a branch nothing decides fails the walk (CHECK).")
    if resource_table:
        notes.append("Kernels of the built module (sm_90; shared memory as cuobjdump counts it, "
                     "with the 1 KiB sm_90 reserves per block; local-memory instructions: STL/LDL "
                     "in the SASS, spills or stack arrays):\n\n" + "\n".join(resource_table))
    return "\n\n".join(notes)
