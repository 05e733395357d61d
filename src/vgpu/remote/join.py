"""Several GPU hosts as one device list behind one relay (``vgpud --backend remote --connect A
--connect B``).

A client process sees the GPUs of every host, host after host. Unlike a relay to one host,
which passes bytes through, a joining relay reads every frame of a client connection and
sends it where it belongs over one TLS connection per host:

- device ordinals (CUDA's ``CUdevice``, NVML's indices, a memory location's device) are
  renumbered: the manifests mark them (``ordinal``, ``device_count``);
- handles carry their host: ids from host k get k + 1 in bits 40 to 47 (a function's id is
  its module's shifted left by 16, so its host sits in bits 56 to 63); the shim's context ids
  carry the device ordinal, renumbered like one;
- a call goes to the host of what it names (a device, a handle), else to the host of the
  calling thread's current context; calls that name nothing count devices (answers
  summed), look a device up (first host that knows it) or ask about the driver (the first
  host);
- ``CUDA_VISIBLE_DEVICES`` is applied to the joined list here, and each host is told which
  of its GPUs that leaves;
- a library (``cuLibraryLoadData``, which cudart 13 uses for every program's kernels) belongs
  to no context, and an NVML event set to no GPU: each is made on every host, the client
  holds one id tagged "every host", and each call naming it gets the id of the host it goes
  to (a wait on an event set asks every host in turn).

What cannot cross hosts answers as a real driver answers for GPUs that cannot reach each
other: no peer access and no P2P; a copy between two hosts' memory is carried out by the
relay; another call naming objects of two hosts gets the API's "not supported" code,
logged. A host that goes away takes its GPUs with it: calls for them answer "device
unavailable" (NVML: "GPU is lost"), while the other hosts' GPUs go on working.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from vgpu.api.manifest import Api, Function, Kind, load, per_thread_base
from vgpu.server.cuda_modules import MODULE_FLAG_LIBRARY, ModuleServing
from vgpu.server.cuda_service import DEFAULT_STREAMS, PRIMARY_CONTEXT, visible_devices
from vgpu.wire import protocol
from vgpu.wire.codec import DIRECT, SHARED, FunctionCodec
from vgpu.wire.protocol import BULK_CHUNK, Frame, FrameReader, ProtocolError

log = logging.getLogger("vgpud")

HANDLE_TAG_SHIFT = 40
FUNCTION_TAG_SHIFT = HANDLE_TAG_SHIFT + 16
FUNCTION_HANDLES = {"CUfunction", "CUkernel"}
#: the shim's context ids: flags above bit 31, the device ordinal in the low 16 bits
CONTEXT_ORDINAL_MASK = 0xFFFF
#: handles whose id is a context id (a green context's is its context's): renumbered, never tagged
CONTEXT_HANDLES = ("CUcontext", "CUgreenCtx")
LAUNCH, LAUNCH_GRAPH_NODE = ModuleServing.LAUNCH, ModuleServing.LAUNCH_GRAPH_NODE
LAUNCH_NODE_PARAMS, LAUNCH_NODE_GET = ModuleServing.LAUNCH_NODE_PARAMS, ModuleServing.LAUNCH_NODE_GET
LAUNCH_GRAPH_RUN, LAUNCH_CAPTURE_HOST = ModuleServing.LAUNCH_GRAPH_RUN, ModuleServing.LAUNCH_CAPTURE_HOST
#: parameters whose values come back in the reply
OUTPUTS = (Kind.INOUT, Kind.HANDLE_OUT, Kind.BUFFER, Kind.HANDLE_ARRAY_OUT, Kind.ARRAY, Kind.ARRAY_OUT)
#: what a merged status says of each joined host
HOST_FACTS = ("pid", "version", "backend", "spec", "driver_version", "cuda_version", "error")
#: calls that make an object on every host (the client holds one id), and calls that end one
EVERY_HOST_MAKERS = {"nvmlEventSetCreate"}
EVERY_HOST_CALLS = {"cuLibraryUnload", "nvmlEventSetFree"}
#: how often a wait for an NVML event on every host asks each host again
EVENT_POLL_S = 0.05
#: copies between two device pointers, which may lie on two hosts: (destination, source) parameters
DEVICE_COPIES = {"cuMemcpy": ("dst", "src"), "cuMemcpyAsync": ("dst", "src"),
                 "cuMemcpyDtoD_v2": ("dstDevice", "srcDevice"), "cuMemcpyDtoDAsync_v2": ("dstDevice", "srcDevice"),
                 "cuMemcpyPeer": ("dstDevice", "srcDevice"), "cuMemcpyPeerAsync": ("dstDevice", "srcDevice")}
#: questions about a device pointer: the current context's host first, then the others
POINTER_QUERIES = {"cuPointerGetAttribute", "cuPointerGetAttributes"}


@dataclass(frozen=True)
class HostGpus:
    """One GPU host as the tenant sees it: where it is, and its GPUs' daemon indices and
    UUIDs in its NVML order."""

    name: str
    indices: tuple[int, ...]
    uuids: tuple[str, ...]


#: the tag of an object on every host
EVERY_HOST = 0xFF
CODE_HANDLES = {"CUlibrary", "CUmodule", *FUNCTION_HANDLES}
#: handle types of objects that may live on every host
EVERYWHERE_HANDLES = {*CODE_HANDLES, "nvmlEventSet_t"}


def _shift(handle_type: str) -> int:
    return FUNCTION_TAG_SHIFT if handle_type in FUNCTION_HANDLES else HANDLE_TAG_SHIFT


def _untagged(handle_type: str, value: int) -> bool:
    return value == 0 or handle_type == "CUstream" and value in DEFAULT_STREAMS


class HostGone(ConnectionError):
    """A joined host closed its connection or stopped answering."""

    def __init__(self, host: int) -> None:
        super().__init__(f"GPU host {host} is gone")
        self.host = host


def _family(handle_type: str) -> str:
    """Handle types that share ids: a library's, its module's, its kernels' and functions'."""
    return "code" if handle_type in CODE_HANDLES else handle_type


class Everywhere:
    """A client process's objects that live on every host with GPUs for it (libraries, NVML
    event sets): the id the client holds (the first such host's) and each host's own."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, int], dict[int, int]] = {}
        self.back: dict[tuple[str, int, int], int] = {}

    def add(self, handle_type: str, ids: dict[int, int]) -> int:
        """Record one object's id on each host; the client's id for it (tagged)."""
        family, first = _family(handle_type), ids[min(ids)]
        self.ids[(family, first)] = ids
        for host, value in ids.items():
            self.back[(family, host, value)] = first
        return first | EVERY_HOST << _shift(handle_type)

    def tag(self, handle_type: str, value: int, host: int) -> int | None:
        """The client's id for a host's object (or a library's kernel or function); None when
        the object is not one of these."""
        function = handle_type in FUNCTION_HANDLES
        first = self.back.get((_family(handle_type), host, value >> 16 if function else value))
        if first is None:
            return None
        return (first << 16 | value & 0xFFFF if function else first) | EVERY_HOST << _shift(handle_type)

    def on_host(self, handle_type: str, value: int, host: int) -> int:
        """A client's "every host" id as ``host`` knows it."""
        function = handle_type in FUNCTION_HANDLES
        plain = value & ((1 << _shift(handle_type)) - 1)
        ids = self.ids.get((_family(handle_type), plain >> 16 if function else plain), {})
        if host not in ids:
            return plain
        return ids[host] << 16 | plain & 0xFFFF if function else ids[host]


@dataclass
class ClientProcess:
    """What a client process's connections (one per thread) share: its objects on every host
    (libraries, event sets), and its
    device numbering for each API, fixed by its first connection (GPUs of a host lost later
    keep their numbers)."""

    everywhere: Everywhere = field(default_factory=Everywhere)
    #: API -> (its numbering, what each host is told of CUDA_VISIBLE_DEVICES or None)
    numberings: dict[str, tuple[Ordinals, list[str | None]]] = field(default_factory=dict)
    connections: int = 0


def tag(handle_type: str, value: int, host: int, everywhere: Everywhere | None = None) -> int:
    """A host's handle id as the client sees it."""
    if _untagged(handle_type, value):
        return value
    if everywhere is not None and handle_type in EVERYWHERE_HANDLES:
        every = everywhere.tag(handle_type, value, host)
        if every is not None:
            return every
    return value | (host + 1) << _shift(handle_type)


def untag(handle_type: str, value: int, hosts: int = EVERY_HOST) -> tuple[int | None, int]:
    """(host, the host's id) of a client's handle id; host None for ids of none of the
    ``hosts`` (the id goes on as it is, for a host to refuse), and EVERY_HOST for a
    library's (Everywhere.on_host gives each host's id)."""
    if _untagged(handle_type, value):
        return None, value
    shift = _shift(handle_type)
    host = (value >> shift & 0xFF) - 1
    if host == EVERY_HOST - 1:
        return EVERY_HOST, value
    return (host, value & ((1 << shift) - 1)) if 0 <= host < hosts else (None, value)


@dataclass
class Ordinals:
    """A connection's device numbering: global ordinal -> (host, the host's ordinal), and back."""

    places: list[tuple[int, int]]
    back: dict[tuple[int, int], int] = field(init=False)

    def __post_init__(self) -> None:
        self.back = {place: number for number, place in enumerate(self.places)}

    @property
    def hosts(self) -> list[int]:
        """The hosts with GPUs in this numbering."""
        return sorted({host for host, _ in self.places})

    def to_host(self, number: int) -> tuple[int | None, int]:
        """An ordinal no host has stays invalid everywhere: it is at least the joined count."""
        return self.places[number] if 0 <= number < len(self.places) else (None, number)

    def from_host(self, host: int, number: int) -> int:
        return self.back.get((host, number), number)


class _Plan:
    """How one function's request and reply are walked: sizes from the codec, and where
    memory locations sit inside its records."""

    def __init__(self, api: Api, function: Function, location_type: type | None, device_location: int) -> None:
        self.function = function
        codec = FunctionCodec(api, function)
        self.sizes = [ctypes.sizeof(t) if t is not None else 0 for t in codec.types]
        self.struct_out = codec.struct_out
        self.locations = [_location_offsets(t, location_type) if t is not None and location_type else []
                          for t in codec.types]
        self.device_location = device_location
        #: handles inside the records of INOUT parameters: index -> [(offset, handle type)]
        self.handle_fields = {index: _handle_offsets(api, param, codec.types[index])
                              for index, param in enumerate(function.params) if param.kind is Kind.INOUT}
        #: a call that finds a device by what it names (UUID, PCI bus id, serial)
        self.lookup = any(p.kind is Kind.HANDLE_OUT and p.handle == "nvmlDevice_t" or p.kind is Kind.INOUT and p.ordinal
                          for p in function.params)
        self.counts = any(p.device_count for p in function.params)


def _handle_offsets(api: Api, param: Any, ctype: type | None) -> list[tuple[int, str]]:
    """Where a record parameter holds handles (as ids, the shim turns them into handles)."""
    record = api.resolve({k: v for k, v in api.resolve(param.type)["to"].items() if k != "const"})
    if record["kind"] != "record" or ctype is None:
        return []
    return [(getattr(ctype, f["name"]).offset, f["type"]["name"]) for f in api.raw["records"][record["name"]]["fields"]
            if f["type"]["kind"] == "name" and f["type"]["name"] in api.handle_types]


def _location_offsets(ctype: type, location_type: type, base: int = 0) -> list[int]:
    """Offsets of the memory locations (type, id) inside a record."""
    if ctype is location_type:
        return [base]
    found: list[int] = []
    for name, field_type, *_ in getattr(ctype, "_fields_", ()):
        found += _location_offsets(field_type, location_type, base + getattr(ctype, name).offset)
    return found


class Router:
    """The joined hosts' numbering and rules for one API; shared by its connections."""

    def __init__(self, api_name: str, hosts: list[HostGpus]) -> None:
        self.api = load(api_name)
        self.hosts = hosts
        self.context_prefix = api_name == "cuda"
        location = None
        if "CUmemLocation_st" in self.api.raw["records"]:
            location = self.api.record("CUmemLocation_st")
        device = self.api.constants.get("CU_MEM_LOCATION_TYPE_DEVICE", -1)
        self.plans = {f.op: _Plan(self.api, f, location, device) for f in self.api.functions if f.encodable}
        self.not_supported = self.api.constants["CUDA_ERROR_NOT_SUPPORTED" if api_name == "cuda"
                                                 else "NVML_ERROR_NOT_SUPPORTED"]
        #: the answers about two GPUs of different hosts (one int each): they cannot reach each other
        self.apart = {"cuDeviceCanAccessPeer": 0, "cuDeviceGetP2PAttribute": 0} if api_name == "cuda" else {}
        #: what a call for a GPU whose host is gone answers, as the libraries do when vgpud is
        self.lost = self.api.constants["CUDA_ERROR_DEVICE_UNAVAILABLE" if api_name == "cuda"
                                       else "NVML_ERROR_GPU_IS_LOST"]
        #: op -> (codec, destination and source parameter indices) of copies between device pointers
        self.copies: dict[int, tuple[FunctionCodec, int, int]] = {}
        for f in self.api.functions:
            base = per_thread_base(f.name)
            if base in DEVICE_COPIES and f.encodable:
                names = [p.name for p in f.params]
                self.copies[f.op] = (FunctionCodec(self.api, f), *(names.index(n) for n in DEVICE_COPIES[base]))

    def cuda_numbering(self, visible: str | None, reachable: set[int]) -> tuple[Ordinals, list[str | None]]:
        """CUDA's ordinals of the reachable hosts' GPUs under the process's
        CUDA_VISIBLE_DEVICES, and what each host is told."""
        flat = [(k, i) for k, host in enumerate(self.hosts) if k in reachable for i in range(len(host.uuids))]
        uuids = [uuid for k, host in enumerate(self.hosts) if k in reachable for uuid in host.uuids]
        chosen = [flat[n] for n in visible_devices(visible, uuids)]
        places, per_host = [], [[] for _ in self.hosts]
        for host, index in chosen:
            places.append((host, len(per_host[host])))
            per_host[host].append(str(index))
        return Ordinals(places), [",".join(numbers) for numbers in per_host]

    def nvml_numbering(self) -> Ordinals:
        return Ordinals([(k, i) for k, host in enumerate(self.hosts) for i in range(len(host.uuids))])


class _Walk:
    """One request rewritten for its host: the bytes, the hosts it names, the outputs asked for."""

    def __init__(self, joined: int) -> None:
        self.joined = joined
        self.out: list[bytes] = []
        self.hosts: set[int] = set()
        self.outputs: list[int] = []
        #: handles of objects on every host: (place in out, handle type, client id)
        self.everywhere: list[tuple[int, str, int]] = []
        #: the host of the event the call names
        self.event_host: int | None = None

    def host(self, host: int | None) -> None:
        if host is not None:
            self.hosts.add(host)

    def handle(self, handle_type: str, value: int, context_host: int | None) -> None:
        host, value = untag(handle_type, value, self.joined)
        if handle_type == "CUstream" and value in DEFAULT_STREAMS:
            host = context_host  # a default stream is the current context's
        if host == EVERY_HOST:
            self.everywhere.append((len(self.out), handle_type, value))
        else:
            self.host(host)
            if handle_type == "CUevent":
                self.event_host = host
        self.out.append(struct.pack("<Q", value))

    def payload(self, host: int, everywhere: Everywhere) -> bytes:
        """The request as ``host`` must read it."""
        for place, handle_type, value in self.everywhere:
            self.out[place] = struct.pack("<Q", everywhere.on_host(handle_type, value, host))
        return b"".join(self.out)


class JoinedConnection:
    """One client connection to joined hosts (vgpu.remote.relay.Relay makes one per client)."""

    def __init__(self, router: Router, client: socket.socket, upstreams: list[socket.socket | None],
                 numbering: Ordinals, everywhere: Everywhere) -> None:
        self.router = router
        self.client = client
        self.upstreams = upstreams
        self.readers = [FrameReader(sock) if sock is not None else None for sock in upstreams]
        self.numbering = numbering
        self.everywhere = everywhere
        #: hosts whose connection ended, or never began
        self.gone: set[int] = {k for k, sock in enumerate(upstreams) if sock is None}

    @classmethod
    def open(cls, routers: dict[str, Router], client: socket.socket, hello: Frame,
             upstreams: list[socket.socket | None], network: list[bytes],
             process: ClientProcess) -> JoinedConnection | None:
        """The client's handshake with every host it could reach (``upstreams``, None for the
        others; ``network``: each host's token and peer fields); the merged answer goes to the
        client. None when a host refused it (the client has its answer and reason then) or
        none answered. A process that starts while a host is unreachable has no CUDA devices
        there; NVML lists them, lost, as it lists a GPU that fell off the bus."""
        head = protocol.HELLO_REQUEST.size
        api = protocol.HELLO_REQUEST.unpack_from(hello.payload)[2].rstrip(b"\0").decode(errors="replace")
        (exe_len,) = struct.unpack_from("<H", hello.payload, head)
        at = head + 2 + exe_len
        (env_len,) = struct.unpack_from("<H", hello.payload, at) if len(hello.payload) >= at + 2 else (0,)
        env = dict(item.partition("=")[::2] for item in
                   hello.payload[at + 2:at + 2 + env_len].decode(errors="replace").split("\0") if item)
        live = [k for k, sock in enumerate(upstreams) if sock is not None]
        router = routers.get(api)
        if router is None:  # an API this relay does not join: a host says what is wrong
            upstreams[live[0]].sendall(protocol.pack_frame(hello.op, hello.payload + network[live[0]], hello.seq,
                                                           hello.flags))
            client.sendall(protocol.pack_frame(hello.op, FrameReader(upstreams[live[0]]).read().payload, hello.seq,
                                               protocol.FLAG_REPLY))
            return None
        if api not in process.numberings:
            process.numberings[api] = (router.cuda_numbering(env.get("CUDA_VISIBLE_DEVICES"), set(live))
                                       if api == "cuda" else (router.nvml_numbering(), [None] * len(upstreams)))
        numbering, told = process.numberings[api]
        replies = []
        for k in live:
            host_env = env if told[k] is None else {**env, "CUDA_VISIBLE_DEVICES": told[k]}
            listed = "\0".join(f"{key}={value}" for key, value in host_env.items()).encode()
            payload = hello.payload[:head + 2 + exe_len] + struct.pack("<H", len(listed)) + listed + network[k]
            try:
                upstreams[k].sendall(protocol.pack_frame(hello.op, payload, hello.seq, hello.flags))
                replies.append(FrameReader(upstreams[k]).read().payload)
            except (OSError, EOFError, ProtocolError) as error:
                log.warning("GPU host %s did not complete a handshake (%s): its GPUs are lost to this process",
                            router.hosts[k].name, str(error) or "connection closed")
                upstreams[k].close()
                upstreams[k] = None
        if not replies:
            return None
        status, session, connections, bitmap_len, _ = protocol.HELLO_REPLY.unpack_from(replies[0])
        refused = next((r for r in replies if protocol.HELLO_REPLY.unpack_from(r)[0] != protocol.HELLO_OK), None)
        if refused is not None:
            client.sendall(protocol.pack_frame(hello.op, refused, hello.seq, protocol.FLAG_REPLY))
            return None
        size = protocol.HELLO_REPLY.size
        bitmap = bytearray(b"\xff" * bitmap_len)
        for reply in replies:  # the ops every host serves
            for i, byte in enumerate(reply[size:size + bitmap_len]):
                bitmap[i] &= byte
        answer = protocol.HELLO_REPLY.pack(status, session, connections, bitmap_len, 0) + bytes(bitmap) + bytes(4)
        client.sendall(protocol.pack_frame(hello.op, answer, hello.seq, protocol.FLAG_REPLY))
        return cls(router, client, upstreams, numbering, process.everywhere)

    # requests ---------------------------------------------------------------------------
    def serve(self) -> None:
        """Frames until the client or a host goes; then the caller closes everything."""
        reader = FrameReader(self.client)
        while True:
            frame = reader.read()
            try:
                answer = self.handle(frame)
            except (struct.error, ValueError, IndexError, KeyError) as error:  # it ends the client's connection only
                raise ProtocolError(f"malformed frame (op 0x{frame.op:x}, {len(frame.payload)} bytes): "
                                    f"{error!r}") from None
            if answer is not None and not frame.flags & protocol.FLAG_NO_REPLY:
                self.client.sendall(protocol.pack_frame(frame.op, answer, frame.seq, protocol.FLAG_REPLY))

    def handle(self, frame: Frame) -> bytes | None:
        """The answer to one of the client's frames (None for work sent without waiting)."""
        try:
            return self._handle(frame)
        except HostGone:
            return None if frame.flags & protocol.FLAG_NO_REPLY else self._unreachable(frame)

    def _unreachable(self, frame: Frame) -> bytes:
        """The answer of a call that needed a host that is gone: the API's "lost" code, and
        each output the call asked for, empty."""
        lost = struct.pack("<i", self.router.lost)
        plan = self.router.plans.get(frame.op)
        if frame.op == protocol.OP_MODULE:
            return lost + bytes(12)
        if plan is None:
            return lost + bytes(8) if frame.op == protocol.OP_LAUNCH else lost
        walk = self._walk_request(plan, frame.payload[8:] if self.router.context_prefix else frame.payload)
        out = [lost]
        for index in walk.outputs:
            kind = plan.function.params[index].kind
            out.append(bytes(plan.sizes[index] if kind is Kind.INOUT else 8 if kind is Kind.HANDLE_OUT else 4))
        return b"".join(out)

    def _handle(self, frame: Frame) -> bytes | None:
        if frame.op == protocol.OP_PING:  # a fence: every host has carried out what came before
            for host in self._live(list(range(len(self.upstreams)))):
                self._ask(host, frame, frame.payload)
            return frame.payload
        if frame.op == protocol.OP_FACTS:
            return self._facts(frame)
        if frame.op == protocol.OP_MODULE:
            return self._module(frame)
        if frame.op == protocol.OP_LAUNCH:
            return self._launches(frame)
        plan = self.router.plans.get(frame.op)
        if plan is None:  # SHARE and what this relay does not know: the first host answers
            return self._ask(0, frame, frame.payload)
        return self._call(plan, frame)

    def _ask(self, host: int, frame: Frame, payload: bytes) -> bytes | None:
        """Send to one host; its answer, or None for work sent without waiting. HostGone when
        the host's connection has ended (then and ever after)."""
        if host in self.gone:
            raise HostGone(host)
        try:
            self.upstreams[host].sendall(protocol.pack_frame(frame.op, payload, frame.seq, frame.flags))
            if frame.flags & protocol.FLAG_NO_REPLY:
                return None
            while True:
                answer = self.readers[host].read()
                if answer.op == protocol.OP_NOTICE and answer.seq == 0:  # a kernel still runs, or printed
                    self.client.sendall(protocol.pack_frame(answer.op, answer.payload, 0, 0))
                elif answer.seq == frame.seq:
                    return answer.payload
        except (OSError, EOFError, ProtocolError) as error:
            self.gone.add(host)
            self.upstreams[host].close()
            log.warning("GPU host %s is gone (%s): its GPUs are lost to this process",
                        self.router.hosts[host].name, str(error) or "connection closed")
            raise HostGone(host) from None

    def _live(self, hosts: list[int]) -> list[int]:
        return [host for host in hosts if host not in self.gone]

    def _context(self, value: int) -> tuple[int | None, int]:
        if not value:
            return None, 0
        host, number = self.numbering.to_host(value & CONTEXT_ORDINAL_MASK)
        return host, value & ~CONTEXT_ORDINAL_MASK | number

    def _context_back(self, host: int, value: int) -> int:
        if not value:
            return 0
        return value & ~CONTEXT_ORDINAL_MASK | self.numbering.from_host(host, value & CONTEXT_ORDINAL_MASK)

    def _handle_back(self, host: int, handle_type: str, value: int) -> int:
        """A host's handle id as the client holds it."""
        return self._context_back(host, value) if handle_type in CONTEXT_HANDLES else tag(handle_type, value, host,
                                                                                      self.everywhere)

    def _ordinal_back(self, host: int, raw: bytes) -> bytes:
        """A host's device ordinal (its bytes) in the client's numbering."""
        number = self.numbering.from_host(host, int.from_bytes(raw, "little", signed=True))
        return number.to_bytes(len(raw), "little", signed=True)

    def _call(self, plan: _Plan, frame: Frame) -> bytes | None:
        """One API call, sent where what it names lives (see the module's docstring)."""
        payload = frame.payload
        context_host, prefix = None, b""
        if self.router.context_prefix:
            if len(payload) < 8:
                raise ProtocolError(f"{plan.function.name}: no calling context")
            context_host, context = self._context(struct.unpack_from("<Q", payload)[0])
            prefix, payload = struct.pack("<Q", context), payload[8:]
        copy = self.router.copies.get(plan.function.op)
        if copy is not None and len(self.numbering.hosts) > 1:
            staged = self._copy_between_hosts(frame, copy, payload, context_host)
            if staged is not NotImplemented:
                return staged
        walk = self._walk_request(plan, payload, context_host)
        if plan.function.name in POINTER_QUERIES:
            return self._first_found(plan, frame, prefix, walk, first=context_host)
        if len(walk.hosts) > 1:
            return self._across_hosts(plan, frame, walk)
        if walk.hosts:
            host = walk.hosts.pop()
            if context_host != host and prefix:
                prefix = bytes(8)  # the current context is another host's: the call names its own objects
        elif context_host is not None:
            host = context_host
        elif plan.function.name in EVERY_HOST_MAKERS:
            return self._made_everywhere(plan, frame, prefix, walk)
        elif plan.function.wait_param is not None and walk.everywhere:
            return self._wait_everywhere(plan, frame, walk)
        elif plan.function.name in EVERY_HOST_CALLS and walk.everywhere:
            return self._everywhere(plan, frame, prefix, walk)
        elif plan.counts:
            return self._summed(plan, frame, prefix + walk.payload(0, self.everywhere))
        elif plan.lookup:
            return self._first_found(plan, frame, prefix, walk)
        else:  # about the driver or the system: any host can answer
            host = next(iter(self._live(range(len(self.upstreams)))), 0)
        if plan.function.name in EVERY_HOST_CALLS and walk.everywhere:
            return self._everywhere(plan, frame, prefix if host == context_host else bytes(8), walk)
        answer = self._ask(host, frame, prefix + walk.payload(host, self.everywhere))
        if answer is None:
            return None
        return self._walk_reply(plan, answer, walk.outputs, host)

    def _walk_request(self, plan: _Plan, payload: bytes, context_host: int | None = None) -> _Walk:
        walk = _Walk(len(self.upstreams))
        at = 0
        for index, (param, size) in enumerate(zip(plan.function.params, plan.sizes)):
            kind = param.kind
            if kind is Kind.VALUE:
                raw = payload[at:at + size]
                if param.ordinal:
                    host, number = self.numbering.to_host(int.from_bytes(raw, "little", signed=True))
                    walk.host(host)
                    raw = number.to_bytes(size, "little", signed=True)
                walk.out.append(raw)
                at += size
            elif kind is Kind.HANDLE:
                value = struct.unpack_from("<Q", payload, at)[0]
                if param.handle in CONTEXT_HANDLES:
                    host, value = self._context(value)
                    walk.host(host)
                    walk.out.append(struct.pack("<Q", value))
                else:
                    walk.handle(param.handle, value, context_host)
                at += 8
            elif kind is Kind.CSTRING:
                length = struct.unpack_from("<I", payload, at)[0]
                end = at + 4 + (0 if length == 0xFFFFFFFF else length)
                walk.out.append(payload[at:end])
                at = end
            else:
                present = payload[at:at + 1]
                at += 1
                if present in (SHARED, DIRECT):
                    raise ProtocolError(f"{plan.function.name}: client memory named through a joining relay")
                walk.out.append(present)
                if present == b"\0":
                    continue
                if kind in OUTPUTS:
                    walk.outputs.append(index)
                if kind in (Kind.IN, Kind.INOUT):
                    walk.out.append(self._records(plan, index, payload[at:at + size], 1, walk))
                    at += size
                elif kind in (Kind.BUFFER, Kind.HANDLE_ARRAY_OUT, Kind.ARRAY_OUT):
                    walk.out.append(payload[at:at + 4])
                    at += 4
                elif kind is Kind.HANDLE_ARRAY:
                    count = struct.unpack_from("<I", payload, at)[0]
                    walk.out.append(payload[at:at + 4])
                    for value in struct.unpack_from(f"<{count}Q", payload, at + 4):
                        walk.handle(param.handle, value, context_host)
                    at += 4 + 8 * count
                elif kind in (Kind.ARRAY, Kind.ARRAY_IN):
                    count = struct.unpack_from("<I", payload, at)[0]
                    data = memoryview(payload)[at + 4:at + 4 + count * size]  # a copy's 16 MiB: not copied here
                    walk.out += [payload[at:at + 4], self._records(plan, index, data, count, walk)]
                    at += 4 + count * size
        if at != len(payload):
            raise ProtocolError(f"{plan.function.name}: {len(payload)} bytes, where its parameters take {at}")
        return walk

    def _records(self, plan: _Plan, index: int, data: bytes, count: int, walk: _Walk | None,
                 host: int | None = None) -> bytes:
        """Records with their device locations renumbered: to a host's numbering (``walk``
        collects the hosts they name), or back from ``host``'s."""
        offsets = plan.locations[index]
        if not offsets or not data:
            return data
        out = bytearray(data)
        size = plan.sizes[index]
        for element in range(count):
            for offset in offsets:
                at = element * size + offset
                kind, number = struct.unpack_from("<ii", out, at)
                if kind != plan.device_location:
                    continue
                if walk is not None:
                    target, number = self.numbering.to_host(number)
                    walk.host(target)
                else:
                    number = self.numbering.from_host(host, number)
                struct.pack_into("<i", out, at + 4, number)
        return bytes(out)

    def _walk_reply(self, plan: _Plan, answer: bytes, outputs: list[int], host: int,
                    counts: list[int] | None = None) -> bytes:
        """A host's answer in the client's numbering; ``counts`` collects device counts."""
        out = [answer[:4]]
        at = 4
        params = plan.function.params
        for index in outputs:
            param, size = params[index], plan.sizes[index]
            kind = param.kind
            if at >= len(answer):
                break
            if kind is Kind.INOUT:
                raw = answer[at:at + size]
                if param.ordinal:
                    raw = self._ordinal_back(host, raw)
                elif param.device_count and counts is not None:
                    counts.append(int.from_bytes(raw, "little", signed=True))
                raw = self._records(plan, index, raw, 1, None, host)
                if plan.handle_fields.get(index):
                    record = bytearray(raw)
                    for offset, handle_type in plan.handle_fields[index]:
                        (value,) = struct.unpack_from("<Q", record, offset)
                        struct.pack_into("<Q", record, offset, self._handle_back(host, handle_type, value))
                    raw = bytes(record)
                out.append(raw)
                at += size
            elif kind is Kind.HANDLE_OUT:
                (value,) = struct.unpack_from("<Q", answer, at)
                out.append(struct.pack("<Q", self._handle_back(host, param.handle, value)))
                at += 8
            elif kind is Kind.HANDLE_ARRAY_OUT:
                count = struct.unpack_from("<I", answer, at)[0]
                ids = [tag(param.handle, value, host, self.everywhere)
                       for value in struct.unpack_from(f"<{count}Q", answer, at + 4)]
                out.append(struct.pack(f"<I{count}Q", count, *ids))
                at += 4 + 8 * count
            elif kind is Kind.BUFFER:
                length = struct.unpack_from("<I", answer, at)[0]
                out.append(answer[at:at + 4 + length])
                at += 4 + length
            elif kind in (Kind.ARRAY, Kind.ARRAY_OUT):
                count = struct.unpack_from("<I", answer, at)[0]
                out.append(answer[at:at + 4] + self._records(plan, index, answer[at + 4:at + 4 + count * size],
                                                             count, None, host))
                at += 4 + count * size
        out.append(answer[at:])
        return b"".join(out)

    def _summed(self, plan: _Plan, frame: Frame, payload: bytes) -> bytes:
        """A device count: every host's, added up (the first failure's code otherwise). The
        count is the function's one output."""
        walk = self._walk_request(plan, payload[8:] if self.router.context_prefix else payload)
        total, first = 0, None
        for host in range(len(self.upstreams)):
            counts: list[int] = []
            try:
                answer = self._walk_reply(plan, self._ask(host, frame, payload), walk.outputs, host, counts)
            except HostGone:  # its GPUs are lost, not gone from the list: the numbering stays
                total += sum(1 for place, _ in self.numbering.places if place == host)
                continue
            if struct.unpack_from("<i", answer)[0] != 0:
                return answer
            first = first or answer
            total += sum(counts)
        if first is None:
            raise HostGone(0)
        return first[:4] + struct.pack("<i", total) + first[8:]

    def _first_found(self, plan: _Plan, frame: Frame, prefix: bytes, walk: _Walk, first: int | None = None) -> bytes:
        """A lookup (by UUID, PCI bus id, serial, device pointer): the first host that knows
        it, asking host ``first`` first (with the calling context; the others without)."""
        failed = None
        for host in self._live(self._hosts_from(first)):
            context = prefix if host == first or not prefix else bytes(8)
            try:
                answer = self._walk_reply(plan, self._ask(host, frame, context + walk.payload(host, self.everywhere)),
                                          walk.outputs, host)
            except HostGone:
                continue
            if struct.unpack_from("<i", answer)[0] == 0:
                return answer
            failed = failed or answer
        if failed is None:
            raise HostGone(first or 0)
        return failed

    def _hosts_from(self, first: int | None) -> list[int]:
        hosts = list(range(len(self.upstreams)))
        return hosts if first is None else [first] + [h for h in hosts if h != first]

    def _made_everywhere(self, plan: _Plan, frame: Frame, prefix: bytes, walk: _Walk) -> bytes:
        """An object made on every host the process has GPUs on (an NVML event set); the
        client holds one id for all of them."""
        (out,) = [i for i in walk.outputs if plan.function.params[i].kind is Kind.HANDLE_OUT]
        handle_type = plan.function.params[out].handle
        answers = {host: self._ask(host, frame, prefix + walk.payload(host, self.everywhere))
                   for host in self._live(self.numbering.hosts)}
        if not answers:
            raise HostGone(0)
        failed = next((a for a in answers.values() if struct.unpack_from("<i", a)[0]), None)
        if failed is not None:
            return failed
        every = self.everywhere.add(handle_type, {host: struct.unpack_from("<Q", answer, 4)[0]
                                                  for host, answer in answers.items()})
        return answers[min(answers)][:4] + struct.pack("<Q", every)

    def _wait_everywhere(self, plan: _Plan, frame: Frame, walk: _Walk) -> bytes:
        """A wait on an object of every host (nvmlEventSetWait): each host is asked without
        waiting, round after round, until one has an event or the time is up; an event is
        never taken from a host and dropped."""
        timeout_ms = int.from_bytes(walk.out[-1], "little")  # the wait parameter comes last
        walk.out[-1] = bytes(len(walk.out[-1]))
        deadline = time.monotonic() + timeout_ms / 1000
        timeout = self.router.api.constants["NVML_ERROR_TIMEOUT"]
        failed = None
        while True:
            for host in self._live(self.numbering.hosts):
                try:
                    answer = self._ask(host, frame, walk.payload(host, self.everywhere))
                except HostGone:
                    continue
                code = struct.unpack_from("<i", answer)[0]
                if code == 0:  # an event
                    return self._walk_reply(plan, answer, walk.outputs, host)
                if code != timeout:
                    failed = failed or self._walk_reply(plan, answer, walk.outputs, host)
            left = deadline - time.monotonic()
            if left <= 0:
                return failed or struct.pack("<i", timeout) + self._unreachable(frame)[4:]
            time.sleep(min(EVENT_POLL_S, left))

    def _everywhere(self, plan: _Plan, frame: Frame, prefix: bytes, walk: _Walk) -> bytes | None:
        """A library's end: every host unloads its copy; the first failure is the answer."""
        answers = [self._ask(host, frame, prefix + walk.payload(host, self.everywhere))
                   for host in self._live(self.numbering.hosts)]
        if not answers or answers[0] is None:
            return None
        return next((a for a in answers if struct.unpack_from("<i", a)[0]), answers[0])

    def _across_hosts(self, plan: _Plan, frame: Frame, walk: _Walk) -> bytes | None:
        """Objects of two hosts in one call. GPUs on different hosts cannot reach each other (no
        peer access, no P2P); a stream on one host waits for an event of another by the relay
        waiting for the event."""
        name = plan.function.name
        if name in self.router.apart:  # what a driver says of two GPUs that cannot reach each other
            return struct.pack("<ii", 0, self.router.apart[name])
        if per_thread_base(name) == "cuStreamWaitEvent":
            (event,) = struct.unpack_from("<Q", walk.out[1])  # the event's host's own id
            waited = self._request(walk.event_host, "cuEventSynchronize", struct.pack("<QQ", 0, event))
            return None if frame.flags & protocol.FLAG_NO_REPLY else waited[:4]
        log.info("%s names objects of hosts %s: not supported across hosts", name, sorted(walk.hosts))
        return struct.pack("<i", self.router.not_supported)

    def _request(self, host: int, name: str, payload: bytes) -> bytes:
        """The relay's own call to a host, answered."""
        return self._ask(host, Frame(self.router.api.function(name).op, 0, 0, payload), payload)

    def _owner(self, pointer: int, first: int | None) -> tuple[int, int] | None:
        """(host, the host's primary context id) of the device a pointer lies on."""
        codec = FunctionCodec(self.router.api, self.router.api.function("cuPointerGetAttribute"))
        ordinal = self.router.api.constants["CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL"]
        request = bytes(8) + codec.encode_request({"attribute": ordinal, "ptr": pointer})
        for host in self._hosts_from(first):
            answer = self._request(host, "cuPointerGetAttribute", request)
            if struct.unpack_from("<i", answer)[0] == 0:
                return host, PRIMARY_CONTEXT | struct.unpack_from("<Q", answer, 4)[0]
        return None

    def _copy_between_hosts(self, frame: Frame, copy: tuple[FunctionCodec, int, int], payload: bytes,
                            context_host: int | None) -> bytes | None:
        """A copy whose two device pointers lie on two hosts, carried out by the relay: read
        from one, written to the other, in pieces, in order with the work sent before it.
        NotImplemented when both lie on one host (the call goes on as usual)."""
        codec, dst_at, src_at = copy
        args = codec.decode(payload)
        names = [p.name for p in codec.function.params]
        count = args[names.index("ByteCount")]
        if "dstContext" in names:  # a peer copy names its contexts
            dst = self._context(args[names.index("dstContext")])
            src = self._context(args[names.index("srcContext")])
        else:
            dst, src = self._owner(args[dst_at], context_host), self._owner(args[src_at], context_host)
        if dst is None or src is None or dst[0] == src[0] or dst[0] is None or src[0] is None:
            return NotImplemented
        rc = 0
        for offset in range(0, count, BULK_CHUNK):
            size = min(BULK_CHUNK, count - offset)
            answer = self._request(src[0], "cuMemcpyDtoH_v2", struct.pack("<QBIQQ", src[1], 1, size,
                                                                          args[src_at] + offset, size))
            rc = struct.unpack_from("<i", answer)[0]
            if rc == 0:
                data = answer[8:8 + size]
                rc = struct.unpack_from("<i", self._request(dst[0], "cuMemcpyHtoD_v2", struct.pack(
                    "<QQBI", dst[1], args[dst_at] + offset, 1, size) + data + struct.pack("<Q", size)))[0]
            if rc:
                break
        if frame.flags & protocol.FLAG_NO_REPLY:
            if rc:
                log.warning("a copy of %d bytes between GPU hosts failed with %d", count, rc)
            return None
        return struct.pack("<i", rc)

    # whole-process requests --------------------------------------------------------------
    def _facts(self, frame: Frame) -> bytes:
        """Every host's immutable answers, renumbered and merged; device counts added up."""
        merged: dict[bytes, bytes] = {}
        counted: dict[bytes, int] = {}
        lost = sum(1 for host, _ in self.numbering.places if host in self.gone)  # counted, answering nothing
        for host in self._live(range(len(self.upstreams))):
            reply = self._ask(host, frame, frame.payload)
            at = 0
            while at < len(reply):
                (key_len,) = struct.unpack_from("<H", reply, at)
                key = reply[at + 2:at + 2 + key_len]
                (answer_len,) = struct.unpack_from("<I", reply, at + 2 + key_len)
                answer = reply[at + 6 + key_len:at + 6 + key_len + answer_len]
                at += 6 + key_len + answer_len
                plan = self.router.plans.get(struct.unpack_from("<H", key)[0])
                if plan is None:
                    continue
                key, outputs = self._fact_key(plan, key, host)
                counts: list[int] = []
                answer = self._walk_reply(plan, answer, outputs, host, counts)
                if counts:
                    counted[key] = counted.get(key, lost) + sum(counts)
                    answer = answer[:4] + struct.pack("<i", counted[key]) + answer[8:]
                    merged[key] = answer
                else:
                    merged.setdefault(key, answer)
        return b"".join(struct.pack("<H", len(k)) + k + struct.pack("<I", len(a)) + a for k, a in merged.items())

    def _fact_key(self, plan: _Plan, key: bytes, host: int) -> tuple[bytes, list[int]]:
        """A published key (vgpu.wire.codec.FunctionCodec.published_key) in the client's
        numbering, and the outputs its answer carries."""
        out, outputs, at = [key[:2]], [], 2
        for index, (param, size) in enumerate(zip(plan.function.params, plan.sizes)):
            kind = param.kind
            if kind is Kind.VALUE:
                raw = key[at:at + size]
                out.append(self._ordinal_back(host, raw) if param.ordinal else raw)
                at += size
            elif kind is Kind.HANDLE:
                (value,) = struct.unpack_from("<Q", key, at)
                out.append(struct.pack("<Q", self._handle_back(host, param.handle, value)))
                at += 8
            else:
                present = key[at]
                out.append(key[at:at + 1])
                at += 1
                if not present:
                    continue
                if kind in (Kind.INOUT, Kind.HANDLE_OUT, Kind.BUFFER):
                    outputs.append(index)
                if kind is Kind.IN or kind is Kind.INOUT and plan.struct_out[index]:
                    out.append(key[at:at + size])
                    at += size
                elif kind is Kind.BUFFER:
                    out.append(key[at:at + 4])
                    at += 4
        return b"".join(out), outputs

    def _module(self, frame: Frame) -> bytes:
        """A module goes to the host of the context it is loaded in, its id tagged with the
        host; a library (flag 1) to every host (see Everywhere)."""
        host, context = self._context(struct.unpack_from("<Q", frame.payload)[0])
        (flags,) = struct.unpack_from("<I", frame.payload, 8)
        image = frame.payload[12:]
        if not flags & MODULE_FLAG_LIBRARY:
            host = host if host is not None else 0
            answer = self._ask(host, frame, struct.pack("<QI", context, flags) + image)
            rc, module = struct.unpack_from("<iQ", answer)
            return answer[:4] + struct.pack("<Q", tag("CUmodule", module, host) if rc == 0 else module) + answer[12:]
        answers = {k: self._ask(k, frame, struct.pack("<QI", context if k == host else 0, flags) + image)
                   for k in self._live(self.numbering.hosts)}
        if not answers:
            raise HostGone(host or 0)
        failed = next((a for a in answers.values() if struct.unpack_from("<i", a)[0]), None)
        if failed is not None:
            return failed
        every = self.everywhere.add("CUlibrary", {k: struct.unpack_from("<Q", a, 4)[0] for k, a in answers.items()})
        answer = answers[min(answers)]
        return answer[:4] + struct.pack("<Q", every) + answer[12:]

    def _kernel_node_params(self, host: int, frame: Frame, record: bytes, flags: int) -> bytes:
        """A kernel node's parameters (a frame of its own): a read's answer names the function
        as the client knows it."""
        try:
            answer = self._ask(host, frame, record)
        except HostGone:
            return struct.pack("<i", self.router.lost)
        if flags & LAUNCH_NODE_GET and len(answer) >= 4 + LAUNCH.size and struct.unpack_from("<i", answer)[0] == 0:
            function = struct.unpack_from("<Q", answer, 12)[0]
            answer = answer[:12] + struct.pack("<Q", tag("CUfunction", function, host, self.everywhere)) + answer[20:]
        return answer

    def _launches(self, frame: Frame) -> bytes | None:
        """Launch records, each to its context's host; consecutive ones to a host share a frame."""
        payload, at = frame.payload, 0
        runs: list[tuple[int, list[bytes]]] = []
        while at < len(payload):
            (context, function, stream, *shape, flags, args_size) = LAUNCH.unpack_from(payload, at)
            end = at + LAUNCH.size + args_size
            extra = b""
            host, context = self._context(context)
            function_host, function = untag("CUfunction", function, len(self.upstreams))
            if host is None:
                host = function_host if function_host not in (None, EVERY_HOST) else 0
            if function_host == EVERY_HOST:
                function = self.everywhere.on_host("CUfunction", function, host)
            _, stream = untag("CUstream", stream)
            if flags & LAUNCH_CAPTURE_HOST:  # a host function that a capturing stream may take: the stream's host
                record = LAUNCH.pack(context, function, stream, *shape, flags, args_size) + \
                    bytes(payload[at + LAUNCH.size:end])
                try:
                    return self._ask(host, frame, record)
                except HostGone:
                    return struct.pack("<iI", self.router.lost, 0)
            if flags & LAUNCH_GRAPH_RUN:  # a graph launch run or resumed: the executable graph's host
                graph_exec, token = struct.unpack_from("<QQ", payload, at + LAUNCH.size)
                exec_host, graph_exec = untag("CUgraphExec", graph_exec, len(self.upstreams))
                record = LAUNCH.pack(context, function, stream, *shape, flags, args_size) + \
                    struct.pack("<QQ", graph_exec, token)
                try:
                    return self._ask(exec_host if exec_host is not None else host, frame, record)
                except HostGone:
                    return struct.pack("<iQQQ", self.router.lost, 0, 0, 0)
            if flags & LAUNCH_NODE_PARAMS:  # a kernel node's parameters set or read: the node's host
                node, graph_exec = struct.unpack_from("<QQ", payload, at + LAUNCH.size)
                node_host, node = untag("CUgraphNode", node, len(self.upstreams))
                host = node_host if node_host is not None else host
                extra = struct.pack("<QQ", node, untag("CUgraphExec", graph_exec)[1])
                end += 16
                args_start = end - args_size
                record = LAUNCH.pack(context, function, stream, *shape, flags, args_size) + extra + \
                    payload[args_start:end]
                return self._kernel_node_params(host, frame, record, flags)
            if flags & LAUNCH_GRAPH_NODE:
                graph, count = struct.unpack_from("<QI", payload, end - args_size)
                nodes = struct.unpack_from(f"<{count}Q", payload, end - args_size + 12)
                extra = struct.pack(f"<QI{count}Q", untag("CUgraph", graph)[1], count,
                                    *(untag("CUgraphNode", node)[1] for node in nodes))
                end += 12 + 8 * count
                args_start = end - args_size
            else:
                args_start = at + LAUNCH.size
            record = LAUNCH.pack(context, function, stream, *shape, flags, args_size) + extra + payload[args_start:end]
            if runs and runs[-1][0] == host:
                runs[-1][1].append(record)
            else:
                runs.append((host, [record]))
            at = end
        answers = []
        for host, records in runs:
            try:
                answer = self._ask(host, frame, b"".join(records))
            except HostGone:  # the other hosts' launches still go
                answer = None if frame.flags & protocol.FLAG_NO_REPLY else struct.pack("<iQ", self.router.lost, 0)
            if answer is not None and len(answer) >= 12 and struct.unpack_from("<i", answer)[0] == 0:
                node = struct.unpack_from("<Q", answer, 4)[0]  # a graph's kernel node
                answer = answer[:4] + struct.pack("<Q", tag("CUgraphNode", node, host)) + answer[12:]
            if answer is not None:
                answers.append(answer)
        return next((a for a in answers if struct.unpack_from("<i", a)[0]), answers[-1] if answers else None)


def merge_status(answers: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """The hosts' status answers as one: GPUs numbered across hosts, each GPU and session
    marked with its host."""
    merged = dict(answers[0])
    merged["gpus"], merged["sessions"] = [], []
    merged["hosts"] = []
    for name, answer in zip(names, answers):
        facts = {key: answer[key] for key in HOST_FACTS if key in answer}
        merged["hosts"].append(facts | {"connect": name})
        for gpu in answer.get("gpus", []):
            merged["gpus"].append({**gpu, "index": len(merged["gpus"]), "host_index": gpu["index"], "host": name})
        merged["sessions"] += [{**s, "host": name} for s in answer.get("sessions", [])]
    merged["ok"] = all(answer.get("ok", False) for answer in answers)
    return merged


def merge_launches(answers: list[dict[str, Any]], hosts: list[HostGpus], names: list[str]) -> dict[str, Any]:
    """The hosts' launch records as one list, each GPU numbered across hosts."""
    merged = dict(answers[0])
    numbers: dict[tuple[int, int], int] = {}
    for k, host in enumerate(hosts):
        for index in host.indices:
            numbers[(k, index)] = len(numbers)
    merged["launches"], merged["counts"] = [], {}
    for k, (name, answer) in enumerate(zip(names, answers)):
        for launch in answer.get("launches", []):
            merged["launches"].append({**launch, "gpu": numbers.get((k, launch["gpu"]), launch["gpu"]), "host": name})
        for key, count in answer.get("counts", {}).items():
            merged["counts"][key] = merged["counts"].get(key, 0) + count
    merged["launches"].sort(key=lambda launch: launch["time"])
    merged["ok"] = all(answer.get("ok", False) for answer in answers)
    return merged

