"""What the benchmarks share: the socket floor, CPU pinning, a pinned vgpud."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import Vgpud, start_vgpud  # noqa: E402

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


def median_seconds(action, repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``action``."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def pin_client(pid: int = 0) -> None:
    """The benchmark (or ``pid``) on the first CPU, before any server starts; servers on the
    second (pin_server).  Left to the scheduler, client and server drift between sharing a
    CPU and not, and round trips between about 8 and 60 µs on the 2-core VM."""
    if len(CPUS) >= 2:
        os.sched_setaffinity(pid, {CPUS[0]})


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


@contextmanager
def pinned_vgpud(gpus: str) -> Iterator[Vgpud]:
    """A vgpud on its own CPU, with this process pinned and pointed at it."""
    pin_client()
    daemon = start_vgpud(gpus, Path(tempfile.mkdtemp()))
    try:
        os.environ["VGPU_SOCKET"] = str(daemon.socket)
        pin_server(daemon.process.pid)
        yield daemon
    finally:
        daemon.stop()
