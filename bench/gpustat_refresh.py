"""One full gpustat refresh of 8 GPUs through libvgpu-nvml.so, against the floor: the same
number of raw Unix-socket round trips between two processes, measured in the same run.

gpustat sleeps 100 ms per GPU by design (to sample its processes' CPU use); the
refresh is timed with those sleeps skipped, and the sleeps are reported apart.

    python bench/gpustat_refresh.py [--refreshes N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refreshes", type=int, default=50)
    args = parser.parse_args()
    from conftest import start_vgpud
    from nvml_latency import pin_client, pin_server, socket_floor

    from vgpu.smi.snapshot import load_library

    pin_client()
    daemon = start_vgpud("8xh100", Path(tempfile.mkdtemp()))
    try:
        os.environ["VGPU_SOCKET"] = str(daemon.socket)
        pin_server(daemon.process.pid)
        load_library()
        import gpustat
        import pynvml

        import gpustat.core

        pynvml.nvmlInit()
        calls = {"n": 0}
        slept = []
        gpustat.core.time = type("NoSleep", (), {"sleep": staticmethod(slept.append), "time": time.time})
        original = pynvml._nvmlGetFunctionPointer

        def counting(name):
            function = original(name)

            def wrapper(*a):
                calls["n"] += 1
                return function(*a)
            return wrapper

        samples = []
        for _ in range(args.refreshes):
            start = time.perf_counter()
            gpustat.new_query()
            samples.append(time.perf_counter() - start)
        pynvml._nvmlGetFunctionPointer = counting
        gpustat.new_query()
        pynvml._nvmlGetFunctionPointer = original
        refresh = statistics.median(samples)
        floor = socket_floor(2000) * calls["n"]
    finally:
        daemon.stop()
    print(json.dumps({"gpus": 8, "nvml_calls_per_refresh": calls["n"], "refresh_ms": round(refresh * 1e3, 2),
                      "floor_ms": round(floor * 1e3, 2), "ratio": round(refresh / floor, 2),
                      "gpustat_own_sleep_ms": round(sum(slept) / (args.refreshes + 1) * 1e3)}, indent=2))


if __name__ == "__main__":
    main()
