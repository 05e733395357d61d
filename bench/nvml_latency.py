"""One NVML telemetry query through libvgpu-nvml.so against the floor: a raw Unix-socket
round trip between two processes, measured in the same run.

    python bench/nvml_latency.py [--calls N]

Prints each figure and its ratio to the floor; docs/benchmarks.md records results.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _echo_server(path: str, ready) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    ready.set()
    conn, _ = listener.accept()
    while True:
        data = conn.recv(64)
        if not data:
            return
        conn.sendall(data)


def socket_floor(calls: int) -> float:
    """Median seconds of a 16-byte request and 16-byte reply over a Unix socket to another process."""
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "echo.sock")
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=_echo_server, args=(path, ready), daemon=True)
    server.start()
    ready.wait(10)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    message = b"x" * 16
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        client.sendall(message)
        client.recv(64)
        samples.append(time.perf_counter() - start)
    client.close()
    server.join(5)
    return statistics.median(samples)


def nvml_call(calls: int, lib: ctypes.CDLL) -> float:
    handle = ctypes.c_void_p()
    assert lib.nvmlInit_v2() == 0
    assert lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(handle)) == 0
    temp = ctypes.c_uint()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        lib.nvmlDeviceGetTemperature(handle, 0, ctypes.byref(temp))
        samples.append(time.perf_counter() - start)
    lib.nvmlShutdown()
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    from conftest import start_vgpud

    from vgpu.launcher import library_path

    daemon = start_vgpud("8xh100", Path(tempfile.mkdtemp()))
    try:
        os.environ["VGPU_SOCKET"] = str(daemon.socket)
        lib = ctypes.CDLL(str(library_path()))
        floor = socket_floor(args.calls)
        query = nvml_call(args.calls, lib)
    finally:
        daemon.stop()
    result = {"calls": args.calls, "socket_round_trip_us": round(floor * 1e6, 2),
              "nvmlDeviceGetTemperature_us": round(query * 1e6, 2), "ratio": round(query / floor, 2)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
