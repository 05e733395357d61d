"""One NVML telemetry query through libvgpu-nvml.so against the floor: a raw Unix-socket
round trip between two processes, measured in the same run.

Two figures: nvmlDeviceGetTemperature, which vgpud publishes in shared memory (answered
without a round trip once read), and nvmlDeviceGetIndex, which always makes the round trip.

    python bench/nvml_latency.py [--calls N]

Prints each figure and its ratio to the floor; docs/benchmarks.md records results.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time

from harness import pinned_vgpud, socket_floor

from vgpu.launcher import library_path


def nvml_call(calls: int, lib: ctypes.CDLL, name: str, *args) -> float:
    """Median seconds of one call, on device 0, through the library."""
    handle = ctypes.c_void_p()
    assert lib.nvmlInit_v2() == 0
    assert lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(handle)) == 0
    function = getattr(lib, name)
    out = ctypes.c_uint()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        rc = function(handle, *args, ctypes.byref(out))
        samples.append(time.perf_counter() - start)
    assert rc == 0, f"{name} answered {rc}"
    lib.nvmlShutdown()
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    with pinned_vgpud("8xh100"):
        lib = ctypes.CDLL(str(library_path()))
        floor = socket_floor(args.calls)
        published = nvml_call(args.calls, lib, "nvmlDeviceGetTemperature", 0)
        round_trip = nvml_call(args.calls, lib, "nvmlDeviceGetIndex")
    result = {"calls": args.calls, "floor_socket_round_trip_us": round(floor * 1e6, 2),
              "nvmlDeviceGetTemperature_us": round(published * 1e6, 2),
              "nvmlDeviceGetTemperature_ratio": round(published / floor, 3),
              "nvmlDeviceGetIndex_round_trip_us": round(round_trip * 1e6, 2),
              "nvmlDeviceGetIndex_ratio": round(round_trip / floor, 2)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
