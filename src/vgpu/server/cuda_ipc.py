"""CUDA IPC: device memory and events shared between processes of one vgpud, as
torch.multiprocessing shares CUDA tensors.

A handle is 64 opaque bytes, as a real driver's: a tag, the GPU, the allocation's address and
size, and a random 32-byte secret made when the allocation is first exported.  vgpud answers
only a handle whose secret it made for that allocation, so a handle cannot be guessed or
forged from an address, and only processes of the exporter's tenant may open it.

Opening gives the same device address the exporter has (processes have address spaces of
their own, and vgpud's allocations never share an address), reaching the same bytes both
ways.  An open is counted per process: opening a handle again returns the same pointer, and
the memory stays reachable until as many closes.  When the exporting process frees the
allocation (or ends) while another still has it open, the memory and its contents stay until
the last close (the real driver leaves this undefined; keeping the memory is what its
reference-counted mappings do in practice).  Such memory no longer counts against the
exporter's use.

An opened event is a CUevent of the opening process that shares the exported event's state:
recorded in either process, queried, synchronised with and waited for in either.
"""

from __future__ import annotations

import ctypes
import hmac
import secrets
import struct
from dataclasses import dataclass
from typing import Any

from vgpu.api.manifest import load
from vgpu.device.gpu import Gpu
from vgpu.server.dispatch import Caller
from vgpu.server.state import Session

C = load("cuda").constants
SUCCESS = C["CUDA_SUCCESS"]
INVALID_VALUE = C["CUDA_ERROR_INVALID_VALUE"]
#: a memory handle: tag, GPU index, address, size, secret (then zeros to 64 bytes)
MEMORY_HANDLE = struct.Struct("<4sIQQ32s")
#: an event handle: tag, secret
EVENT_HANDLE = struct.Struct("<4s32s")
MEMORY_TAG, EVENT_TAG = b"vgIM", b"vgIE"
HANDLE_SIZE = C["CU_IPC_HANDLE_SIZE"]
#: what an event must have been created with to be shared
SHAREABLE_EVENT = C["CU_EVENT_INTERPROCESS"] | C["CU_EVENT_DISABLE_TIMING"]


@dataclass
class ExportedMemory:
    secret: bytes
    gpu: Gpu
    address: int
    size: int
    exporter: int
    tenant: str | None

    def handle(self) -> bytes:
        return MEMORY_HANDLE.pack(MEMORY_TAG, self.gpu.index, self.address, self.size, self.secret)


@dataclass
class ExportedEvent:
    secret: bytes
    event: Any
    exporter: int
    tenant: str | None

    def handle(self) -> bytes:
        return EVENT_HANDLE.pack(EVENT_TAG, self.secret).ljust(HANDLE_SIZE, b"\0")


class OpenedEvent:
    """An event opened from another process's handle: its own id and owner, the exported
    event's state (cuEventRecord and the waits read and write ``recorded_at`` through it)."""

    def __init__(self, id: int, owner: int, source: Any) -> None:
        self.id, self.owner, self.source, self.capture = id, owner, source, None
        self.flags = C["CU_EVENT_DISABLE_TIMING"]  # as the real driver's opened events behave

    @property
    def recorded_at(self) -> float | None:
        return self.source.recorded_at

    @recorded_at.setter
    def recorded_at(self, moment: float | None) -> None:
        self.source.recorded_at = moment


def _tenant(session: Session) -> str | None:
    return session.tenant.name if session.tenant is not None else None


def _handle_bytes(handle: Any) -> bytes:
    return ctypes.string_at(ctypes.addressof(handle), HANDLE_SIZE)


def _fill(out: Any, data: bytes) -> None:
    ctypes.memmove(ctypes.addressof(out), data.ljust(HANDLE_SIZE, b"\0"), HANDLE_SIZE)


