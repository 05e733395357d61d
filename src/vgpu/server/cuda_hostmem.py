"""Host memory on the device side: page-locked windows named as device pointers, and managed
memory.

With unified addressing a real driver accepts page-locked host memory (cuMemHostAlloc, with
or without DEVICEMAP, whose cuMemHostGetDevicePointer is the host address itself) wherever a
device pointer is expected, and managed memory (cuMemAllocManaged) is one address that the host
and the device both use. Here both are shared windows (vgpu.server.windows): memory the client
maps from a file that vgpud maps too. Every device-side access resolves its addresses through
``CudaService._access``: device memory of a GPU, or else one of the calling process's own
windows, whose mapping it reads and writes. Another process's windows are not its own, so their
addresses are invalid to it, as they are to a real driver.

Managed memory is accounted as a GPU without HMM accounts it: nothing is taken from the device
when it is allocated (it may exceed the device's memory); pages count against a device while they
reside there, which here is after cuMemPrefetchAsync moved them there, until they are prefetched
elsewhere or freed. Prefetching more than the device has free moves what fits; the rest stays on
the host (a real driver evicts other pages instead).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from vgpu.api.manifest import load
from vgpu.device.gpu import Gpu, OutOfMemory
from vgpu.device.memory import Allocation, DeviceMemory, InvalidAddress
from vgpu.server.dispatch import Caller
from vgpu.server.windows import RemoteBuffer, Window, Windows

C = load("cuda").constants
#: the shim's id of a device's primary context (native/cuda/cuda_shim.c)
PRIMARY_CONTEXT = 1 << 32
#: the granularity at which managed pages move between the host and the devices
RESIDENCY_PAGE = 64 << 10
#: cuda.h's CU_DEVICE_CPU and CU_DEVICE_INVALID
DEVICE_CPU = -1
DEVICE_INVALID = -2
#: a location: a GPU's index in the daemon, or DEVICE_CPU (the host)
HOST = DEVICE_CPU


class WindowMemory:
    """A process's shared windows and registered memory with DeviceMemory's accessors, so that
    copies and memsets treat their addresses as they treat device memory."""

    def __init__(self, windows: Windows | None) -> None:
        self.windows = windows

    def _view(self, address: int, length: int) -> memoryview:
        view = self.windows.view(address, length) if self.windows is not None else None
        if view is None:
            raise InvalidAddress(f"[0x{address:x}, +{length}) is outside this process's memory")
        return view

    def _registered(self, address: int, length: int, writing: bool) -> RemoteBuffer | None:
        """Registered memory holding the range (None for a window); refused where it is read-only
        and is written."""
        found = self.windows.registration(address, length) if self.windows is not None else None
        if found is not None and writing and found.read_only:
            raise InvalidAddress(f"[0x{address:x}, +{length}) was registered read-only")
        return found.remote(self.windows.pid, address, length) if found is not None else None

    @staticmethod
    def _reach(transfer: Any, views: list[memoryview]) -> None:
        """A transfer with the client's registered memory; memory it unmapped is no one's."""
        try:
            transfer(views)
        except OSError as error:
            raise InvalidAddress(str(error)) from None

    def read(self, owner: int, address: int, length: int, into: Any = None) -> Any:
        remote = self._registered(address, length, writing=False)
        if remote is not None:
            view = memoryview(bytearray(length))
            self._reach(remote.copy_to, [view])
        else:
            view = self._view(address, length)
        if into is None:
            return bytes(view)  # a copy: the client may change the window at any moment
        if hasattr(into, "copy_from"):
            into.copy_from([view])
        else:
            memoryview(into).cast("B")[:length] = view
        return into

    def write(self, owner: int, address: int, data: Any) -> None:
        remote = self._registered(address, len(data), writing=True)
        view = memoryview(bytearray(len(data))) if remote is not None else self._view(address, len(data))
        if hasattr(data, "copy_to"):
            data.copy_to([view])
        else:
            view[:] = memoryview(data).cast("B")
        if remote is not None:
            self._reach(remote.copy_from, [view])

    def fill(self, owner: int, address: int, pattern: bytes, count: int) -> None:
        length = len(pattern) * count
        remote = self._registered(address, length, writing=True)
        block = pattern * max(1, (1 << 20) // len(pattern))
        if remote is not None:
            writable = memoryview(bytearray(block))  # process_vm_writev takes a writable buffer's address
            for start in range(0, length, len(block)):
                piece = writable[:min(len(block), length - start)]
                self._reach(RemoteBuffer(remote.pid, address + start, len(piece)).copy_from, [piece])
            return
        view = self._view(address, length)
        for start in range(0, len(view), len(block)):
            piece = view[start:start + len(block)]
            piece[:] = block[:len(piece)]


class AddressSpace:
    """What one call's device-side addresses name: one GPU's device memory, or the calling
    process's windows; the accessors of both, chosen by address."""

    def __init__(self, device: DeviceMemory | None, windows: WindowMemory) -> None:
        self.device, self.windows = device, windows

    def _at(self, address: int) -> DeviceMemory | WindowMemory:
        return self.device if self.device is not None and self.device.owns(address) else self.windows

    def read(self, owner: int, address: int, length: int, into: Any = None) -> Any:
        return self._at(address).read(owner, address, length, into)

    def write(self, owner: int, address: int, data: Any) -> None:
        self._at(address).write(owner, address, data)

    def fill(self, owner: int, address: int, pattern: bytes, count: int) -> None:
        self._at(address).fill(owner, address, pattern, count)

    def copy(self, owner: int, destination: int, source: int, length: int) -> None:
        self._at(destination).write(owner, destination, self._at(source).read(owner, source, length))


