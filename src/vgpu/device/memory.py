"""A GPU's device memory: allocations in a unified address range, and their exact contents.

Each allocation's bytes live in a memfd of its own, as large as the allocation's footprint
and mapped once in vgpud: untouched pages cost nothing and read as zeros, and the process
that executes a client's kernels maps the same memfds at their device addresses
(``backing``), so kernels and copies see one memory.  Every access names its owner: a
session reaches only the allocations it made, and those another process shared with it
(CUDA IPC: grant and revoke).
"""

from __future__ import annotations

import bisect
import ctypes
import itertools
import mmap
import os
import threading
from dataclasses import dataclass
from typing import Any

#: where each GPU's allocations start: GPUs never share an address (unified addressing), nor
#: do the GPUs of simulators in different PCI domains (GPU hosts one relay joins)
BASE = 0x2000_0000_0000
SPAN = 1 << 38
#: address slots: 32 GPUs in each of 8 domains
SLOTS_PER_DOMAIN = 32
DOMAINS = 8
#: where every GPU's device addresses lie, all domains together
DEVICE_RANGE = (BASE, BASE + DOMAINS * SLOTS_PER_DOMAIN * SPAN)
SMALL_ALIGNMENT = 512
LARGE_ALIGNMENT = 2 << 20
#: allocations start on a host page of their own, so that each can be mapped by itself
#: wherever kernels run (a real driver packs small ones at 512 bytes)
HOST_PAGE = mmap.PAGESIZE
#: CU_MEM_ACCESS_FLAGS_PROT_READWRITE
ACCESS_READWRITE = 3

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_FAILED = ctypes.c_void_p(-1).value
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
FALLOC_FL_KEEP_SIZE = 0x1
FALLOC_FL_PUNCH_HOLE = 0x2


class OutOfBacking(MemoryError):
    """The host gave no memfd or mapping for an allocation (file descriptors or mappings ran
    out): the allocation fails as out of memory."""


class Store:
    """One allocation's bytes: a sparse memfd, mapped read-write in this process.  ``view`` is
    used under the DeviceMemory's lock only, so that ``close`` never unmaps memory in use."""

    _serials = itertools.count(1)

    def __init__(self, size: int) -> None:
        self.size = _round_up(max(size, 1), HOST_PAGE)
        try:
            self.fd = os.memfd_create("vgpu-device-memory", os.MFD_CLOEXEC)
        except OSError as error:
            raise OutOfBacking(f"no memfd for {size} bytes: {error.strerror}") from None
        address = MAP_FAILED
        try:
            os.ftruncate(self.fd, self.size)
            address = _libc.mmap(None, self.size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, self.fd, 0)
        finally:
            if address == MAP_FAILED:
                os.close(self.fd)
        if address == MAP_FAILED:
            raise OutOfBacking(f"no mapping for {size} bytes: {os.strerror(ctypes.get_errno())}")
        self.address = address
        self.view = memoryview((ctypes.c_char * self.size).from_address(address)).cast("B")
        self.serial = next(Store._serials)
        #: a client process maps the memfd too (its own host-device copies): on close the
        #: pages are given back at once, not when the client's mapping goes
        self.client_mapped = False
        self._lock = threading.Lock()

    def zero(self, offset: int, length: int) -> None:
        """Zeros over [offset, offset + length), written only where pages exist: holes already
        read as zeros, and stay holes (a memset of a huge untouched allocation costs nothing).
        Pages are kept, not punched out: measured, giving back 64 MiB costs twice a memset
        and the next write over it seven times a warm one."""
        at, end = offset, offset + length
        while at < end:
            try:
                data = os.lseek(self.fd, at, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after ``at``
                return
            if data >= end:
                return
            hole = min(os.lseek(self.fd, data, os.SEEK_HOLE), end)
            ctypes.memset(self.address + data, 0, hole - data)
            at = hole

    def duplicate(self) -> int | None:
        """A new descriptor of the memfd for another process, or None once closed."""
        with self._lock:
            return os.dup(self.fd) if self.fd >= 0 else None

    def close(self) -> None:
        """The allocation went: unmap it here and close the memfd (its pages go once no
        other process maps it)."""
        with self._lock:
            if self.fd < 0:
                return
            self.view.release()
            _libc.munmap(self.address, self.size)
            if self.client_mapped:
                _libc.fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, self.size)
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class Region:
    """Device addresses [address, address + size) show ``store``'s bytes from ``offset``."""

    address: int
    size: int
    offset: int
    writable: bool
    store: Store

    @property
    def key(self) -> tuple[int, int, int, bool, int]:
        """What identifies this view of memory across calls (memfd numbers may be reused)."""
        return self.address, self.size, self.offset, self.writable, self.store.serial


