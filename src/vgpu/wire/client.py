"""A pure-Python client of the wire protocol, for tools and tests.

>>> with Client() as c:                      # doctest: +SKIP
...     c.control("hold", gpu=0, bytes=1 << 30)
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from vgpu.wire import protocol
from vgpu.wire.protocol import FLAG_REPLY, ProtocolError


class DaemonUnavailable(ConnectionError):
    """No vgpud answers at the socket."""


class ControlFailed(RuntimeError):
    """vgpud refused a control request."""


class Client:
    """A connection to vgpud: its Unix socket, or (``sock``) a connected TLS socket to a GPU
    host's vgpud, with the token and peer a relay presents there."""

    def __init__(self, path: Path | str | None = None, api: str = "control", digest: str = "",
                 timeout: float = 5.0, sock: socket.socket | None = None, token: str = "", peer: str = "") -> None:
        self.path = Path(path) if path else protocol.default_socket_path()
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError) as error:
                sock.close()
                raise DaemonUnavailable(f"no vgpud at {self.path} ({error.strerror}); start one with `vgpu up`") \
                    from None
        self.sock = sock
        self.seq = 0
        #: what the session's kernels printed (notices), for whoever reads it
        self.printed = b""
        self.reader = protocol.FrameReader(self.sock)
        self.token, self.peer = token, peer
        self.session, self.bitmap = self._hello(api, digest)

    def _hello(self, api: str, digest: str) -> tuple[int, bytes]:
        exe = os.path.realpath(sys.executable).encode()
        payload = protocol.HELLO_REQUEST.pack(protocol.MAGIC, protocol.PROTOCOL_VERSION, api.encode(),
                                              digest.encode().ljust(64, b"0"))
        env = b""
        if "CUDA_VISIBLE_DEVICES" in os.environ:
            env = f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}".encode()
        # what a relay adds for the GPU host: the token, and where the client runs
        network = protocol.pack_network_fields(self.token, self.peer) if self.token else b""
        reply = self.request(protocol.OP_HELLO, payload + struct.pack("<H", len(exe)) + exe
                             + struct.pack("<H", len(env)) + env + network)
        status, session, _, bitmap_len, _ = protocol.HELLO_REPLY.unpack_from(reply)
        bitmap = reply[protocol.HELLO_REPLY.size:protocol.HELLO_REPLY.size + bitmap_len]
        if status != protocol.HELLO_OK:
            (msg_len,) = struct.unpack_from("<H", reply, protocol.HELLO_REPLY.size + bitmap_len)
            start = protocol.HELLO_REPLY.size + bitmap_len + 2
            raise ConnectionRefusedError(reply[start:start + msg_len].decode())
        return session, bitmap

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (tests use it for malformed frames)."""
        self.sock.sendall(data)

    def request(self, op: int, payload: bytes = b"") -> bytes:
        self.seq += 1
        self.sock.sendall(protocol.pack_frame(op, payload, self.seq))
        try:
            frame = self.reader.read()
            while frame.op == protocol.OP_NOTICE and frame.seq == 0:  # unasked: busy, or kernels' output
                if struct.unpack_from("<I", frame.payload)[0] == protocol.NOTICE_OUTPUT:
                    self.printed += bytes(frame.payload[4:])
                frame = self.reader.read()
        except EOFError:
            raise DaemonUnavailable(f"vgpud at {self.path} closed the connection") from None
        if frame.seq != self.seq or not frame.flags & FLAG_REPLY:
            raise ProtocolError(f"reply {frame.seq} to request {self.seq}")
        return frame.payload

    def control(self, cmd: str, **args: Any) -> dict[str, Any]:
        reply = json.loads(self.request(protocol.OP_CONTROL, json.dumps({"cmd": cmd, **args}).encode()))
        if not reply.get("ok"):
            raise ControlFailed(reply.get("error", "vgpud refused the request"))
        return reply

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
