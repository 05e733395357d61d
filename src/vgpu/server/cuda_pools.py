"""Memory pools beyond each device's default one (cuMemPoolCreate and friends), and the legacy
v1 entry points of the memory API (cuMemAlloc, cuMemGetInfo, ... with 32-bit pointers and sizes).

A mixin of CudaService. A created pool belongs to one device; its allocations are ordinary
device memory made at once (as the default pool's are), recorded in the pool so its attributes
count them. Each process has a current pool per device (cuDeviceSetMemPool), which
cuMemAllocAsync allocates from.

The v1 names follow the rule in docs/cuda.md ("Legacy v1 entry points"): 32-bit values in
and out, sizes saturated at 4 GiB - 1, allocations placed below 4 GiB so their addresses fit.
"""

from __future__ import annotations

from typing import Any

from vgpu.api.manifest import load
from vgpu.device.gpu import Gpu
from vgpu.server.dispatch import Caller
from vgpu.server.state import Session

C = load("cuda").constants
SUCCESS = C["CUDA_SUCCESS"]
INVALID_VALUE = C["CUDA_ERROR_INVALID_VALUE"]
NOT_SUPPORTED = C["CUDA_ERROR_NOT_SUPPORTED"]
DEVICE = C["CU_MEM_LOCATION_TYPE_DEVICE"]
PINNED = C["CU_MEM_ALLOCATION_TYPE_PINNED"]
ACCESS_FLAGS = (C["CU_MEM_ACCESS_FLAGS_PROT_NONE"], C["CU_MEM_ACCESS_FLAGS_PROT_READ"],
                C["CU_MEM_ACCESS_FLAGS_PROT_READWRITE"])
READWRITE = C["CU_MEM_ACCESS_FLAGS_PROT_READWRITE"]
#: handle types a pool may be made shareable with on Linux (none, a POSIX fd, fabric)
POOL_HANDLE_TYPES = C["CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR"] | C["CU_MEM_HANDLE_TYPE_FABRIC"]
UINT_MAX = 0xFFFF_FFFF


