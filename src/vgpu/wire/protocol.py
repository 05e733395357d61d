"""The vgpu wire protocol: frames, the handshake, and where sockets live.

A frame is a 12-byte little-endian header (payload length u32, op u16, flags
u16, sequence u32) and its payload.  Op ids below 0x1000 are control ops;
the API ops come from the manifests (``vgpu.api.manifest.OP_BASE``).  The C
transport includes a header generated from these constants, so this module is
their one definition.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path
from typing import NamedTuple

PROTOCOL_VERSION = 1
MAGIC = b"VGPU"
HEADER = struct.Struct("<IHHI")
MAX_PAYLOAD = 64 << 20
#: bulk transfers travel in pieces of at most this many bytes
BULK_CHUNK = 16 << 20

# flags
FLAG_REPLY = 0x1
FLAG_NO_REPLY = 0x2   # asynchronous work: the sender does not wait (batched CUDA calls)
FLAG_SHM = 0x4        # payload lives in the session's shared-memory segment (bulk data)

# control ops
OP_HELLO = 0x0001
OP_PING = 0x0002
OP_CONTROL = 0x0003   # JSON request and reply, for tools (status, faults, sessions, activity)
OP_SHARE = 0x0004     # a client's shared-memory window: vgpud maps it, bulk data skips the socket
OP_FACTS = 0x0005     # every immutable answer of the connection's API, in one reply (u16 key length, key,
                      # u32 answer length, answer; repeated)
OP_MODULE = 0x0006    # CUDA: load a code image (vgpu.server.cuda_modules.load_module has the layout)
OP_LAUNCH = 0x0007    # CUDA: a kernel launch, sent without waiting (cuda_modules.launch has the layout)
OP_NOTICE = 0x0008    # vgpud to a client, unasked (sequence 0): u32 kind, then its data; a client skips it
                      # wherever it reads a reply
OP_MAP_MEMORY = 0x0009  # CUDA: which memfd of vgpud's holds a device address, for the client to map
                        # (MAP_MEMORY_REQUEST, MAP_MEMORY_REPLY)

#: where the CUDA library places page-locked and managed host memory it makes (memfd windows
#: vgpud maps too): one range above every device address, which the kernel worker maps at the
#: same addresses, so a kernel dereferences such pointers as a GPU does
HOST_WINDOWS_BASE = 0x6000_0000_0000
HOST_WINDOWS_SPAN = 1 << 44

# notice kinds
NOTICE_BUSY = 1       # work the client's next reply waits for is still running: keep waiting
NOTICE_OUTPUT = 2     # text the process's kernels printed (device printf): write it to stdout

# handshake answers
HELLO_OK = 0
HELLO_BAD_VERSION = 1
HELLO_BAD_DIGEST = 2
HELLO_UNKNOWN_API = 3
HELLO_REFUSED = 4

#: HELLO request: magic, protocol version, API name, manifest digest (hex), then a u16-prefixed
#: executable path and a u16-prefixed "KEY=VALUE" list (NUL-separated) of the environment the
#: driver honours (CUDA_VISIBLE_DEVICES)
HELLO_REQUEST = struct.Struct("<4sI16s64s")
#: SHARE request: the window's address in the client, its size (0 to withdraw it), and a file
#: descriptor of the client's that maps it (vgpud opens /proc/PID/fd/FD); reply: i32 errno (0 ok)
SHARE_REQUEST = struct.Struct("<QQi")
#: HELLO reply: status, session id, process's connection count, bitmap length, capabilities;
#: then the bitmap, a u16-prefixed message and a u16-prefixed path of the published-answers file
HELLO_REPLY = struct.Struct("<iQIII")
#: capability: vgpud reads and writes the client's ordinary memory itself (process_vm_readv),
#: proven at the handshake by reading the probe the client names in its environment list
#: ("VGPU_PROBE=ADDRESS:VALUE", both hex)
CAP_DIRECT_MEMORY = 0x1
#: below this many bytes, data travels in the frame even when vgpud could reach it
DIRECT_MIN = 64 << 10
#: capability: the client copies between host and device memory itself, through its own
#: mapping of the allocation's memfd (OP_MAP_MEMORY; the CUDA simulator, local clients)
CAP_CLIENT_COPIES = 0x2
#: MAP_MEMORY request: a device address; reply: errno (0 ok), the memfd's descriptor number in
#: vgpud (the client opens /proc/VGPUD/fd/N), its inode (checked once opened), the device
#: address its first byte holds, its size, and the allocation's serial (named by each copy)
MAP_MEMORY_REQUEST = struct.Struct("<Q")
MAP_MEMORY_REPLY = struct.Struct("<iiQQQQ")
#: what a copy made by the client answers when vgpud cannot confirm it (the allocation is not
#: the one mapped, or the copy must wait behind other work): the client sends the data instead
CLIENT_COPY_REFUSED = 0x7647_0001

#: Published answers (vgpu.server.published): a file of fixed slots, each a seqlock-guarded
#: (key, answer) pair with the time it was computed.
PUBLISHED_MAGIC = b"VGPUPUB1"
PUBLISHED_HEADER = struct.Struct("<8sIII")   # magic, slot count, slot size, key size
PUBLISHED_HEADER_SIZE = 64
PUBLISHED_SLOTS = 1024
PUBLISHED_SLOT = struct.Struct("<IHHQ")       # seq (odd while written), key length, answer length, time (ns)
PUBLISHED_KEY_MAX = 64
PUBLISHED_SLOT_SIZE = 256
PUBLISHED_ANSWER_MAX = PUBLISHED_SLOT_SIZE - PUBLISHED_SLOT.size - PUBLISHED_KEY_MAX
PUBLISHED_PROBES = 16
PUBLISHED_REFRESH_MS = 100
#: an answer older than this is not used: the daemon may be gone or stuck
PUBLISHED_MAX_AGE_MS = 250

SOCKET_ENV = "VGPU_SOCKET"
SYSTEM_SOCKET = "/run/vgpu/vgpud.sock"


class ProtocolError(Exception):
    """A peer sent something that is not a valid frame; the connection is closed."""


class Frame(NamedTuple):
    op: int
    flags: int
    seq: int
    payload: bytes


def default_socket_path() -> Path:
    """Where vgpud listens and clients connect: $VGPU_SOCKET, the system daemon's socket
    if one exists, else a per-user path under /tmp.  native/transport.c follows the same rule."""
    if os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV])
    if Path(SYSTEM_SOCKET).exists():
        return Path(SYSTEM_SOCKET)
    return Path(f"/tmp/vgpu-{os.getuid()}/vgpud.sock")


class FrameParser:
    """Cuts frames out of a byte stream as it arrives (vgpud's non-blocking connections)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes | memoryview) -> list[Frame]:
        """Frames completed by ``data``; ProtocolError on a malformed one."""
        buffer = self.buffer
        buffer += data
        frames = []
        at, size, unpack = 0, len(buffer), HEADER.unpack_from
        while size - at >= HEADER.size:
            length, op, flags, seq = unpack(buffer, at)
            if length > MAX_PAYLOAD:
                raise ProtocolError(f"frame of {length} bytes exceeds the {MAX_PAYLOAD}-byte limit")
            end = at + HEADER.size + length
            if end > size:
                break
            with memoryview(buffer) as view:  # one copy of the payload, not two
                frames.append(Frame(op, flags, seq, bytes(view[at + HEADER.size:end])))
            at = end
        if at:
            del buffer[:at]  # once per read, not once per frame
        return frames


    def missing(self) -> int:
        """Bytes still to come of the frame begun in the buffer (0 when none is begun)."""
        if len(self.buffer) < HEADER.size:
            return 0
        (length,) = struct.unpack_from("<I", self.buffer)
        return max(0, HEADER.size + length - len(self.buffer))


class FrameReader:
    """Reads frames from a blocking socket, one recv per frame when it can (the Python client)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = FrameParser()
        self.pending: list[Frame] = []
        self.inbox = bytearray(1 << 16)

    def read(self) -> Frame:
        """The next frame; EOFError on a clean close, ProtocolError on a malformed one."""
        while not self.pending:
            size = self.sock.recv_into(self.inbox)
            if not size:
                if self.parser.buffer:
                    raise ProtocolError(f"connection closed inside a frame ({len(self.parser.buffer)} bytes)")
                raise EOFError
            self.pending.extend(self.parser.feed(memoryview(self.inbox)[:size]))
        return self.pending.pop(0)


def pack_network_fields(token: str, peer: str) -> bytes:
    """What a relay appends to the handshake of a client it forwards to a GPU host, after the
    environment list: the tenant's token and the client's "host/pid", each a u16 length and
    UTF-8 text."""
    return b"".join(struct.pack("<H", len(field)) + field for field in (token.encode(), peer.encode()))


def unpack_network_fields(payload: bytes, at: int) -> tuple[str, str]:
    """The token and peer of pack_network_fields from a handshake, where they begin at ``at``
    ("" for each one missing)."""
    fields = []
    for _ in range(2):
        if len(payload) < at + 2:
            fields.append("")
            continue
        (length,) = struct.unpack_from("<H", payload, at)
        fields.append(payload[at + 2:at + 2 + length].decode(errors="replace"))
        at += 2 + length
    return fields[0], fields[1]


def pack_frame(op: int, payload: bytes, seq: int = 0, flags: int = 0) -> bytes:
    return HEADER.pack(len(payload), op, flags, seq) + payload


def c_header() -> str:
    """The constants above as a C header for the native transport."""
    lines = ["/* Generated from vgpu/wire/protocol.py; do not edit. */", "#pragma once",
             f"#define VGPU_PROTOCOL_VERSION {PROTOCOL_VERSION}u",
             f'#define VGPU_MAGIC "{MAGIC.decode()}"',
             f"#define VGPU_MAX_PAYLOAD {MAX_PAYLOAD}u",
             f"#define VGPU_BULK_CHUNK {BULK_CHUNK}u",
             f'#define VGPU_SOCKET_ENV "{SOCKET_ENV}"',
             f'#define VGPU_SYSTEM_SOCKET "{SYSTEM_SOCKET}"']
    for name, value in sorted(globals().items()):
        if name.startswith(("FLAG_", "OP_", "HELLO_", "CAP_", "DIRECT_", "NOTICE_", "HOST_WINDOWS_", "CLIENT_")) \
                and isinstance(value, int):
            lines.append(f"#define VGPU_{name} {value}")
    for name in ("PUBLISHED_HEADER_SIZE", "PUBLISHED_SLOTS", "PUBLISHED_KEY_MAX", "PUBLISHED_SLOT_SIZE",
                 "PUBLISHED_ANSWER_MAX", "PUBLISHED_PROBES", "PUBLISHED_MAX_AGE_MS"):
        lines.append(f"#define VGPU_{name} {globals()[name]}")
    lines.append(f'#define VGPU_PUBLISHED_MAGIC "{PUBLISHED_MAGIC.decode()}"')
    lines.append(f"#define VGPU_HELLO_REQUEST_SIZE {HELLO_REQUEST.size}")
    lines.append(f"#define VGPU_SHARE_REQUEST_SIZE {SHARE_REQUEST.size}")
    lines.append(f"#define VGPU_HELLO_REPLY_SIZE {HELLO_REPLY.size}")
    lines.append(f"#define VGPU_MAP_MEMORY_REPLY_SIZE {MAP_MEMORY_REPLY.size}")
    return "\n".join(lines) + "\n"
