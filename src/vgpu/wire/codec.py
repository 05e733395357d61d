"""Per-function payload encodings, derived from the manifest's parameter kinds.

Request: parameters in order.  VALUE: the object's bytes.  HANDLE: u64 id.
CSTRING: u32 length (0xffffffff for NULL) and bytes.  IN, INOUT, HANDLE_OUT:
u8 present, then the object's bytes (IN, INOUT).  BUFFER: u8 present, u32
capacity.  ARRAY, ARRAY_IN: u8 present, u32 count, the elements.  ARRAY_OUT: u8 present,
u32 count.  An ARRAY_IN or ARRAY_OUT inside a shared-memory window has present = 2,
u32 count and its u64 address instead (vgpu.server.windows); its reply is the count alone.
One the client copies itself through its mapping of the device memory has present = 4, u32
count, u64 address and the u64 serial of the allocation it mapped (a ClientCopy).
Reply: i32 return code, then for each present INOUT the object, for each
HANDLE_OUT a u64 id, for each BUFFER u32 length and bytes, for each ARRAY and
ARRAY_OUT u32 count and elements.  An API whose calls carry the caller's current context
(CUDA) prefixes every request with it as a u64 (see vgpu.server.dispatch).  native/nvml/call.c implements the other side.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from vgpu.api.manifest import COUNTED, Api, Function, Kind
from vgpu.wire.protocol import MAX_PAYLOAD

U8 = struct.Struct("<B")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
I32 = struct.Struct("<i")
NULL_STRING = 0xFFFFFFFF
#: the presence byte of an array that lives in a shared-memory window
SHARED = b"\x02"
#: the presence byte of an array vgpud reads or writes in the client's memory directly
DIRECT = b"\x03"
#: the presence byte of an array the client copies itself, through its mapping of the device
#: memory (u32 count, u64 address, u64 the allocation's serial): vgpud only confirms the copy
CLIENT = b"\x04"
#: the largest output array a request may ask for: its reply must fit in a frame
MAX_ARRAY_BYTES = MAX_PAYLOAD - 4096
#: arrays from this many bytes on are not copied on their way through vgpud: an input is read
#: where its frame holds it, an output is filled in a buffer the thread reuses and sent from
#: there (Pieces)
LARGE_ARRAY = 1 << 20


@dataclass(frozen=True)
class ClientCopy:
    """An array the client copies itself between its memory and its mapping of an allocation:
    ``size`` bytes, into or out of the allocation whose serial is ``serial``."""

    size: int
    serial: int

    def __len__(self) -> int:
        return self.size


class Pieces(list):
    """A reply whose large arrays travel as they are, not joined into one bytes object (a
    16 MiB copy costs more than the socket write of it); ``bytes(pieces)`` joins them."""

    @property
    def size(self) -> int:
        return sum(len(piece) for piece in self)

    def __bytes__(self) -> bytes:
        return b"".join(self)


Reply = Union[bytes, Pieces]
_scratch = threading.local()


def _output_buffer(size: int) -> bytearray:
    """A thread's buffer for large outputs, reused from reply to reply (fresh memory costs a
    page fault per 4 KiB); its previous contents were sent before the thread asks again."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _scratch.buffer = bytearray(size)
    return buffer


class DecodeError(ValueError):
    """A payload does not match the function's encoding."""


@dataclass
class HandleOut:
    """Where an implementation puts a handle it returns."""

    value: Any = None


@dataclass
class HandleArrayOut:
    """Where an implementation puts the handles it returns, at most ``capacity`` of them."""

    capacity: int
    value: list = field(default_factory=list)


@dataclass
class Buffer:
    """A char* output: the implementation stores bytes (without NUL) in ``value``; None leaves it untouched."""

    capacity: int
    value: bytes | None = None


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> memoryview:
        end = self.pos + size
        if end > len(self.data):
            raise DecodeError(f"payload ends at byte {len(self.data)}, needed {end}")
        view = memoryview(self.data)[self.pos:end]
        self.pos = end
        return view

    def unpack(self, fmt: struct.Struct) -> int:
        return fmt.unpack(self.take(fmt.size))[0]