#: the legacy window: allocations made through the v1 entry points (cuMemAlloc, cuMemAllocPitch)
#: take 32-bit device pointers, so a real 64-bit driver places them below 4 GiB; here each GPU
#: slot of a domain has its own part of [256 MiB, 4 GiB)
LEGACY_BASE = 0x1000_0000
LEGACY_SPAN = (0x1_0000_0000 - LEGACY_BASE) // SLOTS_PER_DOMAIN // LARGE_ALIGNMENT * LARGE_ALIGNMENT


class LegacyWindowFull(MemoryError):
    """No room below 4 GiB for an allocation a v1 entry point asked for."""


#: virtual address ranges (cuMemAddressReserve) come from the upper half of each GPU's span
RESERVED_FROM = SPAN // 2
#: the owner of an allocation its process freed while others still had it open (CUDA IPC)
RELEASED = -1


class InvalidAddress(ValueError):
    """An address or range outside the caller's allocations."""


@dataclass
class Mapping:
    """Part of a reserved virtual range backed by physical memory (cuMemMap): the bytes live
    at ``physical`` (an allocation of their own), whatever virtual address shows them."""

    address: int
    size: int
    owner: int
    physical: int
    handle: int
    #: CUmemAccess_flags set by cuMemSetAccess (0: not yet accessible)
    access: int = 0

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass(frozen=True)
class Allocation:
    address: int
    size: int
    owner: int

    @property
    def end(self) -> int:
        return self.address + self.size


def _round_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


