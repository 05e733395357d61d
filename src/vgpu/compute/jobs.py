"""What vgpud's executor and a kernel worker say to each other: the one place for the message
layouts (both ends use these functions).

Every message is a frame: a header ``<II`` (kind, payload bytes) and the payload, over a Unix
stream socketpair.  File descriptors travel with a MAP frame (SCM_RIGHTS, attached to its
first byte, at most ``MAX_FDS`` per frame).

- ``MAP``: regions ``<QQQI4x`` (device address, bytes, offset in the memfd, writable), one
  memfd each, in order.  Answered by ``STATUS``.
- ``UNMAP``: ranges ``<QQ`` (device address, bytes).  Answered by ``STATUS``.
- ``STATUS``: ``<iQ`` (0 or an errno, the address that failed).
- ``RUN``: ``<IIIIIII`` (bytes of key, entry, object, launch; CTAs; threads, 0 = the worker's
  cores; buffers), then per buffer ``<IiQQB3x`` (launch offset that receives its address,
  launch offset of a u64 saying how many of its bytes to return or -1 for all, bytes, bytes
  of initial data, whether it is returned), then key, entry, object (empty when the worker
  has loaded this key before), launch and the buffers' initial data.
- ``DONE``: ``<IdIII`` (CUDA error code, host seconds, launch bytes, returned buffers, detail
  bytes), the launch bytes as the kernel left them, per returned buffer ``<Q`` and its bytes,
  then the detail (UTF-8: why a job failed before its kernel ran, e.g. an object that did not load).
"""

from __future__ import annotations

import array
import socket
import struct
from dataclasses import dataclass, field

MAP, UNMAP, STATUS, RUN, DONE = 1, 2, 3, 4, 5
HEADER = struct.Struct("<II")
REGION = struct.Struct("<QQQI4x")
RANGE = struct.Struct("<QQ")
STATUS_BODY = struct.Struct("<iQ")
RUN_HEAD = struct.Struct("<IIIIIII")
BUFFER = struct.Struct("<IiQQB3x")
DONE_HEAD = struct.Struct("<IdIII")
LENGTH = struct.Struct("<Q")
#: descriptors per frame (the kernel's SCM_MAX_FD is 253)
MAX_FDS = 250


@dataclass(frozen=True)
class Buffer:
    """Memory the worker makes for one job (parameters, a symbol table, a printf area): its
    address is written as a u64 at ``at`` in the launch bytes before the kernel runs."""

    at: int
    size: int
    data: bytes = b""
    #: whether its bytes come back in the result
    returned: bool = False
    #: the launch offset of a u64 that says how many bytes to return (None: all of them)
    used_at: int | None = None


@dataclass(frozen=True)
class Job:
    """Run CTAs [0, ctas) of one launch: ``entry`` of the ELF object ``object`` (loaded once
    per ``key`` in a worker), given the address of a copy of ``launch``."""

    key: str
    object: bytes
    entry: str
    launch: bytes
    ctas: int
    threads: int | None = None
    buffers: tuple[Buffer, ...] = ()


@dataclass
class JobResult:
    """A CUDA error code (0: success), the host seconds the CTAs took, the launch bytes as the
    kernel left them, the returned buffers' bytes in order, and why it failed where known."""

    code: int
    seconds: float = 0.0
    launch: bytes = b""
    outputs: list[bytes] = field(default_factory=list)
    detail: str = ""


def send_frame(sock: socket.socket, kind: int, payload: bytes = b"", fds: list[int] | None = None) -> None:
    frame = HEADER.pack(kind, len(payload)) + payload
    if fds:
        sent = socket.send_fds(sock, [frame], fds)
        frame = frame[sent:]
    if frame:
        sock.sendall(frame)


def _exactly(sock: socket.socket, length: int) -> bytes:
    data = bytearray(length)
    view, done = memoryview(data), 0
    while done < length:
        got = sock.recv_into(view[done:])
        if not got:
            raise EOFError("the peer closed the connection")
        done += got
    return bytes(data)


def recv_frame(sock: socket.socket) -> tuple[int, bytes, list[int]]:
    """The next frame: kind, payload, and the descriptors that came with it."""
    fds = array.array("i")
    head, ancillary, _, _ = sock.recvmsg(HEADER.size, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if not head:
        raise EOFError("the peer closed the connection")
    if len(head) < HEADER.size:
        head += _exactly(sock, HEADER.size - len(head))
    kind, length = HEADER.unpack(head)
    return kind, _exactly(sock, length), list(fds)


def encode_run(job: Job, with_object: bool) -> bytes:
    key, entry = job.key.encode(), job.entry.encode()
    code = job.object if with_object else b""
    parts = [RUN_HEAD.pack(len(key), len(entry), len(code), len(job.launch), job.ctas, job.threads or 0,
                           len(job.buffers))]
    parts += [BUFFER.pack(b.at, -1 if b.used_at is None else b.used_at, b.size, len(b.data), b.returned)
              for b in job.buffers]
    parts += [key, entry, code, job.launch]
    parts += [b.data for b in job.buffers]
    return b"".join(parts)


def decode_run(payload: bytes) -> tuple[Job, bool]:
    """The job, and whether it carries its object (else the worker loaded that key before)."""
    key_bytes, entry_bytes, code_bytes, launch_bytes, ctas, threads, count = RUN_HEAD.unpack_from(payload)
    at = RUN_HEAD.size
    heads = []
    for _ in range(count):
        heads.append(BUFFER.unpack_from(payload, at))
        at += BUFFER.size
    pieces = []
    for length in (key_bytes, entry_bytes, code_bytes, launch_bytes):
        pieces.append(payload[at:at + length])
        at += length
    buffers = []
    for offset, used_at, size, data_bytes, returned in heads:
        buffers.append(Buffer(offset, size, payload[at:at + data_bytes], bool(returned),
                              None if used_at < 0 else used_at))
        at += data_bytes
    key, entry, code, launch = pieces
    return Job(key.decode(), code, entry.decode(), launch, ctas, threads or None, tuple(buffers)), bool(code)


def encode_done(code: int, seconds: float, launch: bytes, outputs: list[bytes], detail: str = "") -> bytes:
    text = detail.encode()
    parts = [DONE_HEAD.pack(code, seconds, len(launch), len(outputs), len(text)), launch]
    for output in outputs:
        parts += [LENGTH.pack(len(output)), output]
    parts.append(text)
    return b"".join(parts)


def decode_done(payload: bytes) -> JobResult:
    code, seconds, launch_bytes, count, detail_bytes = DONE_HEAD.unpack_from(payload)
    at = DONE_HEAD.size
    launch = payload[at:at + launch_bytes]
    at += launch_bytes
    outputs = []
    for _ in range(count):
        (length,) = LENGTH.unpack_from(payload, at)
        at += LENGTH.size
        outputs.append(payload[at:at + length])
        at += length
    return JobResult(code, seconds, launch, outputs, payload[at:at + detail_bytes].decode(errors="replace"))