class RangeMap:
    """A value for every byte of [0, size), set on ranges and read as the pieces of a range."""

    def __init__(self, size: int, value: Any) -> None:
        self.size = size
        self._starts: list[int] = [0]
        self._values: list[Any] = [value]

    def _boundary(self, at: int) -> int:
        """The index of the piece starting at ``at``, splitting a piece there if needed."""
        if at >= self.size:
            return len(self._starts)
        index = bisect.bisect_right(self._starts, at) - 1
        if self._starts[index] != at:
            index += 1
            self._starts.insert(index, at)
            self._values.insert(index, self._values[index - 1])
        return index

    def set(self, start: int, end: int, value: Any) -> None:
        first, last = self._boundary(start), self._boundary(end)
        self._starts[first:last] = [start]
        self._values[first:last] = [value]

    def pieces(self, start: int, end: int) -> list[tuple[int, int, Any]]:
        found = []
        index = bisect.bisect_right(self._starts, start) - 1
        while index < len(self._starts) and self._starts[index] < end:
            stop = self._starts[index + 1] if index + 1 < len(self._starts) else self.size
            found.append((max(start, self._starts[index]), min(end, stop), self._values[index]))
            index += 1
        return found

    def values(self, start: int, end: int) -> set[Any]:
        return {value for _, _, value in self.pieces(start, end)}