class InterprocessSharing:
    """cuIpcGetMemHandle, cuIpcOpenMemHandle(_v2), cuIpcCloseMemHandle, cuIpcGetEventHandle,
    cuIpcOpenEventHandle: a mixin of CudaService."""

    def _init_ipc(self) -> None:
        self.exported: dict[bytes, ExportedMemory] = {}
        #: (GPU index, address) -> its export, so that exporting again gives the same handle
        self.exported_at: dict[tuple[int, int], ExportedMemory] = {}
        #: (session id, address) -> how many times the process opened it
        self.ipc_opened: dict[tuple[int, int], tuple[Gpu, int]] = {}
        self.exported_events: dict[bytes, ExportedEvent] = {}

    def _forget_ipc(self, session: Session) -> None:
        """A process ended: its exports can no longer be opened (what others opened stays until
        they close it; the GPU's memory drops the process's own opens)."""
        for secret in [s for s, e in self.exported.items() if e.exporter == session.id]:
            export = self.exported.pop(secret)
            self.exported_at.pop((export.gpu.index, export.address), None)
        for secret in [s for s, e in self.exported_events.items() if e.exporter == session.id]:
            del self.exported_events[secret]
        for key in [k for k in self.ipc_opened if k[0] == session.id]:
            del self.ipc_opened[key]

    def cuIpcGetMemHandle(self, c: Caller, pHandle: Any, dptr: int) -> int:
        """A handle for the allocation holding ``dptr`` (memory from cuMemAlloc: not a virtual
        memory mapping, nor memory this process opened from another)."""
        gpu = self._gpu_of_address(dptr)
        if gpu is None or gpu.memory.mapping_at(dptr) is not None:
            return INVALID_VALUE
        _, allocation = self._allocation_at(c, dptr)
        if allocation is None or allocation.owner != c.session.id:
            return INVALID_VALUE
        export = self.exported_at.get((gpu.index, allocation.address))
        if export is None or export.exporter != c.session.id:
            export = ExportedMemory(secrets.token_bytes(32), gpu, allocation.address, allocation.size,
                                    c.session.id, _tenant(c.session))
            self.exported[export.secret] = export
            self.exported_at[(gpu.index, allocation.address)] = export
        _fill(pHandle, export.handle())
        return SUCCESS

    def _export_named(self, c: Caller, handle: Any) -> ExportedMemory | None:
        """The export a memory handle names, if it is one of vgpud's and the caller's tenant's."""
        given = _handle_bytes(handle)
        export = self.exported.get(MEMORY_HANDLE.unpack_from(given)[-1])
        if export is None or not hmac.compare_digest(given, export.handle().ljust(HANDLE_SIZE, b"\0")) or \
                export.tenant != _tenant(c.session):
            return None
        return export

    def cuIpcOpenMemHandle_v2(self, c: Caller, pdptr: Any, handle: Any, Flags: int) -> int:
        if Flags & ~C["CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS"]:
            return INVALID_VALUE
        gpu, rc = self._context_gpu(c)
        if gpu is None:
            return rc
        export = self._export_named(c, handle)
        if export is None:
            return INVALID_VALUE
        if export.exporter == c.session.id:
            return C["CUDA_ERROR_INVALID_CONTEXT"]  # as the real driver refuses a process its own memory
        key = (c.session.id, export.address)
        opens = self.ipc_opened.get(key, (export.gpu, 0))[1]
        if not opens:
            allocation = export.gpu.memory.allocation_at(export.address)
            if allocation is None or allocation.owner != export.exporter:
                return INVALID_VALUE  # freed by its process since
            export.gpu.memory.grant(export.address, c.session.id)
        self.ipc_opened[key] = (export.gpu, opens + 1)
        if Flags and export.gpu is not gpu:  # the lazy flag enables peer access as the open needs it
            peer = self._peer_context(c, export.gpu)
            if peer is not None:
                self.peer_access.setdefault(c.session.id, set()).add((c.context, peer))
        pdptr.value = export.address
        return SUCCESS

    cuIpcOpenMemHandle = cuIpcOpenMemHandle_v2

    def _peer_context(self, c: Caller, gpu: Gpu) -> int | None:
        """The primary context id of a GPU in the caller's numbering, if it sees the GPU."""
        from vgpu.server.cuda_service import PRIMARY_CONTEXT  # the module that mixes this one in
        visible = self._visible(c)
        return PRIMARY_CONTEXT | visible.index(gpu.index) if gpu.index in visible else None

    def cuIpcCloseMemHandle(self, c: Caller, dptr: int) -> int:
        key = (c.session.id, dptr)
        if key not in self.ipc_opened:
            return INVALID_VALUE
        gpu, opens = self.ipc_opened.pop(key)
        if opens > 1:
            self.ipc_opened[key] = (gpu, opens - 1)
        else:
            gpu.memory.revoke(dptr, c.session.id)
        return SUCCESS

    def cuIpcGetEventHandle(self, c: Caller, pHandle: Any, event: Any) -> int:
        source = event.source if isinstance(event, OpenedEvent) else event
        if source.flags & SHAREABLE_EVENT != SHAREABLE_EVENT:
            return INVALID_VALUE
        export = next((e for e in self.exported_events.values() if e.event is source), None)
        if export is None:
            export = ExportedEvent(secrets.token_bytes(32), source, source.owner, _tenant(c.session))
            self.exported_events[export.secret] = export
        _fill(pHandle, export.handle())
        return SUCCESS

    def cuIpcOpenEventHandle(self, c: Caller, phEvent: Any, handle: Any) -> int:
        gpu, rc = self._context_gpu(c)
        if gpu is None:
            return rc
        given = _handle_bytes(handle)
        export = self.exported_events.get(EVENT_HANDLE.unpack_from(given)[-1])
        if export is None or not hmac.compare_digest(given, export.handle()) or export.tenant != _tenant(c.session):
            return INVALID_VALUE
        if export.exporter == c.session.id:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        opened = OpenedEvent(next(self._ids), c.session.id, export.event)
        self.events[opened.id] = opened
        phEvent.value = opened
        return SUCCESS