class FunctionCodec:
    """Decodes requests and encodes replies for one function (vgpud's side)."""

    def __init__(self, api: Api, function: Function) -> None:
        self.function = function
        self.types: list[type | None] = []
        self.struct_out: list[bool] = []
        for param in function.params:
            resolved = api.resolve(param.type)
            if param.kind is Kind.VALUE:
                self.types.append(api.ctype(param.type))
            elif param.kind in (Kind.IN, Kind.INOUT) or param.kind in COUNTED:
                self.types.append(api.ctype(resolved["to"]))
            else:
                self.types.append(None)
            self.struct_out.append(param.kind is Kind.INOUT and api.resolve(resolved["to"])["kind"] == "record")

    def published_key(self, payload: bytes) -> bytes:
        """The key a published answer is filed under: the request without the contents of
        scalar outputs, which the answer does not depend on.  native/common/marshal.c
        builds the same key."""
        reader = _Reader(payload)
        key = [U16.pack(self.function.op)]
        for param, ctype, struct_out in zip(self.function.params, self.types, self.struct_out):
            kind = param.kind
            if kind is Kind.VALUE:
                key.append(bytes(reader.take(ctypes.sizeof(ctype))))
            elif kind is Kind.HANDLE:
                key.append(bytes(reader.take(8)))
            else:
                present = reader.unpack(U8)
                key.append(U8.pack(present))
                if present and kind in (Kind.IN, Kind.INOUT):
                    data = bytes(reader.take(ctypes.sizeof(ctype)))
                    if kind is Kind.IN or struct_out:
                        key.append(data)
                elif present and kind is Kind.BUFFER:
                    key.append(bytes(reader.take(4)))
        return b"".join(key)

    def encode_request(self, values: dict[str, int]) -> bytes:
        """A request with the given values and empty outputs (vgpud's own calls: the facts it
        hands out in bulk); only values, outputs of fixed size and buffers."""
        out = []
        for param, ctype in zip(self.function.params, self.types):
            if param.kind is Kind.VALUE:
                out.append(bytes(ctype(values[param.name])))
            elif param.kind is Kind.INOUT:
                out.append(U8.pack(1) + bytes(ctypes.sizeof(ctype)))
            elif param.kind is Kind.BUFFER:
                capacity = values[self.function.params[param.count].name] if param.count is not None else param.fixed
                out.append(U8.pack(1) + U32.pack(capacity))
            else:
                raise ValueError(f"{self.function.name}: {param.name} cannot be asked for in bulk")
        return b"".join(out)

    def decode(self, payload: bytes, windows: Any = None) -> list[Any]:
        """The arguments; arrays in a shared window come as memoryviews of it."""
        reader = _Reader(payload)
        args: list[Any] = []
        for param, ctype in zip(self.function.params, self.types):
            kind = param.kind
            if kind is Kind.VALUE:
                obj = ctype.from_buffer_copy(reader.take(ctypes.sizeof(ctype)))
                args.append(obj.value if hasattr(obj, "value") and not isinstance(obj, ctypes.Array) else obj)
            elif kind is Kind.HANDLE:
                args.append(reader.unpack(U64))
            elif kind is Kind.CSTRING:
                length = reader.unpack(U32)
                args.append(None if length == NULL_STRING else bytes(reader.take(length)))
            elif kind in (Kind.ARRAY_IN, Kind.ARRAY_OUT) and payload[reader.pos:reader.pos + 1] == CLIENT:
                reader.pos += 1
                count, _, serial = reader.unpack(U32), reader.unpack(U64), reader.unpack(U64)
                args.append(ClientCopy(count * ctypes.sizeof(ctype), serial))
            elif kind in (Kind.ARRAY_IN, Kind.ARRAY_OUT) and payload[reader.pos:reader.pos + 1] in (SHARED, DIRECT):
                direct = payload[reader.pos:reader.pos + 1] == DIRECT
                reader.pos += 1
                count, address = reader.unpack(U32), reader.unpack(U64)
                if windows is None:
                    raise DecodeError(f"{self.function.name}: {param.name} names client memory on no client")
                view = (windows.remote(address, count * ctypes.sizeof(ctype)) if direct
                        else windows.view(address, count * ctypes.sizeof(ctype)))
                if view is None:
                    raise DecodeError(f"{self.function.name}: {param.name} is outside the caller's reach")
                args.append(view)
            elif not reader.unpack(U8):
                args.append(None)
            elif kind in (Kind.IN, Kind.INOUT):
                args.append(ctype.from_buffer_copy(reader.take(ctypes.sizeof(ctype))))
            elif kind is Kind.HANDLE_OUT:
                args.append(HandleOut())
            elif kind is Kind.BUFFER:
                args.append(Buffer(reader.unpack(U32)))
            elif kind is Kind.HANDLE_ARRAY:
                count = reader.unpack(U32)
                args.append([reader.unpack(U64) for _ in range(count)])
            elif kind is Kind.HANDLE_ARRAY_OUT:
                args.append(HandleArrayOut(reader.unpack(U32)))
            elif kind in (Kind.ARRAY, Kind.ARRAY_IN):
                count = reader.unpack(U32)
                array_type = ctype * count
                data = reader.take(ctypes.sizeof(array_type))
                large = kind is Kind.ARRAY_IN and len(data) >= LARGE_ARRAY and not data.readonly
                args.append(array_type.from_buffer(data) if large else array_type.from_buffer_copy(data))
            elif kind is Kind.ARRAY_OUT:
                count = reader.unpack(U32)
                size = count * ctypes.sizeof(ctype)
                if size > MAX_ARRAY_BYTES:
                    raise DecodeError(f"{self.function.name}: {count} elements of {param.name} asked for")
                array_type = ctype * count
                args.append(array_type.from_buffer(_output_buffer(size)) if size >= LARGE_ARRAY else array_type())
            else:
                raise DecodeError(f"{self.function.name}: parameter {param.name} cannot be marshalled")
        if reader.pos != len(payload):
            raise DecodeError(f"{self.function.name}: {len(payload) - reader.pos} trailing bytes")
        return args

    def encode_reply(self, rc: int, args: list[Any], handle_id: Callable[[Any], int]) -> Reply:
        """The reply's bytes; Pieces when it carries a large array (sent without joining)."""
        out: list[bytes | memoryview] = [I32.pack(rc)]
        large = False
        for index, (param, arg) in enumerate(zip(self.function.params, args)):
            if arg is None:
                continue
            kind = param.kind
            if kind is Kind.INOUT:
                out.append(bytes(arg))
            elif kind is Kind.HANDLE_OUT:
                out.append(U64.pack(handle_id(arg.value) if arg.value is not None else 0))
            elif kind is Kind.HANDLE_ARRAY_OUT:
                handles = arg.value[:arg.capacity]
                out.append(U32.pack(len(handles)) + b"".join(U64.pack(handle_id(h) if h is not None else 0)
                                                             for h in handles))
            elif kind is Kind.BUFFER:
                data = b"" if arg.value is None or not arg.capacity else arg.value[: arg.capacity - 1] + b"\0"
                out.append(U32.pack(len(data)) + data)
            elif kind is Kind.ARRAY_OUT and isinstance(arg, ClientCopy):
                out.append(U32.pack(arg.size // ctypes.sizeof(self.types[index])))  # the client copies
            elif kind is Kind.ARRAY_OUT and (isinstance(arg, memoryview) or hasattr(arg, "copy_from")):
                out.append(U32.pack(len(arg) // ctypes.sizeof(self.types[index])))  # written in place
            elif kind in (Kind.ARRAY, Kind.ARRAY_OUT):
                count = len(arg)
                holder = args[param.count]
                if isinstance(holder, ctypes._SimpleCData):
                    count = min(count, holder.value)
                size = ctypes.sizeof(arg) // len(arg) if len(arg) else 0
                out.append(U32.pack(count))
                if count * size >= LARGE_ARRAY:
                    out.append(memoryview(arg).cast("B")[:count * size])
                    large = True
                else:
                    out.append(bytes(arg)[:count * size])
        return Pieces(out) if large else b"".join(out)
