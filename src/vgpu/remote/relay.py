"""The remote backend: a vgpud on a host without a GPU that forwards its clients to a GPU
host's vgpud over TLS (``vgpud --backend remote --connect HOST:PORT --token T``).

Each local client connection gets a TLS connection of its own to the GPU host. The client's
handshake travels with the tenant's token and the client's "host/pid" appended; after it,
bytes pass through unchanged in both directions. Tools' control connections are the relay's
own: ``stop`` stops the relay, not the GPU host; other requests are forwarded. The GPU host answers a network client
without shared memory (no page-locked windows, no direct reads of its memory, no published
answers), so every transfer travels in frames.

A connection to the GPU host that stops answering is cut after ``timeout`` seconds (TCP
keepalive and TCP_USER_TIMEOUT); the client's library bounds its own waits as well
(VGPU_TIMEOUT_MS), so a network cut gives errors, never a hang.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import struct
import threading
from pathlib import Path

from vgpu.remote.tls import client_context
from vgpu.wire import protocol
from vgpu.wire.client import Client
from vgpu.wire.protocol import FrameReader, ProtocolError

log = logging.getLogger("vgpud")
_PEERCRED = struct.Struct("3i")
#: default seconds before a silent GPU host counts as gone
DEFAULT_TIMEOUT_S = 5.0


class RemoteError(ConnectionError):
    """The GPU host cannot be used: unreachable, untrusted certificate, or token refused."""


def connect(address: tuple[str, int], ca: Path | None, timeout: float) -> ssl.SSLSocket:
    """A TLS connection to a GPU host's vgpud, its certificate checked; RemoteError with what
    went wrong and what to do otherwise."""
    host, port = address
    try:
        raw = socket.create_connection(address, timeout=timeout)
    except OSError as error:
        raise RemoteError(f"cannot reach vgpud at {host}:{port}: {error.strerror or error}; is "
                          f"`vgpud --listen {host}:{port}` running there, and the port open?") from None
    _keepalive(raw, timeout)
    try:
        tls = client_context(ca).wrap_socket(raw, server_hostname=host)
    except ssl.SSLCertVerificationError as error:
        raw.close()
        raise RemoteError(f"the certificate of {host}:{port} is not trusted ({error.verify_message}); pass the "
                          f"CA that signed it with --ca FILE" + (f" (now {ca})" if ca else "")) from None
    except (ssl.SSLError, OSError) as error:
        raw.close()
        raise RemoteError(f"TLS with {host}:{port} failed: {error}; vgpud there must listen with "
                          "--tls-cert and --tls-key") from None
    tls.settimeout(timeout)
    tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return tls


def _keepalive(sock: socket.socket, timeout: float) -> None:
    """Notice a GPU host that vanished within about ``timeout`` seconds, idle or not."""
    seconds = max(1, int(timeout))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, seconds // 2))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, max(1, seconds - seconds // 2))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, seconds * 1000)


def check(address: tuple[str, int], token: str, ca: Path | None, timeout: float = DEFAULT_TIMEOUT_S) -> dict:
    """Connect, verify the certificate, present the token; the GPU host's status as the
    tenant sees it (RemoteError with the reason otherwise)."""
    sock = connect(address, ca, timeout)
    try:
        with Client(sock=sock, token=token, peer=f"{socket.gethostname()}/{os.getpid()}") as client:
            return client.control("status")
    except ConnectionRefusedError as error:
        raise RemoteError(f"vgpud at {address[0]}:{address[1]} refused the token: {error}") from None
    except (OSError, ProtocolError, EOFError) as error:
        raise RemoteError(f"vgpud at {address[0]}:{address[1]} did not complete the handshake: {error}") from None


class Relay:
    def __init__(self, socket_path: Path, address: tuple[str, int], token: str, ca: Path | None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.address, self.token, self.ca, self.timeout = address, token, ca, timeout
        self.stopping = threading.Event()
        self._listener: socket.socket | None = None

    def bind(self) -> None:
        """Check the GPU host first (a relay that cannot work should not start), then listen."""
        status = check(self.address, self.token, self.ca, self.timeout)
        names = ", ".join(g["name"] for g in status["gpus"]) or "no GPUs"
        log.info("GPU host %s:%d (vgpud %s) offers %s", *self.address, status.get("version"), names)
        self.socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        listener.listen(128)
        listener.settimeout(0.2)
        self._listener = listener

    def serve_forever(self) -> None:
        log.info("vgpud %d relaying %s to %s:%d", os.getpid(), self.socket_path, *self.address)
        try:
            while not self.stopping.is_set():
                try:
                    client, _ = self._listener.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=self._forward, args=(client,), daemon=True).start()
        finally:
            self._listener.close()
            self.socket_path.unlink(missing_ok=True)

    def stop(self) -> None:
        self.stopping.set()

    def _forward(self, client: socket.socket) -> None:
        pid, _, _ = _PEERCRED.unpack(client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        client.settimeout(self.timeout)
        remote = None
        try:
            hello = FrameReader(client).read()
            if hello.op != protocol.OP_HELLO:
                raise ProtocolError(f"expected a handshake, got op 0x{hello.op:x}")
            if hello.payload[8:24].rstrip(b"\0") == b"control":
                self._serve_control(client, hello)
                return
            remote = connect(self.address, self.ca, self.timeout)
            network = b"".join(struct.pack("<H", len(x)) + x
                               for x in (self.token.encode(), f"{socket.gethostname()}/{pid}".encode()))
            remote.sendall(protocol.pack_frame(hello.op, hello.payload + network, hello.seq, hello.flags))
            client.settimeout(None)
            remote.settimeout(None)  # keepalive and TCP_USER_TIMEOUT bound a dead peer
            down = threading.Thread(target=self._pump, args=(remote, client), daemon=True)
            down.start()
            self._pump(client, remote)
            down.join()
        except (OSError, ProtocolError, EOFError, RemoteError) as error:
            log.warning("relaying pid %d: %s", pid, error)
        finally:
            for sock in (client, remote):
                if sock is not None:
                    sock.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        """Bytes from one side to the other until either ends; then both are shut down."""
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        try:
            while True:
                size = source.recv_into(buffer)
                if not size:
                    break
                sink.sendall(view[:size])
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _serve_control(self, client: socket.socket, hello: protocol.Frame) -> None:
        """A tool's connection is the relay's own: ``stop`` stops the relay (never the GPU
        host), and each other request goes to the GPU host on a connection of its own, so a
        tool gets an answer, or the reason there is none, even when the GPU host is gone."""
        reply = protocol.HELLO_REPLY.pack(protocol.HELLO_OK, 0, 1, 0, 0) + struct.pack("<HH", 0, 0)
        client.sendall(protocol.pack_frame(hello.op, reply, hello.seq, protocol.FLAG_REPLY))
        reader = FrameReader(client)
        while True:
            frame = reader.read()
            if frame.op == protocol.OP_PING:
                answer = frame.payload
            elif frame.op != protocol.OP_CONTROL:
                raise ProtocolError(f"op 0x{frame.op:x} on a control connection")
            elif json.loads(frame.payload or b"{}").get("cmd") == "stop":
                client.sendall(protocol.pack_frame(frame.op, json.dumps({"ok": True, "stopping": os.getpid()}).encode(),
                                                   frame.seq, protocol.FLAG_REPLY))
                self.stop()
                return
            else:
                answer = self._remote_control(frame.payload)
            client.sendall(protocol.pack_frame(frame.op, answer, frame.seq, protocol.FLAG_REPLY))

    def _about(self) -> dict:
        return {"pid": os.getpid(), "socket": str(self.socket_path), "connect": f"{self.address[0]}:{self.address[1]}"}

    def _remote_control(self, request: bytes) -> bytes:
        """The GPU host's answer, with the relay's own facts under "relay" (tools show both)."""
        try:
            sock = connect(self.address, self.ca, self.timeout)
            with Client(sock=sock, token=self.token, peer=f"{socket.gethostname()}/{os.getpid()}") as remote:
                answer = json.loads(remote.request(protocol.OP_CONTROL, request))
        except (RemoteError, ConnectionRefusedError, OSError, ProtocolError, ValueError) as error:
            answer = {"ok": False, "error": f"GPU host {self.address[0]}:{self.address[1]}: {error}"}
        answer["relay"] = self._about()
        return json.dumps(answer).encode()
