"""The remote backend over TLS on loopback, against floors measured in the same run:

- a synchronous driver call (cuCtxSynchronize) through a relay vgpud and a GPU host vgpud,
  against a raw TCP round trip between two processes (target: within 2x), in turns with it
  (and with a raw TLS round trip, for reference);
- host-to-device and device-to-host bandwidth through them (64 MiB copies), against a raw
  TLS stream between two processes (target: at least 70 %).

    python bench/remote_bench.py [--calls N] [--size-mib M] [--relay-with client|gpu-host]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from harness import pin_client, pin_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import start_vgpud  # noqa: E402

from vgpu import launcher  # noqa: E402

ECHO = """
import socket, ssl, sys
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if len(sys.argv) > 1:  # over TLS, with this certificate and key
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    conn = context.wrap_socket(conn, server_side=True)
while True:
    data = conn.recv(64)
    if not data:
        break
    conn.sendall(data)
"""

TLS_SINK = """
import socket, ssl, sys
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
tls = context.wrap_socket(conn, server_side=True)
total = int(sys.argv[3])
buffer = bytearray(1 << 20)
while total > 0:
    n = tls.recv_into(buffer)
    if not n:
        break
    total -= n
tls.sendall(b"k")
"""


def server(code: str, *args: str) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    port = int(process.stdout.readline())
    pin_server(process.pid)
    return process, port


class Echo:
    """A 16-byte echo over TCP to another process (over TLS with the certificate in ``folder``)."""

    def __init__(self, folder: Path | None = None) -> None:
        if folder is None:
            self.process, port = server(ECHO)
            self.sock = socket.create_connection(("127.0.0.1", port))
        else:
            self.process, port = server(ECHO, str(folder / "cert.pem"), str(folder / "key.pem"))
            context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
            self.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def round_trip(self) -> None:
        self.sock.sendall(b"x" * 16)
        self.sock.recv(64)

    def close(self) -> None:
        self.sock.close()
        self.process.wait(5)


def interleaved(actions: dict[str, Callable[[], object]], calls: int, blocks: int = 20) -> dict[str, float]:
    """Median seconds of each action, run in turns of calls/blocks each, so that the floors
    and the call see the same moods of the machine."""
    samples: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(blocks):
        for name, action in actions.items():
            for _ in range(max(1, calls // blocks)):
                start = time.perf_counter()
                action()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def tls_stream(folder: Path, size: int) -> float:
    """Bytes per second of one TLS stream to another process."""
    process, port = server(TLS_SINK, str(folder / "cert.pem"), str(folder / "key.pem"), str(size))
    context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    data = memoryview(bytearray(os.urandom(1 << 20)) * (size >> 20))
    start = time.perf_counter()
    tls.sendall(data)
    tls.recv(1)
    elapsed = time.perf_counter() - start
    tls.close()
    process.wait(5)
    return size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--relay-with", choices=["client", "gpu-host"], default="client",
                        help="the CPU the relay shares: the client's (as on a host without a GPU) or the GPU host's")
    args = parser.parse_args()
    pin_client()
    folder = Path(tempfile.mkdtemp())
    daemon = start_vgpud("h100", folder, through="relay")
    try:
        # the host without a GPU (this client and its relay) on one CPU, the GPU host on the
        # other, as the floors' two ends are; or both daemons on the other CPU
        (pin_client if args.relay_with == "client" else pin_server)(daemon.process.pid)
        for process in daemon.others:
            pin_server(process.pid)
        os.environ["VGPU_SOCKET"] = str(daemon.socket)
        cuda = ctypes.CDLL(str(launcher.library_path("libvgpu-cuda.so")))
        assert cuda.cuInit(0) == 0
        ctx = ctypes.c_void_p()
        assert cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0) == 0 and cuda.cuCtxSetCurrent(ctx) == 0
        tcp, tls = Echo(), Echo(folder)
        medians = interleaved({"tcp": tcp.round_trip, "tls": tls.round_trip, "sync": cuda.cuCtxSynchronize}, args.calls)
        tcp.close()
        tls.close()
        floor_rtt, tls_rtt, sync = medians["tcp"], medians["tls"], medians["sync"]
        size = args.size_mib << 20
        host = ctypes.create_string_buffer(os.urandom(1 << 20) * (size >> 20), size)  # data, not zeros
        back = ctypes.create_string_buffer(size)
        dptr = ctypes.c_uint64()
        assert cuda.cuMemAlloc_v2(ctypes.byref(dptr), ctypes.c_size_t(size)) == 0
        floors, h2d, d2h = [], [], []
        for _ in range(5):  # the floor in every round: this VM's TLS speed drifts by 2x
            floors.append(tls_stream(folder, size))
            start = time.perf_counter()
            assert cuda.cuMemcpyHtoD_v2(dptr, host, ctypes.c_size_t(size)) == 0
            h2d.append(size / (time.perf_counter() - start))
            start = time.perf_counter()
            assert cuda.cuMemcpyDtoH_v2(back, dptr, ctypes.c_size_t(size)) == 0
            d2h.append(size / (time.perf_counter() - start))
        assert back.raw == host.raw
        floor_stream, h2d_rate, d2h_rate = (statistics.median(x) for x in (floors, h2d, d2h))
    finally:
        daemon.stop()
    print(json.dumps({
        "relay_with": args.relay_with,
        "sync_call": {"floor_tcp_round_trip_us": round(floor_rtt * 1e6, 1), "cuCtxSynchronize_us": round(sync * 1e6, 1),
                      "ratio": round(sync / floor_rtt, 2), "target": "within 2x",
                      "tls_round_trip_us": round(tls_rtt * 1e6, 1), "ratio_to_tls": round(sync / tls_rtt, 2)},
        "bandwidth": {"floor_tls_stream_GBps": round(floor_stream / 1e9, 3), "h2d_GBps": round(h2d_rate / 1e9, 3),
                      "d2h_GBps": round(d2h_rate / 1e9, 3), "h2d_ratio": round(h2d_rate / floor_stream, 2),
                      "d2h_ratio": round(d2h_rate / floor_stream, 2),
                      "h2d_ratio_per_round": [round(a / b, 2) for a, b in zip(h2d, floors)],
                      "d2h_ratio_per_round": [round(a / b, 2) for a, b in zip(d2h, floors)], "target": "at least 0.7",
                      "size_MiB": args.size_mib},
    }, indent=2))


if __name__ == "__main__":
    main()
