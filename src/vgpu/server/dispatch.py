"""From frames to service calls and back, for any API described by a manifest.

A service (NvmlService, CudaService) names its methods after the API's functions and
says how its handles resolve, which objects refuse calls (a lost GPU) and which codes
mean "invalid handle", "invalid argument", "not supported" and "internal error".
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from vgpu.api.manifest import Api, Kind, per_thread_base
from vgpu.server.state import Session
from vgpu.wire.codec import I32, U64, DecodeError, FunctionCodec, Reply

log = logging.getLogger("vgpud")
_REQUIRED_OUTPUTS = (Kind.INOUT, Kind.HANDLE_OUT, Kind.BUFFER)


#: what a process may still ask after a kernel failed (the error stays with its contexts, not
#: with the devices or the driver)
_STICKY_EXEMPT = ("cuDevice", "cuDriver", "cuInit", "cuGetErrorName", "cuGetErrorString", "cuGetExportTable",
                  "cuGetProcAddress", "cuCtxDestroy")


@dataclass(frozen=True)
class Caller:
    """Who calls, for APIs with per-thread state: the session and the thread's current context id."""

    session: Session
    context: int


class Service(Protocol):
    api: Api
    implemented: set[str]
    #: requests start with the calling thread's current context (a u64), and methods get a Caller
    CONTEXT_PREFIX: bool
    INVALID_HANDLE: int
    INVALID_ARGUMENT: int
    NOT_SUPPORTED: int
    INTERNAL_ERROR: int

    def resolve(self, handle_type: str, handle_id: int, session: Session) -> Any: ...

    def handle_id(self, obj: Any) -> int: ...

    def refusal(self, obj: Any) -> int | None: ...


def method_for(service: Any, name: str) -> Any:
    """The service's method for a function; a per-thread-default-stream name (_ptds, _ptsz)
    shares its base name's method (vgpud keeps one default stream per process and device)."""
    method = getattr(service, name, None)
    return method if method is not None else getattr(service, per_thread_base(name), None)


def implemented(service: Any) -> set[str]:
    """The functions a service serves: it has a method and every parameter can travel (the
    shim's own functions may ask vgpud too, as cuDriverGetVersion and cuPointerGetAttribute do)."""
    return {f.name for f in service.api.functions if f.encodable and method_for(service, f.name) is not None}


class ApiDispatcher:
    def __init__(self, service: Service) -> None:
        self.api = service.api
        self.service = service
        self.codecs = {f.op: FunctionCodec(self.api, f) for f in self.api.functions if f.name in service.implemented}
        self.methods = {op: method_for(service, codec.function.name) for op, codec in self.codecs.items()}
        bitmap = bytearray((len(self.api.functions) + 7) // 8)
        for op in self.codecs:
            index = op - self.api.functions[0].op
            bitmap[index // 8] |= 1 << (index % 8)
        #: the ops served, sent to the shim in the handshake
        self.bitmap = bytes(bitmap)

    def facts(self, session: Session) -> bytes:
        """The answers to every immutable call the service lists for this process, keyed as the
        shim keys them, so one round trip fills its cache."""
        out = []
        context = U64.pack(0)
        for name, values in getattr(self.service, "immutable_calls", lambda s: [])(session):
            codec = self.codecs.get(self.api.function(name).op)
            if codec is None:
                continue
            request = codec.encode_request(values)
            answer = self.call(session, codec.function.op, context + request if self.service.CONTEXT_PREFIX else request)
            if struct.unpack_from("<i", answer)[0] != 0:
                continue
            key = codec.published_key(request)
            out.append(struct.pack("<H", len(key)) + key + struct.pack("<I", len(answer)) + answer)
        return b"".join(out)

    def call(self, session: Session, op: int, payload: bytes) -> Reply:
        service = self.service
        codec = self.codecs.get(op)
        if codec is None:
            return I32.pack(service.NOT_SUPPORTED)
        caller: Session | Caller = session
        if service.CONTEXT_PREFIX:
            if len(payload) < 8:
                raise DecodeError(f"{codec.function.name}: no calling context")
            caller = Caller(session, U64.unpack_from(payload)[0])
            payload = memoryview(payload)[8:]  # a bulk transfer's 16 MiB are not copied for it
        args = codec.decode(payload, session.windows)
        if session.sticky_error and service.CONTEXT_PREFIX and not codec.function.name.startswith(_STICKY_EXEMPT):
            return codec.encode_reply(session.sticky_error, args, service.handle_id)
        for index, param in enumerate(codec.function.params):
            if param.kind is Kind.HANDLE:
                obj = service.resolve(param.handle, args[index], caller)
                if obj is None:
                    return codec.encode_reply(service.INVALID_HANDLE, args, service.handle_id)
                refusal = service.refusal(obj)
                if refusal is not None:
                    return codec.encode_reply(refusal, args, service.handle_id)
                args[index] = obj
            elif param.kind is Kind.HANDLE_ARRAY and args[index] is not None:
                resolved = [service.resolve(param.handle, handle, caller) for handle in args[index]]
                if any(obj is None for obj in resolved):
                    return codec.encode_reply(service.INVALID_HANDLE, args, service.handle_id)
                args[index] = resolved
            elif param.kind in _REQUIRED_OUTPUTS and args[index] is None and not param.optional:
                return codec.encode_reply(service.INVALID_ARGUMENT, args, service.handle_id)
        try:
            rc = self.methods[op](caller, *args)
        except Exception:
            log.exception("%s failed in vgpud", codec.function.name)
            rc = service.INTERNAL_ERROR
        if codec.function.synchronizing and session.deferred_error and rc == 0:
            rc, session.deferred_error = session.deferred_error, 0  # what queued work left behind
        return codec.encode_reply(rc, args, service.handle_id)