class DeviceMemory:
    def __init__(self, gpu_index: int, pci_domain: int = 0) -> None:
        self.base = BASE + (pci_domain % DOMAINS * SLOTS_PER_DOMAIN + gpu_index) * SPAN
        self.legacy_base = LEGACY_BASE + gpu_index % SLOTS_PER_DOMAIN * LEGACY_SPAN
        self._next = self.base
        self._starts: list[int] = []
        self._allocations: dict[int, Allocation] = {}
        #: allocation address -> its bytes
        self._stores: dict[int, Store] = {}
        #: grows whenever what some owner may reach changes (see backing)
        self.generation = 0
        self._lock = threading.RLock()
        self._next_reserved = self.base + RESERVED_FROM
        #: reserved virtual ranges: start -> (size, owner)
        self.reservations: dict[int, tuple[int, int]] = {}
        self._mapping_starts: list[int] = []
        self.mappings: dict[int, Mapping] = {}
        #: allocation address -> the other owners that may reach it (CUDA IPC)
        self._shared: dict[int, set[int]] = {}

    # allocations ----------------------------------------------------------------------
    @staticmethod
    def footprint(size: int) -> int:
        """What an allocation of ``size`` bytes takes from the GPU."""
        return _round_up(size, LARGE_ALIGNMENT if size >= LARGE_ALIGNMENT else SMALL_ALIGNMENT)

    @classmethod
    def _extent(cls, size: int) -> int:
        """The addresses an allocation takes: whole host pages."""
        return _round_up(max(cls.footprint(size), 1), HOST_PAGE)

    def allocate(self, owner: int, size: int, legacy: bool = False) -> Allocation:
        """A new allocation; ``legacy`` places it in the GPU's window below 4 GiB (first fit)."""
        with self._lock:
            alignment = LARGE_ALIGNMENT if size >= LARGE_ALIGNMENT else HOST_PAGE
            address = self._legacy_gap(size, alignment) if legacy else _round_up(self._next, alignment)
            store = Store(self.footprint(size))
            if not legacy:
                self._next = address + self._extent(size)
            allocation = Allocation(address, size, owner)
            bisect.insort(self._starts, address)
            self._allocations[address] = allocation
            self._stores[address] = store
            self.generation += 1
            return allocation

    def _legacy_gap(self, size: int, alignment: int) -> int:
        end = self.legacy_base + LEGACY_SPAN
        candidate = _round_up(self.legacy_base, alignment)
        for start in self._starts[bisect.bisect_left(self._starts, self.legacy_base):]:
            if start >= end or candidate + self._extent(size) <= start:
                break
            candidate = _round_up(start + self._extent(self._allocations[start].size), alignment)
        if candidate + self._extent(size) > end:
            raise LegacyWindowFull(f"no {size} bytes free below 4 GiB")
        return candidate

    def free(self, owner: int, address: int) -> Allocation:
        """Free an allocation; one that other processes still have open stays, with its
        contents, until the last of them lets it go (revoke)."""
        with self._lock:
            allocation = self._allocations.get(address)
            if allocation is None or allocation.owner != owner:
                raise InvalidAddress(f"0x{address:x} is not the start of an allocation of this process")
            self.generation += 1
            if self._shared.get(address):
                self._allocations[address] = Allocation(address, allocation.size, RELEASED)
                return allocation
            self._drop(address)
            return allocation

    def _drop(self, address: int) -> None:
        del self._allocations[address]
        self._starts.pop(bisect.bisect_left(self._starts, address))
        self._stores.pop(address).close()

    def free_owned_by(self, owner: int) -> list[Allocation]:
        """A process ended: its allocations go, and so do the ones it had open."""
        with self._lock:
            for address in [a for a, owners in self._shared.items() if owner in owners]:
                self.revoke(address, owner)
            mine = [a for a in self._allocations.values() if a.owner == owner]
            for allocation in mine:
                self.free(owner, allocation.address)
            return mine

    def grant(self, address: int, owner: int) -> None:
        """Let another process reach the allocation at ``address`` (it opened an IPC handle)."""
        with self._lock:
            self._shared.setdefault(address, set()).add(owner)
            self.generation += 1

    def revoke(self, address: int, owner: int) -> None:
        """Withdraw a grant; an allocation freed by its process goes with its last grant."""
        with self._lock:
            owners = self._shared.get(address, set())
            owners.discard(owner)
            self.generation += 1
            if owners:
                return
            self._shared.pop(address, None)
            allocation = self._allocations.get(address)
            if allocation is not None and allocation.owner == RELEASED:
                self._drop(address)

    def allocation_at(self, address: int) -> Allocation | None:
        """The allocation starting at ``address``, whoever holds it."""
        with self._lock:
            return self._allocations.get(address)

    def _reaches(self, allocation: Allocation, owner: int) -> bool:
        return allocation.owner == owner or owner in self._shared.get(allocation.address, ())

    def find(self, owner: int, address: int, length: int = 1) -> Allocation:
        """The caller's allocation holding [address, address + length); for a mapped virtual
        address, the mapping (as cuMemGetAddressRange reports it)."""
        with self._lock:
            mapping = self.mapping_at(address)
            if mapping is not None:
                if mapping.owner != owner:
                    raise InvalidAddress(f"0x{address:x} is mapped by another process")
                return Allocation(mapping.address, mapping.size, owner)
            index = bisect.bisect_right(self._starts, address) - 1
            allocation = self._allocations.get(self._starts[index]) if index >= 0 else None
            if allocation is None or not self._reaches(allocation, owner) or \
                    address + max(length, 1) > allocation.end:
                raise InvalidAddress(f"[0x{address:x}, +{length}) is outside this process's allocations")
            return allocation

    def client_store(self, owner: int, address: int, length: int = 1) -> tuple[Store, int] | None:
        """The store of the caller's allocation holding [address, address + length), and the
        device address of the store's first byte, for the client to map and copy through;
        None where it may not (outside its allocations, or a VMM mapping)."""
        with self._lock:
            if self.mapping_at(address) is not None:
                return None
            try:
                allocation = self.find(owner, address, length)
            except InvalidAddress:
                return None
            return self._stores[allocation.address], allocation.address

    def owns(self, address: int) -> bool:
        with self._lock:
            if self.mapping_at(address) is not None or self._reservation_at(address) is not None:
                return True
            index = bisect.bisect_right(self._starts, address) - 1
            return index >= 0 and address < self._allocations[self._starts[index]].end

    # virtual memory management ----------------------------------------------------------
    def reserve(self, owner: int, size: int, alignment: int) -> int:
        """A virtual range of ``size`` bytes nothing backs yet (cuMemAddressReserve)."""
        with self._lock:
            address = _round_up(self._next_reserved, max(alignment, LARGE_ALIGNMENT))
            self._next_reserved = address + size
            self.reservations[address] = (size, owner)
            return address

    def unreserve(self, owner: int, address: int, size: int) -> None:
        with self._lock:
            if self.reservations.get(address) != (size, owner):
                raise InvalidAddress(f"[0x{address:x}, +{size}) is not a range this process reserved")
            if any(address <= m.address < address + size for m in self.mappings.values()):
                raise InvalidAddress(f"[0x{address:x}, +{size}) still has mappings")
            del self.reservations[address]

    def _reservation_at(self, address: int) -> tuple[int, int, int] | None:
        for start, (size, owner) in self.reservations.items():
            if start <= address < start + size:
                return start, size, owner
        return None

    def mapping_at(self, address: int) -> Mapping | None:
        index = bisect.bisect_right(self._mapping_starts, address) - 1
        mapping = self.mappings.get(self._mapping_starts[index]) if index >= 0 else None
        return mapping if mapping is not None and address < mapping.end else None

    def map(self, mapping: Mapping) -> None:
        """Back [address, address + size) of a reservation with physical memory (cuMemMap)."""
        with self._lock:
            reservation = self._reservation_at(mapping.address)
            if reservation is None or reservation[2] != mapping.owner or \
                    mapping.end > reservation[0] + reservation[1]:
                raise InvalidAddress(f"[0x{mapping.address:x}, +{mapping.size}) is not inside a reserved range")
            if any(m.address < mapping.end and mapping.address < m.end for m in self.mappings.values()):
                raise InvalidAddress(f"[0x{mapping.address:x}, +{mapping.size}) is already mapped")
            bisect.insort(self._mapping_starts, mapping.address)
            self.mappings[mapping.address] = mapping
            self.generation += 1

    def unmap(self, owner: int, address: int, size: int) -> list[Mapping]:
        """Remove the mappings in [address, address + size): they must lie wholly inside it
        (a range with none is fine, as with the real driver)."""
        with self._lock:
            touched = [m for m in self.mappings.values() if m.address < address + size and address < m.end]
            if any(m.owner != owner or m.address < address or m.end > address + size for m in touched):
                raise InvalidAddress(f"[0x{address:x}, +{size}) cuts through a mapping")
            for mapping in touched:
                del self.mappings[mapping.address]
                self._mapping_starts.remove(mapping.address)
            self.generation += 1
            return touched

    def forget_virtual(self, owner: int) -> None:
        """A process ended: its mappings and reserved ranges go (its allocations go with free_owned_by)."""
        with self._lock:
            for address in [a for a, m in self.mappings.items() if m.owner == owner]:
                del self.mappings[address]
                self._mapping_starts.remove(address)
            for address in [a for a, (_, who) in self.reservations.items() if who == owner]:
                del self.reservations[address]
            self.generation += 1

    def _physical(self, owner: int, address: int, length: int) -> list[tuple[int, int]]:
        """Where [address, address + length) lives: pieces (physical address, length), one per
        mapping crossed; the range itself when it is ordinary memory."""
        with self._lock:
            if not self.mappings or self.mapping_at(address) is None:
                return [(address, length)]
            pieces, done = [], 0
            while done < length or not pieces:  # a copy of 0 bytes still names a place
                mapping = self.mapping_at(address + done)
                if mapping is None or mapping.owner != owner or not mapping.access:
                    raise InvalidAddress(f"0x{address + done:x} is not mapped with access for this process")
                take = min(length - done, mapping.end - (address + done))
                pieces.append((mapping.physical + address + done - mapping.address, take))
                done += take
            return pieces

    # contents -------------------------------------------------------------------------
    def _store_at(self, owner: int, address: int, length: int) -> tuple[Store, int]:
        """The store holding the caller's [address, address + length), and the offset in it."""
        allocation = self.find(owner, address, length)
        return self._stores[allocation.address], address - allocation.address

    def write(self, owner: int, address: int, data: Any) -> None:
        """Copy bytes in; ``data`` is bytes-like, or a client buffer that fills the pages itself."""
        pieces = self._physical(owner, address, len(data))
        if len(pieces) > 1 or pieces[0][0] != address:
            if hasattr(data, "copy_to"):  # a client buffer: fetch its bytes once
                fetched = bytearray(len(data))
                data.copy_to([memoryview(fetched)])
                data = fetched
            view = memoryview(data).cast("B")
            done = 0
            for physical, length in pieces:
                self.write(owner, physical, view[done:done + length])
                done += length
            return
        with self._lock:
            store, offset = self._store_at(owner, address, len(data))
            target = store.view[offset:offset + len(data)]
            if hasattr(data, "copy_to"):
                data.copy_to([target])
            else:
                target[:] = memoryview(data).cast("B")

    def read(self, owner: int, address: int, length: int, into: Any = None) -> Any:
        """Copy bytes out, into a new buffer, a writable buffer, or a client buffer."""
        pieces = self._physical(owner, address, length)
        if len(pieces) > 1 or pieces[0][0] != address:
            out = bytearray()
            for physical, size in pieces:
                out += self.read(owner, physical, size)
            if into is None:
                return memoryview(out)
            if hasattr(into, "copy_from"):
                into.copy_from([memoryview(out)])
            else:
                memoryview(into).cast("B")[:length] = out
            return into
        with self._lock:
            store, offset = self._store_at(owner, address, length)
            source = store.view[offset:offset + length]
            if hasattr(into, "copy_from"):
                into.copy_from([source])
                return into
            out = memoryview(into).cast("B") if into is not None else memoryview(bytearray(length))
            out[:length] = source
            return out

    def fill(self, owner: int, address: int, pattern: bytes, count: int) -> None:
        """Write ``pattern`` ``count`` times from ``address`` (memsets of 8, 16 and 32 bits)."""
        length = len(pattern) * count
        pieces = self._physical(owner, address, length)
        if len(pieces) > 1 or pieces[0][0] != address:
            self.write(owner, address, pattern * count)
            return
        with self._lock:
            store, offset = self._store_at(owner, address, length)
            if not any(pattern):
                store.zero(offset, length)
                return
            block = pattern * max(1, (1 << 20) // len(pattern))
            done = 0
            while done < length:
                chunk = min(len(block), length - done)
                store.view[offset + done:offset + done + chunk] = block[:chunk]
                done += chunk

    def copy(self, owner: int, destination: int, source: int, length: int) -> None:
        """Device to device: one copy between the stores where both sides are plain memory."""
        to, frm = self._physical(owner, destination, length), self._physical(owner, source, length)
        if len(to) > 1 or len(frm) > 1 or to[0][0] != destination or frm[0][0] != source:
            self.write(owner, destination, self.read(owner, source, length))
            return
        with self._lock:
            target, at = self._store_at(owner, destination, length)
            origin, start = self._store_at(owner, source, length)
            if target is origin and at < start + length and start < at + length:
                target.view[at:at + length] = bytes(origin.view[start:start + length])  # overlapping
            else:
                target.view[at:at + length] = origin.view[start:start + length]

    # what compiled kernels may reach -------------------------------------------------------
    def changed(self) -> None:
        """Say that what some owner may reach changed (the executor compares ``generation``)."""
        self.generation += 1

    def backing(self, owner: int) -> list[Region]:
        """Everything ``owner``'s kernels may reach, where it lives: its allocations, the ones
        it opened through IPC, and its VMM mappings with access, at their virtual addresses."""
        with self._lock:
            regions = [Region(a.address, self._stores[a.address].size, 0, True, self._stores[a.address])
                       for a in self._allocations.values() if self._reaches(a, owner)]
            for mapping in self.mappings.values():
                if mapping.owner != owner or not mapping.access:
                    continue
                index = bisect.bisect_right(self._starts, mapping.physical) - 1
                physical = self._allocations[self._starts[index]]
                regions.append(Region(mapping.address, mapping.size, mapping.physical - physical.address,
                                      mapping.access == ACCESS_READWRITE, self._stores[physical.address]))
            return regions
