"""The remote backend: a vgpud on a host without a GPU that forwards its clients to a GPU
host's vgpud over TLS (``vgpud --backend remote --connect HOST:PORT --token T``), or to
several joined into one device list (``--connect`` again; vgpu.remote.join).

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

import contextlib
import json
import logging
import os
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from vgpu.remote.join import ClientProcess, HostGpus, JoinedConnection, Router, merge_launches, merge_status
from vgpu.remote.tls import client_context, parse_address
from vgpu.wire import protocol
from vgpu.wire.client import Client
from vgpu.wire.protocol import FrameReader, ProtocolError

log = logging.getLogger("vgpud")
_PEERCRED = struct.Struct("3i")
#: default seconds before a silent GPU host counts as gone
DEFAULT_TIMEOUT_S = 5.0
#: where the tokens may come from instead of the command line, which other users can read
TOKEN_ENV = "VGPU_TOKEN"
#: the most bytes a pump passes on in one write
PUMP_BUFFER = 1 << 20


class FrameEnds:
    """Follows the frames of a byte stream, so that a pump knows how many more bytes are sure
    to come: the rest of the frame begun, which it may wait for without risk of waiting for
    bytes nobody sends."""

    def __init__(self) -> None:
        self.left = 0
        self.header = bytearray()

    def feed(self, data: memoryview) -> None:
        at, size = 0, len(data)
        while at < size:
            if self.left:
                step = min(self.left, size - at)
                self.left -= step
                at += step
                continue
            take = min(protocol.HEADER.size - len(self.header), size - at)
            self.header += data[at:at + take]
            at += take
            if len(self.header) == protocol.HEADER.size:
                self.left = protocol.HEADER.unpack(self.header)[0]
                self.header.clear()

    @property
    def coming(self) -> int:
        return self.left or (protocol.HEADER.size - len(self.header) if self.header else 0)


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


@dataclass(frozen=True)
class Upstream:
    """A GPU host and the token its vgpud knows this relay's tenant by."""

    address: tuple[str, int]
    token: str

    @property
    def name(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"


def given_tokens(options: list[str] | tuple[str, ...]) -> list[str]:
    """The tokens of --token options, or else of $VGPU_TOKEN (comma-separated, one per host)."""
    return list(options) or [token for token in os.environ.get(TOKEN_ENV, "").split(",") if token]


def upstreams(connect: list[str] | tuple[str, ...], tokens: list[str] | tuple[str, ...]) -> list[Upstream]:
    """GPU hosts from ``HOST:PORT`` texts and their tokens: one token for all, or one each."""
    if len(tokens) not in (1, len(connect)):
        raise ValueError(f"{len(connect)} GPU hosts and {len(tokens)} tokens: give one token for all of them, "
                         "or one per --connect in the same order")
    return [Upstream(parse_address(address), tokens[0] if len(tokens) == 1 else tokens[k])
            for k, address in enumerate(connect)]


class Relay:
    def __init__(self, socket_path: Path, hosts: list[Upstream], ca: Path | None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.hosts, self.ca, self.timeout = hosts, ca, timeout
        self.stopping = threading.Event()
        self._listener: socket.socket | None = None
        #: joined hosts: their GPUs, and how each API's calls are routed (vgpu.remote.join)
        self.joined: list[HostGpus] = []
        self.routers: dict[str, Router] = {}
        self._processes: dict[int, ClientProcess] = {}
        self._lock = threading.Lock()

    def bind(self) -> None:
        """Check the GPU hosts first (a relay that cannot work should not start), then listen."""
        seen: dict[str, str] = {}
        for host in self.hosts:
            status = check(host.address, host.token, self.ca, self.timeout)
            names = ", ".join(g["name"] for g in status["gpus"]) or "no GPUs"
            log.info("GPU host %s (vgpud %s) offers %s", host.name, status.get("version"), names)
            for gpu in status["gpus"]:
                if gpu["uuid"] in seen:
                    raise RemoteError(f"GPU {gpu['index']} of {host.name} has the UUID {gpu['uuid']} of a GPU of "
                                      f"{seen[gpu['uuid']]}: one GPU cannot be joined twice (simulators: start "
                                      "each with its own --pci-domain)")
                seen[gpu["uuid"]] = host.name
            self.joined.append(HostGpus(host.name, tuple(g["index"] for g in status["gpus"]),
                                        tuple(g["uuid"] for g in status["gpus"])))
        if len(self.hosts) > 1:
            self.routers = {api: Router(api, self.joined) for api in ("cuda", "nvml")}
        self.socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        listener.listen(128)
        listener.settimeout(0.2)
        self._listener = listener

    def serve_forever(self) -> None:
        log.info("vgpud %d relaying %s to %s", os.getpid(), self.socket_path, ", ".join(h.name for h in self.hosts))
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
        remotes: list[socket.socket] = []
        try:
            hello = FrameReader(client).read()
            if hello.op != protocol.OP_HELLO:
                raise ProtocolError(f"expected a handshake, got op 0x{hello.op:x}")
            if hello.payload[8:24].rstrip(b"\0") == b"control":
                self._serve_control(client, hello)
                return
            if self.routers:
                remotes = [self._reach(host) for host in self.hosts]
                if all(sock is None for sock in remotes):
                    raise RemoteError("no GPU host answers")
                with self._process(pid) as process:
                    joined = JoinedConnection.open(self.routers, client, hello, remotes,
                                                   [self._network_fields(host, pid) for host in self.hosts], process)
                    if joined is not None:
                        for sock in (client, *filter(None, remotes)):
                            sock.settimeout(None)  # keepalive and TCP_USER_TIMEOUT bound a dead peer
                        joined.serve()
                return
            remote = connect(self.hosts[0].address, self.ca, self.timeout)
            remotes = [remote]
            remote.sendall(protocol.pack_frame(hello.op, hello.payload + self._network_fields(self.hosts[0], pid),
                                               hello.seq, hello.flags))
            client.settimeout(None)
            remote.settimeout(None)  # keepalive and TCP_USER_TIMEOUT bound a dead peer
            down = threading.Thread(target=self._pump, args=(remote, client), daemon=True)
            down.start()
            self._pump(client, remote)
            down.join()
        except EOFError:
            pass  # the client or a GPU host closed its connection
        except (OSError, ProtocolError, RemoteError) as error:
            log.warning("relaying pid %d: %s", pid, error)
        finally:
            for sock in (client, *filter(None, remotes)):
                sock.close()

    def _reach(self, host: Upstream) -> ssl.SSLSocket | None:
        """A connection to a joined host for a client; None (logged) when it cannot be had, and
        the client sees that host's GPUs lost."""
        try:
            return connect(host.address, self.ca, self.timeout)
        except RemoteError as error:
            log.warning("%s; its GPUs are lost to new processes until it answers", error)
            return None

    @contextlib.contextmanager
    def _process(self, pid: int) -> Iterator[ClientProcess]:
        """What a client process's connections share, while it has one."""
        with self._lock:
            process = self._processes.setdefault(pid, ClientProcess())
            process.connections += 1
        try:
            yield process
        finally:
            with self._lock:
                process.connections -= 1
                if not process.connections:
                    del self._processes[pid]

    @staticmethod
    def _network_fields(host: Upstream, pid: int) -> bytes:
        return protocol.pack_network_fields(host.token, f"{socket.gethostname()}/{pid}")

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        """Bytes from one side to the other until either ends; then both are shut down. A
        frame begun is read on to its end, or until the buffer is full, before it is passed
        on: a TLS read yields one 16 KiB record, and a write per record would wake the reader
        for each; and the frame's own length says how much more is sure to come."""
        buffer = bytearray(PUMP_BUFFER)
        view = memoryview(buffer)
        ends = FrameEnds()
        try:
            while True:
                size = source.recv_into(buffer)
                if not size:
                    break
                ends.feed(view[:size])
                while ends.coming and size < PUMP_BUFFER:
                    more = source.recv_into(view[size:size + min(ends.coming, PUMP_BUFFER - size)])
                    if not more:
                        break
                    ends.feed(view[size:size + more])
                    size += more
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
        return {"pid": os.getpid(), "socket": str(self.socket_path), "connect": ", ".join(h.name for h in self.hosts)}

    def _remote_control(self, request: bytes) -> bytes:
        """The GPU host's answer, with the relay's own facts under "relay" (tools show both);
        joined hosts' status and launches as one answer, GPUs numbered across hosts."""
        answers = [self._host_control(host, request) for host in self.hosts]
        command = json.loads(request or b"{}").get("cmd")
        if len(answers) == 1 or command not in ("status", "launches"):
            answer = answers[0]
        elif command == "status":
            answer = merge_status(answers, [h.name for h in self.hosts])
        else:
            answer = merge_launches(answers, self.joined, [h.name for h in self.hosts])
        answer["relay"] = self._about()
        return json.dumps(answer).encode()

    def _host_control(self, host: Upstream, request: bytes) -> dict:
        try:
            sock = connect(host.address, self.ca, self.timeout)
            with Client(sock=sock, token=host.token, peer=f"{socket.gethostname()}/{os.getpid()}") as remote:
                return json.loads(remote.request(protocol.OP_CONTROL, request))
        except (RemoteError, ConnectionRefusedError, OSError, ProtocolError, ValueError) as error:
            return {"ok": False, "error": f"GPU host {host.name}: {error}"}
