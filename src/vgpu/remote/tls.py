"""TLS for vgpud's network listener and for the relay's connections to it.

The listener completes each connection's TLS handshake on a thread of its own (a slow or
hostile peer holds up nobody) and hands finished connections to vgpud's selector loop,
which a socket pair wakes.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from pathlib import Path

log = logging.getLogger("vgpud")
#: a peer must finish its TLS handshake within this time
HANDSHAKE_TIMEOUT_S = 5.0


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


def client_context(ca: Path | None) -> ssl.SSLContext:
    """Verifies the GPU host's certificate against ``ca`` (or the system's CAs) and its name."""
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def parse_address(text: str, default_host: str = "") -> tuple[str, int]:
    """("host", port) from "host:port", "[::1]:port" or ":port"."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r}: write the address as HOST:PORT")
    return host.strip("[]") or default_host, int(port)


class TlsListener:
    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        self.context = context
        self.listener = socket.create_server(address, reuse_port=False)
        self.wakeup, self._wake = socket.socketpair()
        self._ready: list[tuple[ssl.SSLSocket, tuple]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.getsockname()[:2]

    def start(self) -> None:
        threading.Thread(target=self._accept_loop, name="vgpud-tls-accept", daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                sock, peer = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handshake, args=(sock, peer), daemon=True).start()

    def _handshake(self, sock: socket.socket, peer: tuple) -> None:
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            tls = self.context.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError) as error:
            log.warning("TLS handshake with %s failed: %s", peer[0], error)
            sock.close()
            return
        # vgpud's connections never block (vgpu.server.daemon bounds their sends itself): with
        # a Python timeout, every TLS write would poll the socket first, a system call per reply
        tls.settimeout(None)
        tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._ready.append((tls, peer))
        self._wake.send(b"x")

    def take(self) -> list[tuple[ssl.SSLSocket, tuple]]:
        """The connections whose handshakes finished since the last call."""
        try:
            self.wakeup.recv(4096)
        except BlockingIOError:
            pass
        with self._lock:
            ready, self._ready = self._ready, []
        return ready

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        self.wakeup.close()
        self._wake.close()
