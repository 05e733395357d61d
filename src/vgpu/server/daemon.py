"""vgpud's listener: accepts connections, runs the handshake, dispatches frames.

One thread serves every connection through a selector: a call is answered where it
is read, which keeps a round trip close to the socket's own latency.  Sockets never block:
a frame (or a TLS record) that has only partly arrived waits in its connection while the
others are served, and so does the part of a reply its client has not yet taken, so a
client that stops in the middle of a 64 MiB copy, sends a byte at a time or does not read
its replies holds up nobody.  Calls that may wait (nvmlEventSetWait) run on a thread of
their own and answer when done.  A malformed frame closes its own connection
and nothing more.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import selectors
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vgpu.api.manifest import OP_BASE
from vgpu.remote.tls import TlsListener
from vgpu.remote.tokens import TokenStore
from vgpu.server import control
from vgpu.server.cuda_service import CudaService
from vgpu.server.dispatch import ApiDispatcher
from vgpu.server.nvml_service import NvmlService
from vgpu.server.published import Published
from vgpu.server.state import DaemonState, Later, Session
from vgpu.server.windows import can_reach
from vgpu.wire import protocol
from vgpu.wire.codec import DecodeError, Pieces, Reply
from vgpu.wire.protocol import FLAG_REPLY, Frame, FrameParser, ProtocolError

log = logging.getLogger("vgpud")
_PEERCRED = struct.Struct("3i")
#: a client that takes none of a waiting reply for this long is disconnected
SEND_TIMEOUT_S = 5.0
#: the rest of a frame longer than this is received straight into a buffer of its own
LARGE_FRAME = 1 << 20
#: how often a client waiting behind a computing kernel hears that it still runs
BUSY_NOTICE_S = 0.2
CUDA_ERROR_NOT_READY = 600
#: launch failures a GPU keeps for the rest of the context: illegal address, assert, trap, launch failure
STICKY_ERRORS = frozenset({700, 710, 715, 719})
#: the first op of an API call (below: the protocol's own ops)
API_OPS_FROM = min(OP_BASE.values())


@dataclass
class _Bulk:
    """A bulk frame being received: its header and the buffer its payload fills."""

    op: int
    flags: int
    seq: int
    buffer: bytearray
    view: memoryview
    got: int


@dataclass(eq=False)  # each is itself: kept in sets by identity
class Connection:
    sock: socket.socket
    pid: int
    uid: int
    parser: FrameParser = field(default_factory=FrameParser)
    #: reused for every recv: a fresh 64 KiB bytes object per call costs more than the call
    inbox: bytearray = field(default_factory=lambda: bytearray(1 << 16))
    session: Session | None = None
    api: str = ""
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    #: the address of a network (TLS) client; None for a local one
    peer: tuple | None = None
    #: the buffer bulk frames are received into, kept from one to the next (fresh memory costs
    #: a page fault per 4 KiB), and the one a frame read but not yet answered holds
    bulk: bytearray | None = None
    lent: bytearray | None = None
    #: the bulk frame this connection is in the middle of
    receiving: _Bulk | None = None
    #: a client that takes none of its reply for this long is disconnected
    send_timeout: float = SEND_TIMEOUT_S
    #: what the peer has not yet taken of a reply; the selector sends it as room comes, so a
    #: client slow to read holds up no other
    outbox: list[memoryview] = field(default_factory=list)
    #: when the peer last took some of a waiting reply
    progress_at: float = 0.0

    def __post_init__(self) -> None:
        self.sock.setblocking(False)

    def recv_into(self, view: memoryview | bytearray) -> int | None:
        """Bytes read into ``view``; 0 when the peer closed; None when there are none yet
        (or only part of a TLS record)."""
        try:
            return self.sock.recv_into(view)
        except (BlockingIOError, ssl.SSLWantReadError):
            return None

    def send(self, frame: Frame, payload: Reply, wait: bool = False, flags: int = FLAG_REPLY) -> None:
        """A reply (or, with ``flags`` 0, a notice). What the socket does not take at once waits in
        the outbox for the selector (``wait``: on a thread of its own, the sender waits for room
        instead)."""
        parts = ([protocol.HEADER.pack(payload.size, frame.op, flags, frame.seq), *payload]
                 if isinstance(payload, Pieces) else [protocol.pack_frame(frame.op, payload, frame.seq, flags)])
        with self.send_lock:
            for part in parts:
                view = memoryview(part).cast("B")
                if wait and not self.outbox:  # (behind a waiting reply, it waits in line)
                    self._send_all(view)
                    continue
                if not self.outbox:
                    view, _ = self._send_now(view)
                if view.nbytes:  # copied: a large reply lies in a buffer its thread reuses
                    self.outbox.append(memoryview(bytes(view)))
                    self.progress_at = time.monotonic()

    def flush(self) -> bool:
        """Sends what waits in the outbox, as far as the socket takes it; whether all went."""
        with self.send_lock:
            while self.outbox:
                rest, _ = self._send_now(self.outbox[0])
                if rest.nbytes < self.outbox[0].nbytes:
                    self.progress_at = time.monotonic()
                if rest.nbytes:
                    self.outbox[0] = rest
                    return False
                self.outbox.pop(0)
            return True

    def _send_now(self, view: memoryview) -> tuple[memoryview, int]:
        """What the socket takes now is sent; the rest, and the poll event to wait for before
        trying again."""
        try:
            while view.nbytes:
                view = view[self.sock.send(view):]
        except (BlockingIOError, ssl.SSLWantWriteError):
            return view, select.POLLOUT
        except ssl.SSLWantReadError:  # TLS must read before it writes again (a key update)
            return view, select.POLLIN
        return view, 0

    def _send_all(self, view: memoryview) -> None:
        view, event = self._send_now(view)
        while view.nbytes:
            self._wait(event)
            view, event = self._send_now(view)

    def _wait(self, event: int) -> None:
        poller = select.poll()
        poller.register(self.sock, event)
        if not poller.poll(self.send_timeout * 1000):
            raise TimeoutError(f"pid {self.pid} took no reply for {self.send_timeout:g} s")


@dataclass
class NetworkSettings:
    """A TLS listener for clients on other hosts (their relays): its address, certificate and
    key, and the token store that admits tenants."""

    address: tuple[str, int]
    cert: Path
    key: Path
    tokens: TokenStore
    #: a network client that takes none of a waiting reply for this long is disconnected (one
    #: that stops inside a frame, or reads slowly, holds up nobody: it waits in its connection)
    io_timeout: float = SEND_TIMEOUT_S


class Daemon:
    def __init__(self, state: DaemonState, socket_path: Path, network: NetworkSettings | None = None) -> None:
        self.state = state
        self.socket_path = socket_path
        self.network = network
        self._network_listener: TlsListener | None = None
        #: one dispatcher per API, by the name the handshake gives
        if state.backend == "cuda":  # a real GPU on this host, through cuda-python
            from vgpu.server.cuda_real import RealCudaService

            cuda_service = RealCudaService(state)
        else:
            cuda_service = CudaService(state)
        self.apis = {"nvml": ApiDispatcher(NvmlService(state)), "cuda": ApiDispatcher(cuda_service)}
        #: each API op's dispatcher, and the ops whose calls may wait (answered on a thread)
        self.dispatchers = {f.op: d for d in self.apis.values() for f in d.api.functions}
        self.waiting_ops = {f.op for d in self.apis.values() for f in d.api.functions if f.wait_param is not None}
        #: the served ops whose answers are published in shared memory (vgpu.server.published)
        self.published_ops = {op for d in self.apis.values() for op, codec in d.codecs.items() if codec.function.published}
        #: ops a service answers with its own layout (CUDA's module loads and launches), by op
        self.private_ops = {op: handler for dispatcher in self.apis.values()
                            for op, handler in getattr(dispatcher.service, "private_ops", {}).items()}
        self.stopping = threading.Event()
        self._listener: socket.socket | None = None
        #: connections with a reply waiting in their outbox
        self._sending: set[Connection] = set()
        self.published: Published | None = None
        #: the session published answers are computed in: vgpud itself
        self._own_session = Session(0, os.getpid(), os.getuid(), "vgpud")
        #: work other threads hand to the selector thread (kernels that ended)
        self.loop_calls = state.loop_calls
        #: the ops answered at once while the process computes: "not ready"
        self.query_ops = {f.op for f in self.apis["cuda"].api.functions if f.name in ("cuStreamQuery", "cuEventQuery")}
        self._selector: selectors.BaseSelector | None = None
        self._busy_notices_at = 0.0
        state.kernel_ended = self.kernel_ended

    # lifecycle ------------------------------------------------------------------------
    def bind(self) -> None:
        path = self.socket_path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                raise RuntimeError(f"a vgpud already listens at {path}; stop it with `vgpu down` "
                                   f"or choose another socket with {protocol.SOCKET_ENV}")
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink(missing_ok=True)  # left behind by a daemon that died
            finally:
                probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(128)
        self._listener = listener
        if self.network is not None:
            from vgpu.remote.tls import server_context

            self._network_listener = TlsListener(self.network.address,
                                                 server_context(self.network.cert, self.network.key))
        self.published = Published(path.with_name(path.name + ".published"),
                                   lambda op, payload: self.dispatchers[op].call(self._own_session, op, payload),
                                   per_op_limit=8 * len(self.state.gpus))

    def serve_forever(self) -> None:
        assert self._listener is not None, "bind() first"
        log.info("vgpud %d serving %d GPU(s) at %s", os.getpid(), len(self.state.gpus), self.socket_path)
        selector = selectors.DefaultSelector()
        self._selector = selector
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self.loop_calls.wakeup, selectors.EVENT_READ, "calls")
        network = self._network_listener
        if network is not None:
            selector.register(network.wakeup, selectors.EVENT_READ, "network")
            network.start()
            log.info("vgpud %d serving over TLS at %s:%d", os.getpid(), *network.address)
        try:
            while not self.stopping.is_set():
                for key, events in selector.select(timeout=protocol.PUBLISHED_REFRESH_MS / 1000):
                    if key.data is None:
                        self._accept(selector)
                    elif key.data == "calls":
                        self.loop_calls.run_pending()
                    elif key.data == "network":
                        for sock, peer in network.take():
                            selector.register(sock, selectors.EVENT_READ, Connection(
                                sock, 0, -1, peer=peer, send_timeout=self.network.io_timeout))
                    elif key.data.sock.fileno() >= 0:  # not closed by an earlier event of this round
                        if events & selectors.EVENT_WRITE:
                            self._writable(selector, key.data)
                        if events & selectors.EVENT_READ and key.data.sock.fileno() >= 0:
                            self._readable(selector, key.data)
                self._drop_stalled(selector)
                self._tell_waiters()
                self.published.refresh_if_due()
        finally:
            for key in list(selector.get_map().values()):
                if isinstance(key.data, Connection):
                    self._close(selector, key.data)
            self._listener.close()
            if network is not None:
                network.close()
            self.socket_path.unlink(missing_ok=True)
            self.published.close()

    def stop(self) -> None:
        self.stopping.set()

    # connections ----------------------------------------------------------------------
    def _accept(self, selector: selectors.BaseSelector) -> None:
        sock, _ = self._listener.accept()
        pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        selector.register(sock, selectors.EVENT_READ, Connection(sock, pid, uid))

    def _writable(self, selector: selectors.BaseSelector, conn: Connection) -> None:
        try:
            if conn.flush():
                selector.modify(conn.sock, selectors.EVENT_READ, conn)
                self._sending.discard(conn)
        except OSError as error:
            log.info("connection of pid %d ended: %s", conn.pid, error)
            self._close(selector, conn)

    def _watch_sending(self, selector: selectors.BaseSelector, conn: Connection) -> None:
        """A reply waits in the connection's outbox: the selector tells when there is room."""
        if conn.outbox and conn not in self._sending and conn.sock.fileno() >= 0:
            selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
            self._sending.add(conn)

    def _drop_stalled(self, selector: selectors.BaseSelector) -> None:
        """Connections whose peer has taken none of a waiting reply for their send timeout."""
        now = time.monotonic()
        for conn in [c for c in self._sending if now - c.progress_at > c.send_timeout]:
            log.info("pid %d took none of its reply for %g s; closing its connection", conn.pid, conn.send_timeout)
            self._close(selector, conn)

    def _close(self, selector: selectors.BaseSelector, conn: Connection) -> None:
        self._sending.discard(conn)
        selector.unregister(conn.sock)
        conn.sock.close()
        if conn.session is not None:
            self.state.detach(conn.session)
            conn.session = None
            self.published.refresh()  # the process's memory may be free now

    def _readable(self, selector: selectors.BaseSelector, conn: Connection) -> None:
        try:
            frames, closed = self._read_frames(conn)
            for frame in frames:
                if conn.session is None:
                    conn.session = self._hello(conn, frame)
                    if frame.op == protocol.OP_HELLO and len(frame.payload) >= protocol.HELLO_REQUEST.size:
                        conn.api = bytes(frame.payload[8:24]).rstrip(b"\0").decode(errors="replace")
                    if conn.session is None:
                        self._close(selector, conn)
                        return
                    continue
                conn.session.calls += 1
                if conn.session.computing or conn.session.held:
                    self._hold(conn, frame)
                    continue
                self._serve(conn, frame)
                if frame.op == protocol.OP_CONTROL and self.stopping.is_set():
                    return
            if closed:
                self._close(selector, conn)
                return
            if conn.lent is not None:
                conn.bulk, conn.lent = conn.lent, None  # its frame is answered: the next may have it
            self._watch_sending(selector, conn)
        except (ProtocolError, DecodeError) as error:
            log.warning("closing connection of pid %d: %s", conn.pid, error)
            self._close(selector, conn)
        except OSError as error:
            log.info("connection of pid %d ended: %s", conn.pid, error)
            self._close(selector, conn)
        except Exception:  # a bug of ours: it costs this connection, never the daemon
            log.exception("closing connection of pid %d after an internal error", conn.pid)
            self._close(selector, conn)

    def _serve(self, conn: Connection, frame: Frame) -> None:
        """Carry out one frame of a connection whose session is not waiting for a kernel."""
        session = conn.session
        session.serving = conn
        if frame.flags & protocol.FLAG_NO_REPLY:
            reply = self._queued(session, frame)
        elif frame.op == protocol.OP_FACTS:
            if conn.api not in self.apis:
                raise ProtocolError(f"facts asked for on a {conn.api!r} connection")
            reply = self.apis[conn.api].facts(session)
        elif frame.op in self.waiting_ops:
            threading.Thread(target=self._answer, args=(conn, frame), daemon=True).start()
            return
        else:
            reply = self._handle(session, frame)
        self._deliver(conn, frame, reply)

    def _deliver(self, conn: Connection, frame: Frame, reply: object) -> None:
        """A frame's answer: sent, noted (the first error of posted work waits for the next
        synchronising call), or, when the frame waits for a kernel, kept with it."""
        session = conn.session
        if isinstance(reply, Later):
            session.held.appendleft((conn, frame, reply))
        elif frame.flags & protocol.FLAG_NO_REPLY:
            rc = struct.unpack_from("<i", reply)[0] if reply else 0
            if rc and not session.deferred_error:
                session.deferred_error = rc
        else:
            conn.send(frame, reply)

    def _hold(self, conn: Connection, frame: Frame) -> None:
        """A frame of a process whose kernel is computing waits its turn; a stream or event
        query is answered at once: not ready."""
        if frame.op in self.query_ops and not frame.flags & protocol.FLAG_NO_REPLY:
            conn.send(frame, struct.pack("<i", CUDA_ERROR_NOT_READY))
            return
        conn.session.held.append((conn, Frame(frame.op, frame.flags, frame.seq, bytes(frame.payload)), None))

    def kernel_ended(self, session: Session, job: object) -> None:
        """On the selector thread: a kernel of ``session`` has ended.  Its printed output goes
        to the connection that launched it; a failure becomes the process's error (sticky
        where a GPU's is); the frames that waited run."""
        session.computing = False
        code = getattr(job, "code", 0)
        if code:
            session.deferred_error = session.deferred_error or code
            if code in STICKY_ERRORS:
                session.sticky_error = session.sticky_error or code
        printed = getattr(job, "printed", "")
        origin = getattr(job, "origin", None)
        if printed and isinstance(origin, Connection) and origin.sock.fileno() >= 0:
            origin.send(Frame(protocol.OP_NOTICE, 0, 0, b""),
                        struct.pack("<I", protocol.NOTICE_OUTPUT) + printed.encode(), flags=0)
            self._watch_sending(self._selector, origin)
        self.resume(session)

    def resume(self, session: Session) -> None:
        """On the selector thread, after a kernel of ``session`` ended: its waiting frames run in
        order, until one starts another kernel."""
        while session.held and not session.computing:
            conn, frame, later = session.held.popleft()
            if conn.sock.fileno() < 0 or conn.session is not session:
                continue  # its connection closed meanwhile
            try:
                if later is None:
                    self._serve(conn, frame)
                else:
                    session.serving = conn
                    self._deliver(conn, frame, later.finish())
                self._watch_sending(self._selector, conn)
            except (ProtocolError, DecodeError, OSError) as error:
                log.warning("closing connection of pid %d: %s", conn.pid, error)
                self._close(self._selector, conn)

    def _tell_waiters(self) -> None:
        """Clients waiting for a reply behind a computing kernel hear, five times a second, that it
        still runs: their wait starts again instead of taking vgpud for lost."""
        now = time.monotonic()
        if now - self._busy_notices_at < BUSY_NOTICE_S:
            return
        self._busy_notices_at = now
        notice = struct.pack("<I", protocol.NOTICE_BUSY)
        for session in self.state.sessions.values():
            if not session.computing:
                continue
            waiting = {id(conn): conn for conn, frame, _ in session.held if not frame.flags & protocol.FLAG_NO_REPLY}
            for conn in waiting.values():
                if conn.sock.fileno() >= 0:
                    conn.send(Frame(protocol.OP_NOTICE, 0, 0, b""), notice, flags=0)
                    self._watch_sending(self._selector, conn)

    def _read_frames(self, conn: Connection) -> tuple[list[Frame], bool]:
        """The frames completed by what has arrived, and whether the peer closed. A small
        frame costs one read; a bulk frame's payload is read into its buffer as it comes,
        across as many wake-ups as it takes."""
        frames: list[Frame] = []
        if conn.receiving is None:
            size = conn.recv_into(conn.inbox)
            if size is None:
                return frames, False
            if not size:
                return frames, True
            frames = conn.parser.feed(memoryview(conn.inbox)[:size])
        while True:
            if conn.receiving is not None:
                frame = self._receive_bulk(conn)
                if frame is None:
                    return frames, False
                frames.append(frame)
            elif conn.parser.missing() > LARGE_FRAME:
                self._begin_bulk(conn)
            elif conn.peer is not None and conn.sock.pending():  # decrypted bytes the selector cannot see
                size = conn.recv_into(conn.inbox)
                if not size:
                    return frames, size == 0
                frames += conn.parser.feed(memoryview(conn.inbox)[:size])
            else:
                return frames, False

    @staticmethod
    def _begin_bulk(conn: Connection) -> None:
        """A bulk transfer's frame begins: its payload goes into the connection's bulk buffer
        (the data is copied once, by the socket), lent to the frame until it is answered."""
        parser = conn.parser
        length, op, flags, seq = protocol.HEADER.unpack_from(parser.buffer)
        buffer = conn.bulk if conn.bulk is not None and len(conn.bulk) >= length else bytearray(length)
        conn.bulk = None
        view = memoryview(buffer)[:length]
        have = len(parser.buffer) - protocol.HEADER.size
        view[:have] = memoryview(parser.buffer)[protocol.HEADER.size:]
        parser.buffer.clear()
        conn.receiving = _Bulk(op, flags, seq, buffer, view, have)

    @staticmethod
    def _receive_bulk(conn: Connection) -> Frame | None:
        """What has arrived of the bulk frame; the frame once whole. An API call's payload is a
        view of the buffer, whose large arrays the codec reads in place (the services copy
        them before they return)."""
        bulk = conn.receiving
        length = len(bulk.view)
        while bulk.got < length:
            wanted = length - bulk.got
            size = conn.recv_into(bulk.view[bulk.got:])
            if size is None:
                return None
            if not size:
                raise ProtocolError(f"connection closed inside a frame ({bulk.got} of {length} bytes)")
            bulk.got += size
            if size < wanted and conn.peer is None:  # a Unix socket read short is drained: wait for more
                return None
        conn.receiving = None
        conn.lent = bulk.buffer
        return Frame(bulk.op, bulk.flags, bulk.seq, bulk.view if bulk.op >= API_OPS_FROM else bytes(bulk.view))

    def _queued(self, session: Session, frame: Frame) -> object:
        """Work sent without waiting: its answer (whose error waits for the next synchronising
        call).  A ping sent this way does nothing (the benchmarks' floor of empty sends)."""
        session.posted += 1
        if frame.op in self.private_ops:
            return self._private(session, frame)
        if frame.op == protocol.OP_PING:
            return b""
        if frame.op in self.dispatchers:
            return self._handle(session, frame)
        raise ProtocolError(f"op 0x{frame.op:04x} cannot be sent without a reply")

    def _answer(self, conn: Connection, frame: Frame) -> None:
        """A call that may wait, on its own thread; a failure closes the socket, and the selector the rest."""
        try:
            conn.send(frame, self._handle(conn.session, frame), wait=True)
        except (ProtocolError, DecodeError, OSError) as error:
            log.warning("closing connection of pid %d: %s", conn.pid, error)
            conn.sock.shutdown(socket.SHUT_RDWR)

    def _hello(self, conn: Connection, frame: Frame) -> Session | None:
        if frame.op != protocol.OP_HELLO or len(frame.payload) < protocol.HELLO_REQUEST.size + 2:
            raise ProtocolError(f"expected a handshake, got op 0x{frame.op:x} of {len(frame.payload)} bytes")
        magic, version, api_raw, digest_raw = protocol.HELLO_REQUEST.unpack_from(frame.payload)
        (exe_len,) = struct.unpack_from("<H", frame.payload, protocol.HELLO_REQUEST.size)
        at = protocol.HELLO_REQUEST.size + 2
        exe = frame.payload[at:at + exe_len].decode(errors="replace")
        at += exe_len
        env: dict[str, str] = {}
        if len(frame.payload) >= at + 2:
            (env_len,) = struct.unpack_from("<H", frame.payload, at)
            for item in frame.payload[at + 2:at + 2 + env_len].decode(errors="replace").split("\0"):
                key, _, value = item.partition("=")
                if key:
                    env[key] = value
            at += 2 + env_len
        token, peer = protocol.unpack_network_fields(frame.payload, at)
        api = api_raw.rstrip(b"\0").decode(errors="replace")
        digest = digest_raw.decode(errors="replace")
        status, message, bitmap = protocol.HELLO_OK, "", b""
        tenant = None
        if conn.peer is not None:  # a network client: its token says who it is
            try:
                tenant = self.network.tokens.verify(token) if token else None
            except ValueError as error:  # a damaged token store: refuse, and say where
                log.error("%s", error)
                tenant = None
            if tenant is None:
                status, message = protocol.HELLO_REFUSED, (
                    "no valid token: make one on the GPU host with `vgpu token create --tenant NAME` and pass it "
                    "with --token" if not token else "token not known to this vgpud (revoked, or made for another "
                    "GPU host); make one with `vgpu token create --tenant NAME` on the GPU host")
            env.pop("VGPU_PROBE", None)  # another host's memory is out of reach
        if magic != protocol.MAGIC or version != protocol.PROTOCOL_VERSION:
            status, message = protocol.HELLO_BAD_VERSION, (
                f"protocol version {version} not served (vgpud speaks {protocol.PROTOCOL_VERSION}); "
                "use the vgpu libraries from the same install as vgpud")
        elif api in self.apis:
            served = self.apis[api]
            bitmap = served.bitmap
            if digest != served.api.digest:
                status, message = protocol.HELLO_BAD_DIGEST, (
                    f"{api} manifest {digest[:12]} differs from vgpud's {served.api.digest[:12]}; "
                    "use the vgpu libraries from the same install as vgpud")
        elif api != "control":
            status, message = protocol.HELLO_UNKNOWN_API, f"unknown API {api!r}"
        if conn.peer is not None and status == protocol.HELLO_OK:
            host, _, pid = peer.rpartition("/")
            conn.pid = int(pid) if pid.isdigit() else 0
            peer = f"{conn.peer[0]}/{host or 'unknown'}"
        session = self.state.attach(conn.pid, conn.uid, exe, env, tenant=tenant,
                                    peer=peer if conn.peer is not None else "") if status == protocol.HELLO_OK else None
        capabilities = 0
        if session is not None and "VGPU_PROBE" in env:
            if not session.windows.direct:
                address, _, value = env["VGPU_PROBE"].partition(":")
                try:
                    session.windows.direct = can_reach(conn.pid, int(address, 16), bytes.fromhex(value))
                except ValueError:
                    session.windows.direct = False
            capabilities |= protocol.CAP_DIRECT_MEMORY if session.windows.direct else 0
        if session is not None and conn.peer is None and protocol.OP_MAP_MEMORY in self.private_ops \
                and not session.peer:
            capabilities |= protocol.CAP_CLIENT_COPIES
        text = message.encode()
        reply = protocol.HELLO_REPLY.pack(status, session.id if session else 0,
                                          session.connections if session else 0, len(bitmap), capabilities)
        published = str(self.published.path).encode() if api in self.apis and conn.peer is None else b""
        conn.send(frame, reply + bitmap + struct.pack("<H", len(text)) + text
                  + struct.pack("<H", len(published)) + published)
        if session is None:
            log.warning("refused pid %d (%s): %s", conn.pid, exe, message)
        return session

    def _private(self, session: Session, frame: Frame) -> bytes:
        """An op a service answers with its own layout; a payload too short for it is malformed."""
        try:
            return self.private_ops[frame.op](session, frame.payload)
        except struct.error as error:
            raise ProtocolError(f"op 0x{frame.op:04x}: {error}") from None

    def _handle(self, session: Session, frame: Frame) -> Reply:
        dispatcher = self.dispatchers.get(frame.op)
        if dispatcher is not None:  # an API call: the common case first
            reply = dispatcher.call(session, frame.op, frame.payload)
            if frame.op in self.published_ops and not session.peer:  # a tenant's answers are its own
                codec = dispatcher.codecs[frame.op]
                self.published.file(codec.published_key(frame.payload), frame.op, frame.payload, reply)
            return reply
        if frame.op == protocol.OP_PING:
            return frame.payload
        if frame.op == protocol.OP_SHARE:
            if len(frame.payload) != protocol.SHARE_REQUEST.size:
                raise ProtocolError(f"a share request of {len(frame.payload)} bytes")
            if session.peer:
                return struct.pack("<i", errno.EOPNOTSUPP)  # memory on another host cannot be mapped
            address, size, fd = protocol.SHARE_REQUEST.unpack(frame.payload)
            if size == 0:
                session.windows.withdraw(address)
                return struct.pack("<i", 0)
            return struct.pack("<i", session.windows.share(address, size, fd))
        if frame.op == protocol.OP_CONTROL:
            try:
                request = json.loads(frame.payload)
            except ValueError as error:
                raise ProtocolError(f"control request is not JSON: {error}") from None
            reply = json.dumps(control.handle(self, session, request)).encode()
            self.published.refresh()  # control requests change what GPUs report
            return reply
        if frame.op in self.private_ops:
            return self._private(session, frame)
        raise ProtocolError(f"unknown op 0x{frame.op:04x}")
