"""Virtual memory management as ggml-cuda and PyTorch's expandable segments use it: physical
allocations (cuMemCreate) mapped into reserved virtual ranges, with exact contents through
the mappings.  Answers and error codes follow what a real H200 gave for the same calls
(tests/data/h200_driver_facts.txt).

A mixin of CudaService; physical memory lives in the GPU's DeviceMemory as an allocation of
its own, and a mapping shows it at a virtual address (vgpu.device.memory.Mapping).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vgpu.api.manifest import load
from vgpu.device.gpu import Gpu, OutOfMemory
from vgpu.device.memory import InvalidAddress, Mapping, OutOfBacking
from vgpu.server.dispatch import Caller
from vgpu.server.state import Session

C = load("cuda").constants
SUCCESS = C["CUDA_SUCCESS"]
INVALID_VALUE = C["CUDA_ERROR_INVALID_VALUE"]
#: the allocation granularity of every simulated GPU, minimum and recommended (as on an H200)
GRANULARITY = 2 << 20


@dataclass
class PhysicalAllocation:
    handle: int
    owner: int
    gpu: Gpu
    address: int  # where its bytes live in the GPU's memory
    size: int
    #: references: the handle itself until cuMemRelease, and one per retain
    references: int = 1
    mappings: int = 0
    #: CUmemAllocationHandleType bits requested at cuMemCreate (what it may be exported as)
    handle_types: int = 0
    #: the process whose memory this is: the owner, or the exporter of an imported handle
    creator: int = -1
    #: exported to a shareable handle: the memory stays while the exporting process lives
    exported: bool = False


class VirtualMemory:
    """cuMem{AddressReserve,AddressFree,Create,Release,Map,Unmap,SetAccess,GetAccess,...}."""

    def _init_vmm(self) -> None:
        self.physical: dict[int, PhysicalAllocation] = {}

    def _forget_vmm(self, session: Session) -> None:
        for physical in [p for p in self.physical.values() if p.owner == session.id]:
            physical.references, physical.mappings, physical.exported = 0, 0, False
            self._free_when_unused(physical)  # memory imported by others stays until they let it go
        for gpu in self.state.gpus:
            gpu.memory.forget_virtual(session.id)

    def _location_gpu(self, c: Caller, location: Any) -> Gpu | None:
        if location is None or location.type != C["CU_MEM_LOCATION_TYPE_DEVICE"]:
            return None
        return self._gpu(c, location.id)

    def cuMemGetAllocationGranularity(self, c: Caller, granularity: Any, prop: Any, option: int) -> int:
        if prop is None or self._location_gpu(c, prop.location) is None or option not in (0, 1):
            return INVALID_VALUE
        granularity.value = GRANULARITY
        return SUCCESS

    def cuMemAddressReserve(self, c: Caller, ptr: Any, size: int, alignment: int, addr: int, flags: int) -> int:
        if not size or size % GRANULARITY or (alignment and alignment & (alignment - 1)) or flags:
            return INVALID_VALUE
        gpu, rc = self._context_gpu(c)
        if gpu is None:
            return rc
        ptr.value = gpu.memory.reserve(c.session.id, size, alignment)
        return SUCCESS

    def cuMemAddressFree(self, c: Caller, ptr: int, size: int) -> int:
        gpu = self._gpu_of_address(ptr)
        if gpu is None:
            return INVALID_VALUE
        try:
            gpu.memory.unreserve(c.session.id, ptr, size)
        except InvalidAddress:
            return INVALID_VALUE
        return SUCCESS

    def cuMemCreate(self, c: Caller, handle: Any, size: int, prop: Any, flags: int) -> int:
        if prop is None or prop.type != C["CU_MEM_ALLOCATION_TYPE_PINNED"] or not size or size % GRANULARITY:
            return INVALID_VALUE
        gpu = self._location_gpu(c, prop.location)
        if gpu is None:
            return INVALID_VALUE if prop.location.type != C["CU_MEM_LOCATION_TYPE_DEVICE"] else C[
                "CUDA_ERROR_INVALID_DEVICE"]
        try:
            gpu.hold(c.session.id, size, cuda=True)
        except OutOfMemory:
            return C["CUDA_ERROR_OUT_OF_MEMORY"]
        try:
            backing = gpu.memory.allocate(c.session.id, size)
        except OutOfBacking:
            gpu.release(c.session.id, size)
            return C["CUDA_ERROR_OUT_OF_MEMORY"]
        physical = PhysicalAllocation(next(self._ids), c.session.id, gpu, backing.address, size,
                                      handle_types=prop.requestedHandleTypes, creator=c.session.id)
        self.physical[physical.handle] = physical
        handle.value = physical.handle
        return SUCCESS

    def _free_when_unused(self, physical: PhysicalAllocation) -> None:
        """Drop a handle once no reference, mapping or export holds it, and free the memory
        once no handle of any process (imported ones included) names it."""
        if physical.references > 0 or physical.mappings or physical.exported:
            return
        del self.physical[physical.handle]
        others = [p for p in self.physical.values() if p.gpu is physical.gpu and p.address == physical.address]
        if physical.owner != physical.creator and not any(p.owner == physical.owner for p in others):
            physical.gpu.memory.revoke(physical.address, physical.owner)  # an importer's last handle
        allocation = physical.gpu.memory.allocation_at(physical.address)
        if not others and allocation is not None and allocation.owner == physical.creator:
            physical.gpu.memory.free(physical.creator, physical.address)
            physical.gpu.release(physical.creator, physical.size)

    def _own_physical(self, c: Caller, handle: int) -> PhysicalAllocation | None:
        found = self.physical.get(handle)
        return found if found is not None and found.owner == c.session.id and found.references > 0 else None

    def cuMemRelease(self, c: Caller, handle: int) -> int:
        """Give up the handle; the memory stays while mappings show it (as on a real driver)."""
        physical = self._own_physical(c, handle)
        if physical is None:
            return INVALID_VALUE
        physical.references -= 1
        self._free_when_unused(physical)
        return SUCCESS

    def cuMemMap(self, c: Caller, ptr: int, size: int, offset: int, handle: int, flags: int) -> int:
        physical = self._own_physical(c, handle)
        if physical is None or flags or not size or size % GRANULARITY or ptr % GRANULARITY or \
                offset % GRANULARITY or offset + size > physical.size:
            return INVALID_VALUE
        gpu = self._gpu_of_address(ptr)
        if gpu is None:
            return INVALID_VALUE
        try:
            gpu.memory.map(Mapping(ptr, size, c.session.id, physical.address + offset, handle))
        except InvalidAddress:
            return INVALID_VALUE
        physical.mappings += 1
        return SUCCESS

    def cuMemUnmap(self, c: Caller, ptr: int, size: int) -> int:
        gpu = self._gpu_of_address(ptr)
        if gpu is None:
            return INVALID_VALUE
        try:
            removed = gpu.memory.unmap(c.session.id, ptr, size)
        except InvalidAddress:
            return INVALID_VALUE
        for mapping in removed:
            physical = self.physical.get(mapping.handle)
            if physical is not None:
                physical.mappings -= 1
                self._free_when_unused(physical)
        return SUCCESS

    def cuMemSetAccess(self, c: Caller, ptr: int, size: int, desc: Any, count: int) -> int:
        gpu = self._gpu_of_address(ptr)
        if gpu is None or not count or desc is None:
            return INVALID_VALUE
        flags = 0
        for entry in desc:
            if self._location_gpu(c, entry.location) is None:
                return INVALID_VALUE
            flags = entry.flags
        covered = [m for m in gpu.memory.mappings.values() if m.address < ptr + size and ptr < m.end]
        if not covered or sum(min(m.end, ptr + size) - max(m.address, ptr) for m in covered) != size:
            return INVALID_VALUE  # the whole range must be mapped
        for mapping in covered:
            mapping.access = flags
        gpu.memory.changed()
        return SUCCESS

    def cuMemGetAccess(self, c: Caller, flags: Any, location: Any, ptr: int) -> int:
        gpu = self._gpu_of_address(ptr)
        mapping = gpu.memory.mapping_at(ptr) if gpu is not None else None
        if mapping is None or mapping.owner != c.session.id or self._location_gpu(c, location) is None:
            return INVALID_VALUE
        flags.value = mapping.access
        return SUCCESS

    def cuMemGetAllocationPropertiesFromHandle(self, c: Caller, prop: Any, handle: int) -> int:
        physical = self._own_physical(c, handle)
        if physical is None:
            return INVALID_VALUE
        prop.type = C["CU_MEM_ALLOCATION_TYPE_PINNED"]
        prop.requestedHandleTypes = physical.handle_types
        prop.location.type = C["CU_MEM_LOCATION_TYPE_DEVICE"]
        visible = self._visible(c)
        prop.location.id = visible.index(physical.gpu.index) if physical.gpu.index in visible else -1
        return SUCCESS

    def cuMemRetainAllocationHandle(self, c: Caller, handle: Any, addr: int) -> int:
        gpu = self._gpu_of_address(addr)
        mapping = gpu.memory.mapping_at(addr) if gpu is not None else None
        if mapping is None or mapping.owner != c.session.id or mapping.handle not in self.physical:
            return INVALID_VALUE
        self.physical[mapping.handle].references += 1
        handle.value = mapping.handle
        return SUCCESS
