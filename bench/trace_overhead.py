"""What `vgpu trace` costs a process: start to exit of the same program, traced and not.

The floor is the untraced run of each program in the same session; the Ollama-like runner
loads cudart 13 and the vgpu libcuda.so.1 and asks for the device count, so its traced
figure includes the shim's call records.

    python bench/trace_overhead.py
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import pin_client, start_vgpud  # first: it puts tests/ on the path

from conftest import build_ollama_pattern  # noqa: E402

from vgpu.trace.recorder import traced_environment

RUNS = 40


def median_ms(command: list[str], env: dict[str, str]) -> float:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main() -> None:
    pin_client()
    folder = Path(tempfile.mkdtemp())
    records = folder / "records"
    records.mkdir()
    daemon = start_vgpud("8xh100", folder)
    try:
        _, runner, bundle = build_ollama_pattern(folder)
        base = dict(daemon.env, LD_LIBRARY_PATH=str(bundle))
        print("| program | untraced (floor) | traced | ratio |\n|---|---|---|---|")
        for label, command in (("`true`", ["/bin/true"]), ("`python3 -c pass`", [sys.executable, "-c", "pass"]),
                               ("Ollama-like runner: cudart 13, `cudaGetDeviceCount`", [str(runner)])):
            plain = median_ms(command, base)
            traced = median_ms(command, traced_environment(records, base))
            print(f"| {label} | {plain:.1f} ms | {traced:.1f} ms | {traced / plain:.2f} |")
    finally:
        daemon.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
