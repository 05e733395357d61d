"""Kernels computed by vgpu's compute engine against the same algorithms in C, in the same run:

- throughput: saxpy over 64 Mi floats, a shared-memory tree reduction and a warp-shuffle
  reduction (16 Mi floats each), a tiled shared-memory SGEMM 512 x 512. Each kernel's PTX
  (bench/compute/kernels.cu, nvcc -arch=compute_90 -O3) runs through
  ``vgpu.compute.engine.Program`` on numpy arrays; the floor is bench/compute/reference.c
  (gcc -O2, OpenMP over as many threads as the engine uses) on the same arrays. Results
  must agree (bit for bit, the SGEMM within 1e-4: nvcc fuses its multiply-adds);
  ``ratio`` = C time / engine time (1 = as fast as C; the issue's targets: 0.5, SGEMM 0.25).
- compile time per 1,000 PTX instructions, cold (the on-disk cache empty) and cached (a
  second Program over the same PTX, as a second run of an application finds it), for the
  benchmark's kernels and the test corpus's (tests/compute/kernels).

    python bench/compute_bench.py [--repeats R] [--skip-compile]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.compute.corpus_support import nvcc  # noqa: E402
from harness import median_seconds  # noqa: E402

#: the host threads the engine runs CTAs on (its default), and so the C reference's
THREADS = len(os.sched_getaffinity(0))
#: PTX lines that are not instructions: directives, labels, braces, comments
_NOT_INSTRUCTION = re.compile(r"^\s*(\.|//|\$?[\w$]+:|[{}]|$)")


def build(folder: Path) -> tuple[str, ctypes.CDLL]:
    compiler = nvcc()
    if compiler is None:
        sys.exit("nvcc is needed to build the benchmark's kernels")
    ptx = folder / "kernels.ptx"
    subprocess.run([compiler, "-ptx", "-arch=compute_90", "-O3", "-o", str(ptx), str(HERE / "compute" / "kernels.cu")],
                   check=True)
    library = folder / "reference.so"
    subprocess.run(["gcc", "-O2", "-fopenmp", "-shared", "-fPIC", "-o", str(library),
                    str(HERE / "compute" / "reference.c")], check=True)
    reference = ctypes.CDLL(str(library))
    reference.set_threads(THREADS)
    return ptx.read_text(), reference


def pointer(array: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(array.ctypes.data)


def warm_median_seconds(action: Callable[[], None], repeats: int) -> float:
    action()  # warm: compile, fault the pages in
    return median_seconds(action, repeats)


def throughput(ptx: str, reference: ctypes.CDLL, repeats: int) -> dict:
    from vgpu.compute.engine import Program

    program = Program.from_ptx(ptx)
    rng = np.random.default_rng(0)
    results = {}

    def compare(name: str, engine: Callable[[], np.ndarray], c: Callable[[], np.ndarray], exact: bool,
                work: str, reset: Callable[[], None] = lambda: None) -> None:
        engine_seconds = warm_median_seconds(engine, repeats)
        c_seconds = warm_median_seconds(c, repeats)
        reset()  # both sides start again from the same inputs for the comparison
        got, want = engine(), c()
        agree = bool(np.array_equal(got, want) if exact else np.allclose(got, want, rtol=1e-4, atol=1e-4))
        results[name] = {"work": work, "engine_ms": round(engine_seconds * 1e3, 3), "c_ms": round(c_seconds * 1e3, 3),
                         "ratio": round(c_seconds / engine_seconds, 3), "results_agree": agree}

    n = 64 << 20
    x = rng.standard_normal(n).astype(np.float32)
    y0 = rng.standard_normal(n).astype(np.float32)
    y_engine, y_c = y0.copy(), y0.copy()
    kernel = program.kernel("saxpy")

    def saxpy_engine() -> np.ndarray:
        kernel.launch(grid=(n // 256, 1, 1), block=(256, 1, 1), args=[n, 2.0, x, y_engine])
        return y_engine

    def saxpy_c() -> np.ndarray:
        reference.saxpy(n, ctypes.c_float(2.0), pointer(x), pointer(y_c))
        return y_c

    def saxpy_reset() -> None:
        np.copyto(y_engine, y0)
        np.copyto(y_c, y0)

    compare("saxpy", saxpy_engine, saxpy_c, exact=True, work="64 Mi floats", reset=saxpy_reset)

    n = 16 << 20
    data = rng.standard_normal(n).astype(np.float32)
    for name, per in (("tree_reduce", 256), ("warp_reduce", 32)):
        partial_engine, partial_c = np.zeros(n // per, np.float32), np.zeros(n // per, np.float32)
        kernel = program.kernel(name)
        function = getattr(reference, name)
        compare(name,
                lambda: (kernel.launch(grid=(n // 256, 1, 1), block=(256, 1, 1), args=[n, data, partial_engine]),
                         partial_engine)[1],
                lambda: (function(n, pointer(data), pointer(partial_c)), partial_c)[1],
                exact=True, work="16 Mi floats")

    n = 512
    a, b = rng.standard_normal((2, n, n)).astype(np.float32)
    c_engine, c_c = np.zeros((n, n), np.float32), np.zeros((n, n), np.float32)
    kernel = program.kernel("sgemm")
    compare("sgemm",
            lambda: (kernel.launch(grid=(n // 16, n // 16, 1), block=(16, 16, 1), args=[n, a, b, c_engine]),
                     c_engine)[1],
            lambda: (reference.sgemm(n, pointer(a), pointer(b), pointer(c_c)), c_c)[1],
            exact=False, work="512 x 512")
    return results


def kernel_instructions(ptx: str) -> dict[str, int]:
    """PTX instructions per .entry (lines inside its body that are not directives or labels)."""
    counts, current, depth = {}, None, 0
    for line in ptx.splitlines():
        entry = re.match(r"^\s*\.(?:visible\s+)?\.entry\s+([\w$]+)", line)
        if entry:
            current, depth = entry.group(1), 0
            counts[current] = 0
            continue
        if current is None:
            continue
        depth += line.count("{") - line.count("}")
        if depth > 0 and line.rstrip().endswith(";") and not _NOT_INSTRUCTION.match(line):
            counts[current] += 1
        if depth == 0 and "}" in line:
            current = None
    return counts


def compile_times(sources: list[Path], folder: Path) -> dict:
    """Cold and cached compile time of every kernel of ``sources`` (a kernel the engine cannot
    compile yet is listed with why)."""
    from vgpu.compute import cache
    from vgpu.compute.engine import Program

    os.environ["VGPU_COMPUTE_CACHE"] = str(folder / "compile-cache")  # empty: the first compile is cold
    if cache.directory() is None:
        return {"skipped": "the engine has no on-disk cache"}
    kernels, failures, cold_total, cached_total, instructions_total = {}, {}, 0.0, 0.0, 0
    for source in sources:
        ptx_path = folder / f"{source.stem}.ptx"
        subprocess.run([nvcc(), "-ptx", "-arch=compute_90", "-O3", "-o", str(ptx_path), str(source)], check=True)
        text = ptx_path.read_text()
        for name, count in kernel_instructions(text).items():
            try:
                started = time.perf_counter()
                Program.from_ptx(text).kernel(name).compile()
                cold = time.perf_counter() - started
                started = time.perf_counter()
                Program.from_ptx(text).kernel(name).compile()
                cached = time.perf_counter() - started
            except Exception as error:  # noqa: BLE001 - a kernel the engine refuses is reported, not fatal
                failures[f"{source.stem}:{name}"] = f"{type(error).__name__}: {str(error)[:120]}"
                continue
            kernels[f"{source.stem}:{name}"] = {"instructions": count, "cold_ms": round(cold * 1e3, 1),
                                                "cached_ms": round(cached * 1e3, 1)}
            cold_total += cold
            cached_total += cached
            instructions_total += count
    per_thousand = 1000 / max(instructions_total, 1)
    return {"kernels": len(kernels), "instructions": instructions_total,
            "cold_ms_per_1000_instructions": round(cold_total * 1e3 * per_thousand, 1),
            "cached_ms_per_1000_instructions": round(cached_total * 1e3 * per_thousand, 1),
            "target_cold_ms_per_1000_instructions": 50,
            "largest": sorted(kernels.items(), key=lambda item: -item[1]["instructions"])[:5],
            "not_compiled": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-compile", action="store_true", help="only the throughput figures")
    parser.add_argument("--skip-throughput", action="store_true", help="only the compile-time figures")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="compute-bench-"))
    os.environ["VGPU_COMPUTE_CACHE"] = str(folder / "cache")
    ptx, reference = build(folder)
    report: dict = {"threads": THREADS}
    if not args.skip_throughput:
        report["throughput"] = throughput(ptx, reference, args.repeats)
        report["targets"] = {"saxpy": 0.5, "tree_reduce": 0.5, "warp_reduce": 0.5, "sgemm": 0.25}
    if not args.skip_compile:
        sources = [HERE / "compute" / "kernels.cu", *sorted((ROOT / "tests" / "compute" / "kernels").glob("*.cu"))]
        report["compile"] = compile_times(sources, folder)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