@dataclass
class Managed:
    """A managed allocation (the window's ``managed``): the GPU it was made on, its attach
    flags, and per range where its pages are and the advice given."""

    gpu: int
    size: int
    attach: int
    location: RangeMap = field(init=False)
    read_mostly: RangeMap = field(init=False)
    preferred: RangeMap = field(init=False)
    accessed_by: RangeMap = field(init=False)
    last_prefetch: RangeMap = field(init=False)

    def __post_init__(self) -> None:
        # whole pages reside on a device: the last one counts whole
        self.location = RangeMap(-(-self.size // RESIDENCY_PAGE) * RESIDENCY_PAGE, HOST)
        self.read_mostly = RangeMap(self.size, False)
        self.preferred = RangeMap(self.size, DEVICE_INVALID)
        self.accessed_by = RangeMap(self.size, frozenset())
        self.last_prefetch = RangeMap(self.size, DEVICE_INVALID)


class HostMemoryServing:
    """CudaService's part for managed memory and window addresses (a mixin: it uses the
    service's devices, streams and the cost model)."""

    state: Any

    # resolution ---------------------------------------------------------------------------
    def _address_space(self, c: Caller, addresses: tuple[int, ...]) -> tuple[Gpu | None, AddressSpace | None]:
        """The GPU and memory that device-side addresses name: all on one GPU, or in the
        caller's own windows (then the GPU is the current context's); (None, None) for an
        address that is neither."""
        gpus = [self._gpu_of_address(address) for address in addresses]
        devices = list({id(gpu): gpu for gpu in gpus if gpu is not None}.values())
        windows = c.session.windows
        if len(devices) > 1 or any(gpu is None and (windows is None or (
                windows.find(address) is None and windows.registration(address) is None))
                                   for gpu, address in zip(gpus, addresses)):
            return None, None
        gpu = devices[0] if devices else None
        if gpu is None:
            gpu = self._context_gpu(c)[0]
            if gpu is None:
                return None, None
        return gpu, AddressSpace(gpu.memory if devices else None, WindowMemory(windows))

    def _managed_at(self, c: Caller, address: int, length: int = 1) -> tuple[Window | None, Managed | None]:
        window = c.session.windows.find(address, length) if c.session.windows is not None else None
        return (window, window.managed) if window is not None and window.managed is not None else (None, None)

    def _managed_allocation(self, c: Caller, address: int) -> tuple[Gpu | None, Allocation | None]:
        """A managed allocation around an address, as _allocation_at answers for device memory."""
        window, managed = self._managed_at(c, address)
        if managed is None or address >= window.address + managed.size:
            return None, None
        return self.state.gpus[managed.gpu], Allocation(window.address, managed.size, c.session.id)

    # registered memory ------------------------------------------------------------------------
    def cuMemHostRegister_v2(self, c: Caller, p: int, bytesize: int, Flags: int) -> int:
        """The shim has registered [p, p + bytesize): where vgpud reaches the client's memory it
        becomes device-side memory of this process (else it stays host memory only)."""
        known = sum(value for name, value in C.items() if name.startswith("CU_MEMHOSTREGISTER_"))
        if not p or not bytesize or Flags & ~known:
            return C["CUDA_ERROR_INVALID_VALUE"]
        if c.session.windows is not None:
            c.session.windows.register(p, bytesize, bool(Flags & C["CU_MEMHOSTREGISTER_READ_ONLY"]))
        return C["CUDA_SUCCESS"]

    def cuMemHostUnregister(self, c: Caller, p: int) -> int:
        if c.session.windows is not None:
            c.session.windows.unregister(p)
        return C["CUDA_SUCCESS"]

    # allocation ---------------------------------------------------------------------------
    def cuMemAllocManaged(self, c: Caller, dptr: Any, bytesize: int, flags: int) -> int:
        """The shim has made and shared a window of ``bytesize`` bytes and names it in ``*dptr``:
        it becomes managed memory of the current context's device."""
        gpu, rc = self._context_gpu(c)
        if gpu is None:
            return rc
        if bytesize == 0 or flags not in (C["CU_MEM_ATTACH_GLOBAL"], C["CU_MEM_ATTACH_HOST"]):
            return C["CUDA_ERROR_INVALID_VALUE"]
        windows = c.session.windows
        window = windows.find(dptr.value, bytesize) if windows is not None else None
        if window is None or window.address != dptr.value or window.managed is not None:
            return C["CUDA_ERROR_INVALID_VALUE"]  # not a window this process just shared
        window.managed = Managed(gpu.index, bytesize, flags)
        return C["CUDA_SUCCESS"]

    def _free_managed(self, c: Caller, dptr: int) -> int | None:
        """cuMemFree of managed memory (None when ``dptr`` is not managed): its resident pages
        are given back; the shim then unmaps the window."""
        window, managed = self._managed_at(c, dptr)
        if managed is None:
            return None
        if window.address != dptr:
            return C["CUDA_ERROR_INVALID_VALUE"]
        self._move_pages(c, managed, 0, managed.location.size, HOST)
        window.managed = None
        return C["CUDA_SUCCESS"]

    def _move_pages(self, c: Caller, managed: Managed, start: int, end: int, to: int) -> int:
        """Make [start, end) of an allocation reside at ``to`` (what fits on a device): the
        bytes that moved."""
        moved = 0
        for piece_start, piece_end, at in managed.location.pieces(start, end):
            if at == to:
                continue
            size = piece_end - piece_start
            if to != HOST:
                try:
                    self.state.gpus[to].hold(c.session.id, size, cuda=True)
                except OutOfMemory:
                    continue  # stays where it is
            if at != HOST:
                self.state.gpus[at].release(c.session.id, size)
            managed.location.set(piece_start, piece_end, to)
            moved += size
        return moved

    # prefetch, advice, attributes -----------------------------------------------------------
    def _location(self, c: Caller, device: int) -> int | None:
        """A CUdevice as a location (CU_DEVICE_CPU is the host); None for an unknown device."""
        if device == DEVICE_CPU:
            return HOST
        gpu = self._gpu(c, device)
        return gpu.index if gpu is not None else None

    def _mem_location(self, c: Caller, location: Any) -> int | None:
        kind = location.type
        if kind == C["CU_MEM_LOCATION_TYPE_DEVICE"]:
            return self._location(c, location.id) if location.id != DEVICE_CPU else None
        if kind in (C["CU_MEM_LOCATION_TYPE_HOST"], C["CU_MEM_LOCATION_TYPE_HOST_NUMA"],
                    C["CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT"]):
            return HOST
        return None

    def _ordinal(self, c: Caller, location: int) -> int:
        """A location as the caller's CUdevice (CU_DEVICE_CPU for the host)."""
        if location in (HOST, DEVICE_INVALID):
            return location
        visible = self._visible(c)
        return visible.index(location) if location in visible else DEVICE_INVALID

    def _prefetch(self, c: Caller, devPtr: int, count: int, to: int | None, flags: int, hStream: Any) -> int:
        window, managed = self._managed_at(c, devPtr, count)
        if managed is None or count == 0 or flags:
            return C["CUDA_ERROR_INVALID_VALUE"]
        if to is None:
            return C["CUDA_ERROR_INVALID_DEVICE"]
        offset = devPtr - window.address
        start = offset // RESIDENCY_PAGE * RESIDENCY_PAGE
        end = -(-(offset + count) // RESIDENCY_PAGE) * RESIDENCY_PAGE
        moved = self._move_pages(c, managed, start, end, to)
        managed.last_prefetch.set(offset, offset + count, to)
        stream = hStream if hStream is not None else self._default_stream(c)
        gpu = self.state.gpus[managed.gpu if to == HOST else to]
        stream.queue(self.host_time.get(c.session.id, 0.0), self._pcie_seconds(gpu, moved))
        return C["CUDA_SUCCESS"]

    def cuMemPrefetchAsync(self, c: Caller, devPtr: int, count: int, dstDevice: int, hStream: Any) -> int:
        return self._prefetch(c, devPtr, count, self._location(c, dstDevice), 0, hStream)

    def cuMemPrefetchAsync_v2(self, c: Caller, devPtr: int, count: int, location: Any, flags: int,
                              hStream: Any) -> int:
        return self._prefetch(c, devPtr, count, self._mem_location(c, location), flags, hStream)

    def _advise(self, c: Caller, devPtr: int, count: int, advice: int, where: int | None) -> int:
        window, managed = self._managed_at(c, devPtr, count)
        if managed is None or count == 0:
            return C["CUDA_ERROR_INVALID_VALUE"]
        start, end = devPtr - window.address, devPtr - window.address + count
        a = {name.removeprefix("CU_MEM_ADVISE_"): value for name, value in C.items()
             if name.startswith("CU_MEM_ADVISE_")}
        if advice in (a["SET_READ_MOSTLY"], a["UNSET_READ_MOSTLY"]):
            managed.read_mostly.set(start, end, advice == a["SET_READ_MOSTLY"])
        elif advice == a["UNSET_PREFERRED_LOCATION"]:
            managed.preferred.set(start, end, DEVICE_INVALID)
        elif advice in (a["SET_PREFERRED_LOCATION"], a["SET_ACCESSED_BY"], a["UNSET_ACCESSED_BY"]):
            if where is None:
                return C["CUDA_ERROR_INVALID_DEVICE"]
            if advice == a["SET_PREFERRED_LOCATION"]:
                managed.preferred.set(start, end, where)
            else:
                for piece_start, piece_end, devices in managed.accessed_by.pieces(start, end):
                    changed = devices | {where} if advice == a["SET_ACCESSED_BY"] else devices - {where}
                    managed.accessed_by.set(piece_start, piece_end, frozenset(changed))
        else:
            return C["CUDA_ERROR_INVALID_VALUE"]
        return C["CUDA_SUCCESS"]

    def cuMemAdvise(self, c: Caller, devPtr: int, count: int, advice: int, device: int) -> int:
        return self._advise(c, devPtr, count, advice, self._location(c, device))

    def cuMemAdvise_v2(self, c: Caller, devPtr: int, count: int, advice: int, location: Any) -> int:
        return self._advise(c, devPtr, count, advice, self._mem_location(c, location))

    def cuMemRangeGetAttribute(self, c: Caller, data: Any, dataSize: int, attribute: int, devPtr: int,
                               count: int) -> int:
        """One attribute of a managed range: a value holds for the range only if it holds for
        every page of it (else CU_DEVICE_INVALID, or 0 for read-mostly)."""
        window, managed = self._managed_at(c, devPtr, count)
        if managed is None or count == 0 or data is None:
            return C["CUDA_ERROR_INVALID_VALUE"]
        start, end = devPtr - window.address, devPtr - window.address + count
        r = {name.removeprefix("CU_MEM_RANGE_ATTRIBUTE_"): value for name, value in C.items()
             if name.startswith("CU_MEM_RANGE_ATTRIBUTE_")}

        def single(table: RangeMap) -> int:
            found = table.values(start, end)
            return found.pop() if len(found) == 1 else DEVICE_INVALID

        if attribute == r["ACCESSED_BY"]:
            if dataSize % 4 or dataSize == 0:
                return C["CUDA_ERROR_INVALID_VALUE"]
            common = frozenset.intersection(*managed.accessed_by.values(start, end))
            devices = sorted(self._ordinal(c, where) for where in common)[:dataSize // 4]
            values = devices + [DEVICE_INVALID] * (dataSize // 4 - len(devices))
        else:
            if dataSize != 4:
                return C["CUDA_ERROR_INVALID_VALUE"]
            device_type, host_type = C["CU_MEM_LOCATION_TYPE_DEVICE"], C["CU_MEM_LOCATION_TYPE_HOST"]
            preferred, prefetched = single(managed.preferred), single(managed.last_prefetch)
            kinds = {DEVICE_INVALID: C["CU_MEM_LOCATION_TYPE_INVALID"], HOST: host_type}
            answers = {
                r["READ_MOSTLY"]: int(managed.read_mostly.values(start, end) == {True}),
                r["PREFERRED_LOCATION"]: self._ordinal(c, preferred),
                r["LAST_PREFETCH_LOCATION"]: self._ordinal(c, prefetched),
                r["PREFERRED_LOCATION_TYPE"]: kinds.get(preferred, device_type),
                r["PREFERRED_LOCATION_ID"]: self._ordinal(c, preferred),
                r["LAST_PREFETCH_LOCATION_TYPE"]: kinds.get(prefetched, device_type),
                r["LAST_PREFETCH_LOCATION_ID"]: self._ordinal(c, prefetched),
            }
            if attribute not in answers:
                return C["CUDA_ERROR_INVALID_VALUE"]
            values = [answers[attribute]]
        memoryview(data).cast("B")[:dataSize] = b"".join(v.to_bytes(4, "little", signed=True) for v in values)
        return C["CUDA_SUCCESS"]

    def cuStreamAttachMemAsync(self, c: Caller, hStream: Any, dptr: int, length: int, flags: int) -> int:
        window, managed = self._managed_at(c, dptr)
        attach = {C["CU_MEM_ATTACH_GLOBAL"], C["CU_MEM_ATTACH_HOST"], C["CU_MEM_ATTACH_SINGLE"]}
        if managed is None or window.address != dptr or length not in (0, managed.size) or flags not in attach:
            return C["CUDA_ERROR_INVALID_VALUE"]
        managed.attach = flags
        return C["CUDA_SUCCESS"]

    def _managed_pointer_attribute(self, c: Caller, data: Any, attribute: int, ptr: int) -> int | None:
        """cuPointerGetAttribute for managed memory (None when ``ptr`` is not managed)."""
        gpu, allocation = self._managed_allocation(c, ptr)
        if allocation is None:
            return None
        visible = self._visible(c)
        ordinal = visible.index(gpu.index) if gpu.index in visible else 0
        a = {name.removeprefix("CU_POINTER_ATTRIBUTE_"): value for name, value in C.items()
             if name.startswith("CU_POINTER_ATTRIBUTE_")}
        answers = {
            a["CONTEXT"]: PRIMARY_CONTEXT | ordinal, a["MEMORY_TYPE"]: C["CU_MEMORYTYPE_DEVICE"],
            a["DEVICE_POINTER"]: ptr, a["HOST_POINTER"]: ptr, a["SYNC_MEMOPS"]: 0,
            a["BUFFER_ID"]: allocation.address, a["IS_MANAGED"]: 1, a["DEVICE_ORDINAL"]: ordinal,
            a["IS_LEGACY_CUDA_IPC_CAPABLE"]: 0, a["RANGE_START_ADDR"]: allocation.address,
            a["RANGE_SIZE"]: allocation.size, a["MAPPED"]: 1, a["ALLOWED_HANDLE_TYPES"]: 0,
            a["IS_GPU_DIRECT_RDMA_CAPABLE"]: 0, a["ACCESS_FLAGS"]: a["ACCESS_FLAG_READWRITE"],
            a["MEMPOOL_HANDLE"]: 0, a["MAPPING_SIZE"]: allocation.size, a["MAPPING_BASE_ADDR"]: allocation.address,
            a["MEMORY_BLOCK_ID"]: allocation.address,
        }
        if attribute not in answers:
            return C["CUDA_ERROR_INVALID_VALUE"]
        data.value = answers[attribute]
        return C["CUDA_SUCCESS"]
