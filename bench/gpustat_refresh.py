"""One full gpustat refresh of 8 GPUs through libvgpu-nvml.so, against the floor: the same
number of raw Unix-socket round trips between two processes, measured in the same run.

gpustat sleeps 100 ms per GPU by design (to sample its processes' CPU use); the
refresh is timed with those sleeps skipped, and the sleeps are reported apart.

    python bench/gpustat_refresh.py [--refreshes N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from harness import pinned_vgpud, socket_floor

from vgpu.smi.snapshot import load_library


def count_nvml_calls(pynvml, action) -> int:
    """How many NVML functions ``action`` calls through pynvml."""
    calls = 0
    original = pynvml._nvmlGetFunctionPointer

    def counting(name):
        function = original(name)

        def counted(*args):
            nonlocal calls
            calls += 1
            return function(*args)
        return counted

    pynvml._nvmlGetFunctionPointer = counting
    try:
        action()
    finally:
        pynvml._nvmlGetFunctionPointer = original
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refreshes", type=int, default=50)
    args = parser.parse_args()
    with pinned_vgpud("8xh100"):
        load_library()
        import gpustat.core
        import pynvml

        pynvml.nvmlInit()
        slept: list[float] = []
        gpustat.core.time = type("NoSleep", (), {"sleep": staticmethod(slept.append), "time": time.time})
        samples = []
        for _ in range(args.refreshes):
            start = time.perf_counter()
            gpustat.core.new_query()
            samples.append(time.perf_counter() - start)
        calls = count_nvml_calls(pynvml, gpustat.core.new_query)
        refresh = statistics.median(samples)
        floor = socket_floor(2000) * calls
    print(json.dumps({"gpus": 8, "nvml_calls_per_refresh": calls, "refresh_ms": round(refresh * 1e3, 2),
                      "floor_ms": round(floor * 1e3, 2), "ratio": round(refresh / floor, 2),
                      "gpustat_own_sleep_ms": round(sum(slept) / (args.refreshes + 1) * 1e3)}, indent=2))


if __name__ == "__main__":
    main()
