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
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


ECHO_SERVER = """
import socket, sys
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen(1)
print("ready", flush=True)
conn, _ = listener.accept()
while True:
    data = conn.recv(64)
    if not data:
        break
    conn.sendall(data)
"""


CPUS = sorted(os.sched_getaffinity(0))


def pin_client() -> None:
    """The benchmark on the first CPU, before any server starts; servers on the second
    (pin_server).  Left to the scheduler, client and server drift between sharing a CPU
    and not, and round trips between about 8 and 60 µs on the 2-core VM."""
    if len(CPUS) >= 2:
        os.sched_setaffinity(0, {CPUS[0]})


def pin_server(pid: int) -> None:
    if len(CPUS) >= 2:
        os.sched_setaffinity(pid, {CPUS[1]})


def socket_floor(calls: int) -> float:
    """Median seconds of a 16-byte request and reply over a Unix socket to another process."""
    path = os.path.join(tempfile.mkdtemp(), "echo.sock")
    server = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, path], stdout=subprocess.PIPE, text=True)
    server.stdout.readline()
    pin_server(server.pid)
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
    server.wait(5)
    return statistics.median(samples)


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
    from conftest import start_vgpud

    from vgpu.launcher import library_path

    pin_client()
    daemon = start_vgpud("8xh100", Path(tempfile.mkdtemp()))
    try:
        os.environ["VGPU_SOCKET"] = str(daemon.socket)
        pin_server(daemon.process.pid)
        lib = ctypes.CDLL(str(library_path()))
        floor = socket_floor(args.calls)
        published = nvml_call(args.calls, lib, "nvmlDeviceGetTemperature", 0)
        round_trip = nvml_call(args.calls, lib, "nvmlDeviceGetIndex")
    finally:
        daemon.stop()
    result = {"calls": args.calls, "floor_socket_round_trip_us": round(floor * 1e6, 2),
              "nvmlDeviceGetTemperature_us": round(published * 1e6, 2),
              "nvmlDeviceGetTemperature_ratio": round(published / floor, 3),
              "nvmlDeviceGetIndex_round_trip_us": round(round_trip * 1e6, 2),
              "nvmlDeviceGetIndex_ratio": round(round_trip / floor, 2)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
