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

Memory pools made with a POSIX descriptor handle type export the same way
(cuMemPoolExportToShareableHandle); the importing process gets a pool of its own standing for
the exporter's, which makes no allocations, and imports the exporter's allocations from it with
the 64 bytes cuMemPoolExportPointer gives: the same address, reaching the same bytes, until the
importer frees it (the exporter's free leaves the memory to the importer until then).
"""

from __future__ import annotations

import ctypes
import hmac
import secrets
import struct
from dataclasses import dataclass, field
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
VMM_TAG, POOL_TAG, POOL_POINTER_TAG = b"vgSH", b"vgSP", b"vgPP"
TOKEN_SIZE = C["CU_IPC_HANDLE_SIZE"]


#: what the shim sends for a semaphore's descriptor: tag, handle type, flags, the open file's
#: device and inode (the same in every process the descriptor reaches)
SEMAPHORE_KEY = struct.Struct("<4sIIQQ")
SEMAPHORE_TAG = b"vgES"
BINARY = C["CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_FD"]
TIMELINE = C["CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD"]
#: the owner of semaphore words: vgpud itself (each importer is granted access)
SEMAPHORE_OWNER = -2


@dataclass
class SemaphoreWord:
    """A semaphore's state: an 8-byte device word (a timeline's value, or 1 while a binary one
    is signalled), shared by every import of the same file."""

    gpu: Any
    address: int
    kind: int
    importers: set[int] = field(default_factory=set)


@dataclass
class ExternalSemaphore:
    id: int
    owner: int
    word: SemaphoreWord


def _tenant(session: Session) -> str | None:
    return session.tenant.name if session.tenant is not None else None


class SharedMemory:
    """cuMemExportToShareableHandle, cuMemImportFromShareableHandle, cuPointerSetAttribute."""

    def _init_sharing(self) -> None:
        #: secret -> (the exporter's handle, its tenant)
        self.shareable: dict[bytes, tuple[PhysicalAllocation, str | None]] = {}
        #: secret -> (an exported pool, its tenant)
        self.shared_pools: dict[bytes, tuple[Any, str | None]] = {}
        #: secret -> (the pool, the allocation's address) of an exported pool allocation
        self.pool_pointers: dict[bytes, tuple[Any, int]] = {}
        #: (process, GPU index, address) -> how many times the process imported that allocation
        self.imported_pointers: dict[tuple[int, int, int], int] = {}
        #: (tenant, handle type, device, inode) -> the semaphore imported from that file
        self.semaphore_words: dict[tuple[str | None, int, int, int], SemaphoreWord] = {}
        self.external_semaphores: dict[int, ExternalSemaphore] = {}
        #: (process, GPU index, allocation address) of allocations whose memory operations synchronise
        self.sync_memops: set[tuple[int, int, int]] = set()

    def _forget_sharing(self, session: Session) -> None:
        for secret in [s for s, (p, _) in self.shareable.items() if p.owner == session.id]:
            del self.shareable[secret]
        self.sync_memops = {key for key in self.sync_memops if key[0] != session.id}
        for secret in [s for s, (pool, _) in self.shared_pools.items() if pool.owner == session.id]:
            del self.shared_pools[secret]
        for secret in [s for s, (pool, _) in self.pool_pointers.items() if pool.owner == session.id]:
            del self.pool_pointers[secret]
        for key in [k for k in self.imported_pointers if k[0] == session.id]:
            del self.imported_pointers[key]  # the GPU's memory drops the process's grants
        for semaphore in [e for e in self.external_semaphores.values() if e.owner == session.id]:
            self._drop_semaphore(semaphore)

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
        _fill(shareableHandle, TOKEN.pack(VMM_TAG, physical.gpu.index, secret))
        return SUCCESS

    def cuMemImportFromShareableHandle(self, c: Caller, handle: Any, osHandle: Any, shHandleType: int) -> int:
        """A handle of this process to the memory a token names."""
        if osHandle is None or shHandleType != POSIX_FD:
            return INVALID_VALUE
        found = _named(self.shareable, VMM_TAG, osHandle, c.session)
        if found is None or found[0].handle not in self.physical:
            return INVALID_VALUE
        source = found[0]
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

    # memory pools shared between processes ----------------------------------------------------
    def cuMemPoolExportToShareableHandle(self, c: Caller, handle_out: Any, pool: Any, handleType: int,
                                         flags: int) -> int:
        """The token for the shim's descriptor, for a pool created with that handle type."""
        if handle_out is None or flags or handleType != POSIX_FD or not pool.handle_types & POSIX_FD or \
                pool.imported_from is not None:
            return INVALID_VALUE
        secret = next((s for s, (p, _) in self.shared_pools.items() if p is pool), None)
        if secret is None:
            secret = secrets.token_bytes(32)
            self.shared_pools[secret] = (pool, _tenant(c.session))
        _fill(handle_out, TOKEN.pack(POOL_TAG, pool.gpu.index, secret))
        return SUCCESS

    def cuMemPoolImportFromShareableHandle(self, c: Caller, pool_out: Any, handle: Any, handleType: int,
                                           flags: int) -> int:
        """A pool of the calling process standing for the exporter's."""
        from vgpu.server.cuda_service import MemoryPool  # the service module imports this one

        if handle is None or flags or handleType != POSIX_FD:
            return INVALID_VALUE
        found = _named(self.shared_pools, POOL_TAG, handle, c.session)
        if found is None:
            return INVALID_VALUE
        source = found[0]
        if source.gpu.index not in self._visible(c):
            return NOT_SUPPORTED
        imported = MemoryPool(next(self._ids), c.session.id, source.gpu, created=True,
                              handle_types=source.handle_types, imported_from=source)
        self.pool_ids[imported.id] = imported
        pool_out.value = imported
        return SUCCESS

    def cuMemPoolExportPointer(self, c: Caller, shareData_out: Any, ptr: int) -> int:
        """Export data for an allocation of one of the caller's shareable pools."""
        gpu, allocation = self._allocation_at(c, ptr)
        if shareData_out is None or allocation is None or allocation.owner != c.session.id:
            return INVALID_VALUE
        pool = next((p for p in self.pool_ids.values() if p.owner == c.session.id and
                     allocation.address in p.allocations), None)
        if pool is None or not pool.handle_types:
            return INVALID_VALUE  # not from a pool made shareable
        secret = next((s for s, (p, a) in self.pool_pointers.items() if p is pool and a == allocation.address), None)
        if secret is None:
            secret = secrets.token_bytes(32)
            self.pool_pointers[secret] = (pool, allocation.address)
        _fill(shareData_out, TOKEN.pack(POOL_POINTER_TAG, gpu.index, secret))
        return SUCCESS

    def cuMemPoolImportPointer(self, c: Caller, ptr_out: Any, pool: Any, shareData: Any) -> int:
        """The exporter's address, reachable by this process until it frees it."""
        if shareData is None or pool.imported_from is None:
            return INVALID_VALUE
        given = ctypes.string_at(ctypes.addressof(shareData), TOKEN_SIZE)
        tag, _, secret = TOKEN.unpack_from(given)
        found = self.pool_pointers.get(secret) if tag == POOL_POINTER_TAG else None
        if found is None or found[0] is not pool.imported_from or \
                not hmac.compare_digest(given, _token(POOL_POINTER_TAG, found[0].gpu.index, secret)):
            return INVALID_VALUE
        source, address = found
        allocation = source.gpu.memory.allocation_at(address)
        if allocation is None or allocation.owner != source.owner or address not in source.allocations:
            return INVALID_VALUE  # freed by its process since
        key = (c.session.id, source.gpu.index, address)
        if not self.imported_pointers.get(key) and c.session.id != source.owner:
            source.gpu.memory.grant(address, c.session.id)
        self.imported_pointers[key] = self.imported_pointers.get(key, 0) + 1
        ptr_out.value = address
        return SUCCESS

    def _free_imported_pointer(self, c: Caller, gpu: Any, address: int) -> bool:
        """cuMemFree of an imported pool allocation: one import fewer (whether it was one)."""
        key = (c.session.id, gpu.index, address)
        opens = self.imported_pointers.pop(key, 0)
        if not opens:
            return False
        if opens > 1:
            self.imported_pointers[key] = opens - 1
        else:
            allocation = gpu.memory.allocation_at(address)
            if allocation is None or allocation.owner != c.session.id:
                gpu.memory.revoke(address, c.session.id)
        return True


    # external semaphores: signalled and waited for in stream order -------------------------------
    def cuImportExternalSemaphore(self, c: Caller, extSem_out: Any, semHandleDesc: Any) -> int:
        """The semaphore of the file the shim's descriptor names (the shim has checked its type)."""
        tag, kind, flags, device, inode = SEMAPHORE_KEY.unpack_from(
            ctypes.string_at(ctypes.addressof(semHandleDesc), SEMAPHORE_KEY.size))
        if tag != SEMAPHORE_TAG or kind not in (BINARY, TIMELINE) or flags:
            return INVALID_VALUE
        gpu, rc = self._context_gpu(c)
        if gpu is None:
            return rc
        key = (_tenant(c.session), kind, device, inode)
        word = self.semaphore_words.get(key)
        if word is None:
            word = SemaphoreWord(gpu, gpu.memory.allocate(SEMAPHORE_OWNER, 8).address, kind)
            self.semaphore_words[key] = word
        if c.session.id not in word.importers:
            word.gpu.memory.grant(word.address, c.session.id)
            word.importers.add(c.session.id)
        semaphore = ExternalSemaphore(next(self._ids), c.session.id, word)
        self.external_semaphores[semaphore.id] = semaphore
        extSem_out.value = semaphore
        return SUCCESS

    def _drop_semaphore(self, semaphore: ExternalSemaphore) -> None:
        """One import fewer; the word goes with the last import of the last process."""
        del self.external_semaphores[semaphore.id]
        word = semaphore.word
        if any(e.word is word and e.owner == semaphore.owner for e in self.external_semaphores.values()):
            return
        word.importers.discard(semaphore.owner)
        word.gpu.memory.revoke(word.address, semaphore.owner)
        if not word.importers:
            word.gpu.memory.free(SEMAPHORE_OWNER, word.address)
            for key in [k for k, w in self.semaphore_words.items() if w is word]:
                del self.semaphore_words[key]

    def cuDestroyExternalSemaphore(self, c: Caller, extSem: Any) -> int:
        self._drop_semaphore(extSem)
        return SUCCESS

    def _semaphores(self, semaphores: Any, params: Any, count: int) -> list[tuple[ExternalSemaphore, Any]] | None:
        found, given = list(semaphores or []), list(params or [])
        if len(found) < count or len(given) < count or any(s is None for s in found[:count]):
            return None
        return list(zip(found[:count], given[:count]))

    def cuSignalExternalSemaphoresAsync(self, c: Caller, extSemArray: Any, paramsArray: Any, numExtSems: int,
                                        stream: Any) -> int:
        """Each semaphore signalled when the stream's earlier work is done: a binary one set, a
        timeline one given its new value."""
        pairs = self._semaphores(extSemArray, paramsArray, numExtSems)
        if pairs is None:
            return C["CUDA_ERROR_INVALID_HANDLE"] if extSemArray is not None else INVALID_VALUE
        for semaphore, params in pairs:
            value = params.params.fence.value if semaphore.word.kind == TIMELINE else 1
            rc = self._write_value(c, stream, semaphore.word.address, value, 8, 0)
            if rc:
                return rc
        return SUCCESS

    def cuWaitExternalSemaphoresAsync(self, c: Caller, extSemArray: Any, paramsArray: Any, numExtSems: int,
                                      stream: Any) -> int:
        """The stream's later work waits for each semaphore: a binary one to be signalled (the
        wait consumes the signal), a timeline one to reach the value."""
        pairs = self._semaphores(extSemArray, paramsArray, numExtSems)
        if pairs is None:
            return C["CUDA_ERROR_INVALID_HANDLE"] if extSemArray is not None else INVALID_VALUE
        for semaphore, params in pairs:
            address = semaphore.word.address
            if semaphore.word.kind == TIMELINE:
                rc = self._wait_value(c, stream, address, params.params.fence.value, 8, C["CU_STREAM_WAIT_VALUE_GEQ"])
            else:
                rc = self._wait_value(c, stream, address, 1, 8, C["CU_STREAM_WAIT_VALUE_EQ"]) or \
                    self._write_value(c, stream, address, 0, 8, 0)
            if rc:
                return rc
        return SUCCESS

    cuSignalExternalSemaphoresAsync_ptsz = cuSignalExternalSemaphoresAsync
    cuWaitExternalSemaphoresAsync_ptsz = cuWaitExternalSemaphoresAsync


def _token(tag: bytes, gpu_index: int, secret: bytes) -> bytes:
    return TOKEN.pack(tag, gpu_index, secret).ljust(TOKEN_SIZE, b"\0")


def _fill(out: Any, token: bytes) -> None:
    ctypes.memmove(ctypes.addressof(out), token.ljust(TOKEN_SIZE, b"\0"), TOKEN_SIZE)


def _named(table: dict[bytes, tuple[Any, str | None]], tag: bytes, handle: Any, session: Session) -> Any:
    """The entry a token names, if vgpud made the token whole and it is the caller's tenant's."""
    given = ctypes.string_at(ctypes.addressof(handle), TOKEN_SIZE)
    given_tag, _, secret = TOKEN.unpack_from(given)
    found = table.get(secret) if given_tag == tag else None
    if found is None or found[1] != _tenant(session) or \
            not hmac.compare_digest(given, _token(tag, found[0].gpu.index, secret)):
        return None
    return found