class MemoryPools:
    """cuMemPool{Create,Destroy,SetAccess,GetAccess}, cuMemAllocFromPoolAsync, the current pool
    (cuDeviceSetMemPool, cuMem{Get,Set}MemPool, cuMemGetDefaultMemPool), and the v1 names."""

    def _init_pools(self) -> None:
        #: (process, GPU index) -> the pool cuMemAllocAsync uses, where not the default one
        self.current_pools: dict[tuple[int, int], Any] = {}

    def _forget_pools(self, session: Session) -> None:
        for key in [k for k in self.current_pools if k[0] == session.id]:
            del self.current_pools[key]

    # the pools themselves -----------------------------------------------------------------
    def cuMemPoolCreate(self, c: Caller, pool: Any, poolProps: Any) -> int:
        from vgpu.server.cuda_service import MemoryPool  # the service module imports this one

        props = poolProps
        if props is None or props.allocType != PINNED or props.handleTypes & ~POOL_HANDLE_TYPES:
            return INVALID_VALUE
        if props.location.type != DEVICE:
            return NOT_SUPPORTED  # host and managed pools: not modelled (docs/cuda.md)
        gpu = self._gpu(c, props.location.id)
        if gpu is None:
            return INVALID_VALUE
        created = MemoryPool(next(self._ids), c.session.id, gpu, created=True, handle_types=props.handleTypes)
        created.settings[C["CU_MEMPOOL_ATTR_RELEASE_THRESHOLD"]] = 0
        self.pool_ids[created.id] = created
        pool.value = created
        return SUCCESS

    def cuMemPoolDestroy(self, c: Caller, pool: Any) -> int:
        """A default pool cannot be destroyed; a created one goes at once, its live allocations
        stay valid until freed (as cuda.h says), and a device using it as current falls back
        to its default pool."""
        if not pool.created:
            return INVALID_VALUE
        self.pool_ids.pop(pool.id, None)
        for key in [k for k, v in self.current_pools.items() if v is pool]:
            del self.current_pools[key]
        return SUCCESS

    def cuMemPoolSetAccess(self, c: Caller, pool: Any, map: Any, count: int) -> int:
        descriptors = list(map or [])[:count]
        changes = {}
        for desc in descriptors:
            gpu = self._gpu(c, desc.location.id) if desc.location.type == DEVICE else None
            if gpu is None or desc.flags not in ACCESS_FLAGS:
                return INVALID_VALUE
            if gpu is pool.gpu and desc.flags != READWRITE:
                return INVALID_VALUE  # the pool's own device always reads and writes it
            changes[gpu.index] = desc.flags
        pool.access.update(changes)
        return SUCCESS

    def cuMemPoolGetAccess(self, c: Caller, flags: Any, memPool: Any, location: Any) -> int:
        gpu = self._gpu(c, location.id) if location is not None and location.type == DEVICE else None
        if gpu is None:
            return INVALID_VALUE
        flags.value = READWRITE if gpu is memPool.gpu else memPool.access.get(gpu.index, 0)
        return SUCCESS

    def cuMemAllocFromPoolAsync(self, c: Caller, dptr: Any, bytesize: int, pool: Any, hStream: Any) -> int:
        """Memory from ``pool``'s device, whatever the stream's: it exists at once."""
        if hStream is None:  # the default stream, with no current context
            return self._context_gpu(c)[1]
        if pool.imported_from is not None:
            return INVALID_VALUE  # cuda.h: an imported pool makes no allocations
        rc = self._allocate_on(c, pool.gpu, dptr, bytesize)
        if rc == SUCCESS:
            self._pool_allocated(pool, dptr.value, bytesize)
            hStream.queue(self.host_time.get(c.session.id, 0.0), 0.0)  # an allocation takes no time
        return rc

    cuMemAllocFromPoolAsync_ptsz = cuMemAllocFromPoolAsync

    def _pool_allocated(self, pool: Any, address: int, size: int) -> None:
        if pool.created:
            pool.allocations[address] = size

    def _pool_freed(self, c: Caller, address: int) -> None:
        for pool in self.pool_ids.values():
            if pool.owner == c.session.id and pool.allocations.pop(address, None) is not None:
                return

    def _allocate_from_current_pool(self, c: Caller, dptr: Any, bytesize: int) -> int:
        gpu, rc = self._context_gpu(c)
        if gpu is None:
            return rc
        rc = self._allocate_on(c, gpu, dptr, bytesize)
        current = self.current_pools.get((c.session.id, gpu.index))
        if rc == SUCCESS and current is not None:
            self._pool_allocated(current, dptr.value, bytesize)
        return rc

    # the current pool of a device ----------------------------------------------------------
    def _current_pool(self, c: Caller, gpu: Gpu) -> Any:
        return self.current_pools.get((c.session.id, gpu.index)) or self._pool(c, gpu)

    def cuDeviceGetMemPool(self, c: Caller, pool: Any, dev: int) -> int:
        gpu, rc = self._device_call(c, dev)
        if gpu is not None:
            pool.value = self._current_pool(c, gpu)
        return rc

    def cuDeviceSetMemPool(self, c: Caller, dev: int, pool: Any) -> int:
        gpu, rc = self._device_call(c, dev)
        if gpu is None:
            return rc
        if pool.gpu is not gpu or pool.imported_from is not None:
            return INVALID_VALUE  # a pool serves the device it was made for; an imported one none
        key = (c.session.id, gpu.index)
        if pool.created:
            self.current_pools[key] = pool
        else:
            self.current_pools.pop(key, None)
        return SUCCESS

    def _pinned_device(self, c: Caller, location: Any, allocation_type: int) -> tuple[Gpu | None, int]:
        """The GPU a (location, allocation type) pair names, or the code for one vgpu refuses."""
        if location is None or allocation_type not in (PINNED, C["CU_MEM_ALLOCATION_TYPE_MANAGED"]):
            return None, INVALID_VALUE
        if location.type != DEVICE or allocation_type != PINNED:
            return None, NOT_SUPPORTED  # host and managed pools: not modelled (docs/cuda.md)
        gpu = self._gpu(c, location.id)
        return gpu, SUCCESS if gpu is not None else C["CUDA_ERROR_INVALID_DEVICE"]

    def cuMemGetDefaultMemPool(self, c: Caller, pool_out: Any, location: Any, type: int) -> int:
        gpu, rc = self._pinned_device(c, location, type)
        if gpu is not None:
            pool_out.value = self._pool(c, gpu)
        return rc

    def cuMemGetMemPool(self, c: Caller, pool: Any, location: Any, type: int) -> int:
        gpu, rc = self._pinned_device(c, location, type)
        if gpu is not None:
            pool.value = self._current_pool(c, gpu)
        return rc

    def cuMemSetMemPool(self, c: Caller, location: Any, type: int, pool: Any) -> int:
        gpu, rc = self._pinned_device(c, location, type)
        if gpu is None:
            return rc
        return self.cuDeviceSetMemPool(c, self._visible(c).index(gpu.index), pool)

    # legacy v1 entry points that allocate: below 4 GiB ------------------------------------
    def cuMemAlloc(self, c: Caller, dptr: Any, bytesize: int) -> int:
        gpu, rc = self._context_gpu(c)
        if gpu is None:
            return rc
        wide = _Out()
        rc = self._allocate_on(c, gpu, wide, bytesize, legacy=True)
        if rc == SUCCESS:
            dptr.value = wide.value
        return rc

    def cuMemAllocPitch(self, c: Caller, dptr: Any, pPitch: Any, WidthInBytes: int, Height: int,
                        ElementSizeBytes: int) -> int:
        from vgpu.server.cuda_service import PITCH_ALIGNMENT

        if ElementSizeBytes not in (4, 8, 16) or not WidthInBytes or not Height:
            return INVALID_VALUE
        pitch = -(-WidthInBytes // PITCH_ALIGNMENT) * PITCH_ALIGNMENT
        if pitch * Height > UINT_MAX:
            return INVALID_VALUE
        rc = self.cuMemAlloc(c, dptr, pitch * Height)
        if rc == SUCCESS:
            pPitch.value = pitch
        return rc

    def cuMemGetAddressRange(self, c: Caller, pbase: Any, psize: Any, dptr: int) -> int:
        base, size = _Out(), _Out()
        rc = self.cuMemGetAddressRange_v2(c, base, size, dptr)
        if rc != SUCCESS:
            return rc
        if base.value > UINT_MAX:
            return INVALID_VALUE  # a 64-bit allocation has no 32-bit base to report
        if pbase is not None:
            pbase.value = base.value
        if psize is not None:
            psize.value = min(size.value, UINT_MAX)
        return SUCCESS


class LegacyNames:
    """The v1 names that are their _v2 counterpart with 32-bit values: served by both backends."""

    def cuDeviceTotalMem(self, c: Caller, bytes: Any, dev: int) -> int:
        wide = _Out()
        rc = self.cuDeviceTotalMem_v2(c, wide, dev)
        if rc == SUCCESS:
            bytes.value = min(wide.value, UINT_MAX)
        return rc

    def cuMemGetInfo(self, c: Caller, free: Any, total: Any) -> int:
        wide_free, wide_total = _Out(), _Out()
        rc = self.cuMemGetInfo_v2(c, wide_free, wide_total)
        if rc == SUCCESS:
            free.value, total.value = min(wide_free.value, UINT_MAX), min(wide_total.value, UINT_MAX)
        return rc

    def cuMemFree(self, c: Caller, dptr: int) -> int:
        return self.cuMemFree_v2(c, dptr)

    def cuMemsetD8(self, c: Caller, dstDevice: int, uc: int, N: int) -> int:
        return self.cuMemsetD8_v2(c, dstDevice, uc, N)

    def cuMemsetD16(self, c: Caller, dstDevice: int, us: int, N: int) -> int:
        return self.cuMemsetD16_v2(c, dstDevice, us, N)

    def cuMemsetD32(self, c: Caller, dstDevice: int, ui: int, N: int) -> int:
        return self.cuMemsetD32_v2(c, dstDevice, ui, N)

    def cuStreamDestroy(self, c: Caller, hStream: Any) -> int:
        return self.cuStreamDestroy_v2(c, hStream)

    def cuEventDestroy(self, c: Caller, hEvent: Any) -> int:
        return self.cuEventDestroy_v2(c, hEvent)


class _Out:
    """An output the v1 names hand to their _v2 counterparts, then narrow."""

    value: int = 0
