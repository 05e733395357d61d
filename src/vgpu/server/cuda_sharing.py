"""Memory shared between processes through shareable handles, and pointer attributes a process
sets: a mixin of CudaService.

cuMemExportToShareableHandle with CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR gives the application
a real file descriptor, which it may pass to another process over a Unix socket (SCM_RIGHTS) as
with a real driver.  The shim makes that descriptor: a sealed memfd holding a 64-byte token that
vgpud issues here (a tag and a random 32-byte secret naming the physical allocation).  Importing
reads the token back from the descriptor and vgpud answers only a token it issued, to a process
of the exporter's tenant, with a handle of the importing process to the same physical memory, so
cuMemMap shows the same bytes in both processes.

vgpud cannot see when the application closes the descriptor, so an export keeps the memory while
the exporting process lives (a real driver keeps it while a descriptor is open); imported handles
keep it after that, until released.
"""

from __future__ import annotations

import ctypes
import hmac
import secrets
import struct
from typing import Any

from vgpu.api.manifest import load
from vgpu.server.cuda_vmm import PhysicalAllocation
from vgpu.server.dispatch import Caller
from vgpu.server.state import Session

C = load("cuda").constants
SUCCESS = C["CUDA_SUCCESS"]
INVALID_VALUE = C["CUDA_ERROR_INVALID_VALUE"]
NOT_SUPPORTED = C["CUDA_ERROR_NOT_SUPPORTED"]
POSIX_FD = C["CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR"]
#: the token a shareable descriptor holds: tag, GPU index, secret (zeros to 64 bytes)
TOKEN = struct.Struct("<4sI32s")
VMM_TAG = b"vgSH"
TOKEN_SIZE = C["CU_IPC_HANDLE_SIZE"]


def _tenant(session: Session) -> str | None:
    return session.tenant.name if session.tenant is not None else None


class SharedMemory:
    """cuMemExportToShareableHandle, cuMemImportFromShareableHandle, cuPointerSetAttribute."""

    def _init_sharing(self) -> None:
        #: secret -> (the exporter's handle, its tenant)
        self.shareable: dict[bytes, tuple[PhysicalAllocation, str | None]] = {}
        #: (process, GPU index, allocation address) of allocations whose memory operations synchronise
        self.sync_memops: set[tuple[int, int, int]] = set()

    def _forget_sharing(self, session: Session) -> None:
        for secret in [s for s, (p, _) in self.shareable.items() if p.owner == session.id]:
            del self.shareable[secret]
        self.sync_memops = {key for key in self.sync_memops if key[0] != session.id}

    def cuMemExportToShareableHandle(self, c: Caller, shareableHandle: Any, handle: int, handleType: int,
                                     flags: int) -> int:
        """The token for the shim's descriptor (the shim has checked the handle type is a POSIX
        descriptor; a fabric handle is refused there, as on GPUs without a fabric)."""
        physical = self._own_physical(c, handle)
        if physical is None or shareableHandle is None or flags or handleType != POSIX_FD or \
                not physical.handle_types & POSIX_FD:
            return INVALID_VALUE
        secret = next((s for s, (p, _) in self.shareable.items() if p is physical), None)
        if secret is None:
            secret = secrets.token_bytes(32)
            self.shareable[secret] = (physical, _tenant(c.session))
        physical.exported = True
        token = TOKEN.pack(VMM_TAG, physical.gpu.index, secret).ljust(TOKEN_SIZE, b"\0")
        ctypes.memmove(ctypes.addressof(shareableHandle), token, TOKEN_SIZE)
        return SUCCESS

    def cuMemImportFromShareableHandle(self, c: Caller, handle: Any, osHandle: Any, shHandleType: int) -> int:
        """A handle of this process to the memory a token names."""
        if osHandle is None or shHandleType != POSIX_FD:
            return INVALID_VALUE
        given = ctypes.string_at(ctypes.addressof(osHandle), TOKEN_SIZE)
        tag, gpu_index, secret = TOKEN.unpack_from(given)
        found = self.shareable.get(secret) if tag == VMM_TAG else None
        if found is None:
            return INVALID_VALUE
        source, tenant = found
        expected = TOKEN.pack(VMM_TAG, source.gpu.index, secret).ljust(TOKEN_SIZE, b"\0")
        if not hmac.compare_digest(given, expected) or tenant != _tenant(c.session) or \
                source.handle not in self.physical:
            return INVALID_VALUE
        if source.gpu.index not in self._visible(c):
            return NOT_SUPPORTED  # the memory of a GPU this process does not see
        if c.session.id != source.creator:
            source.gpu.memory.grant(source.address, c.session.id)
        imported = PhysicalAllocation(next(self._ids), c.session.id, source.gpu, source.address, source.size,
                                      handle_types=source.handle_types, creator=source.creator)
        self.physical[imported.handle] = imported
        handle.value = imported.handle
        return SUCCESS

    def cuPointerSetAttribute(self, c: Caller, value: Any, attribute: int, ptr: int) -> int:
        """Only CU_POINTER_ATTRIBUTE_SYNC_MEMOPS may be set (cuda.h), on device memory."""
        if attribute != C["CU_POINTER_ATTRIBUTE_SYNC_MEMOPS"] or value is None:
            return INVALID_VALUE
        gpu, allocation = self._allocation_at(c, ptr)
        if allocation is None or gpu is None:
            return INVALID_VALUE
        key = (c.session.id, gpu.index, allocation.address)
        if value.value:
            self.sync_memops.add(key)
        else:
            self.sync_memops.discard(key)
        return SUCCESS
