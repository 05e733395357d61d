"""A GPU's device memory: allocations in a unified address range, and their exact contents.

Contents are kept sparsely in 64 KiB pages, created on first write: an 80 GB allocation
that is never written costs nothing, and unwritten memory reads as zeros.  Every access
names its owner: a session reaches only the allocations it made, and those another process
shared with it (CUDA IPC: grant and revoke).
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import Any

PAGE = 1 << 20
#: where each GPU's allocations start: GPUs never share an address (unified addressing), nor
#: do the GPUs of simulators in different PCI domains (GPU hosts one relay joins)
BASE = 0x2000_0000_0000
SPAN = 1 << 38
#: address slots: 32 GPUs in each of 8 domains
SLOTS_PER_DOMAIN = 32
DOMAINS = 8
ZEROS = bytes(PAGE)
ZERO_VIEW = memoryview(ZEROS)
#: stands for unwritten pages when they are read through a client buffer (never written)
ZERO_PAGE = bytearray(PAGE)
SMALL_ALIGNMENT = 512
LARGE_ALIGNMENT = 2 << 20


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
        self._pages: dict[int, bytearray] = {}
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

    def allocate(self, owner: int, size: int, legacy: bool = False) -> Allocation:
        """A new allocation; ``legacy`` places it in the GPU's window below 4 GiB (first fit)."""
        with self._lock:
            alignment = LARGE_ALIGNMENT if size >= LARGE_ALIGNMENT else SMALL_ALIGNMENT
            if legacy:
                address = self._legacy_gap(size, alignment)
            else:
                address = _round_up(self._next, alignment)
                self._next = address + self.footprint(size)
            allocation = Allocation(address, size, owner)
            bisect.insort(self._starts, address)
            self._allocations[address] = allocation
            return allocation

    def _legacy_gap(self, size: int, alignment: int) -> int:
        end = self.legacy_base + LEGACY_SPAN
        candidate = _round_up(self.legacy_base, alignment)
        for start in self._starts[bisect.bisect_left(self._starts, self.legacy_base):]:
            if start >= end or candidate + self.footprint(size) <= start:
                break
            candidate = _round_up(start + self.footprint(self._allocations[start].size), alignment)
        if candidate + self.footprint(size) > end:
            raise LegacyWindowFull(f"no {size} bytes free below 4 GiB")
        return candidate

    def free(self, owner: int, address: int) -> Allocation:
        """Free an allocation; one that other processes still have open stays, with its
        contents, until the last of them lets it go (revoke)."""
        with self._lock:
            allocation = self._allocations.get(address)
            if allocation is None or allocation.owner != owner:
                raise InvalidAddress(f"0x{address:x} is not the start of an allocation of this process")
            if self._shared.get(address):
                self._allocations[address] = Allocation(address, allocation.size, RELEASED)
                return allocation
            del self._allocations[address]
            self._starts.pop(bisect.bisect_left(self._starts, address))
            self._drop_pages(address, allocation.size)
            return allocation

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

    def revoke(self, address: int, owner: int) -> None:
        """Withdraw a grant; an allocation freed by its process goes with its last grant."""
        with self._lock:
            owners = self._shared.get(address, set())
            owners.discard(owner)
            if owners:
                return
            self._shared.pop(address, None)
            allocation = self._allocations.get(address)
            if allocation is not None and allocation.owner == RELEASED:
                del self._allocations[address]
                self._starts.pop(bisect.bisect_left(self._starts, address))
                self._drop_pages(address, allocation.size)

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
            return touched

    def forget_virtual(self, owner: int) -> None:
        """A process ended: its mappings and reserved ranges go (its allocations go with free_owned_by)."""
        with self._lock:
            for address in [a for a, m in self.mappings.items() if m.owner == owner]:
                del self.mappings[address]
                self._mapping_starts.remove(address)
            for address in [a for a, (_, who) in self.reservations.items() if who == owner]:
                del self.reservations[address]

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
    def _spans(self, address: int, length: int, create: bool) -> list[memoryview]:
        """The page slices holding [address, address + length); unwritten pages are made when
        ``create``, else read as zeros."""
        spans = []
        done = 0
        while done < length:
            page, offset = divmod(address + done, PAGE)
            chunk = min(PAGE - offset, length - done)
            stored = self._pages.get(page)
            if stored is None and create:
                stored = self._pages[page] = bytearray(PAGE)
            spans.append(memoryview(stored if stored is not None else ZERO_PAGE)[offset:offset + chunk])
            done += chunk
        return spans

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
        self.find(owner, address, len(data))
        if hasattr(data, "copy_to"):
            with self._lock:
                data.copy_to(self._spans(address, len(data), create=True))
            return
        with self._lock:
            view = memoryview(data).cast("B")
            done = 0
            while done < len(view):
                page, offset = divmod(address + done, PAGE)
                chunk = min(PAGE - offset, len(view) - done)
                stored = self._pages.get(page)
                if stored is None:
                    # bytes() first: comparing a memoryview with bytes goes element by element
                    if bytes(view[done:done + chunk]) == ZEROS[:chunk]:
                        done += chunk
                        continue  # zeros over unwritten memory: nothing to keep
                    stored = self._pages[page] = bytearray(PAGE)
                # through a memoryview: a bytearray slice assignment would copy the source first
                memoryview(stored)[offset:offset + chunk] = view[done:done + chunk]
                done += chunk

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
        self.find(owner, address, length)
        if hasattr(into, "copy_from"):
            with self._lock:
                into.copy_from(self._spans(address, length, create=False))
            return into
        out = memoryview(into).cast("B") if into is not None else memoryview(bytearray(length))
        with self._lock:
            done = 0
            while done < length:
                page, offset = divmod(address + done, PAGE)
                chunk = min(PAGE - offset, length - done)
                stored = self._pages.get(page)
                out[done:done + chunk] = memoryview(stored)[offset:offset + chunk] if stored is not None else ZERO_VIEW[:chunk]
                done += chunk
        return out

    def fill(self, owner: int, address: int, pattern: bytes, count: int) -> None:
        """Write ``pattern`` ``count`` times from ``address`` (memsets of 8, 16 and 32 bits)."""
        length = len(pattern) * count
        pieces = self._physical(owner, address, length)
        if len(pieces) > 1 or pieces[0][0] != address:
            self.write(owner, address, pattern * count)
            return
        self.find(owner, address, length)
        if not any(pattern):
            with self._lock:
                self._zero(address, length)
            return
        block = pattern * max(1, (1 << 20) // len(pattern))
        done = 0
        while done < length:
            chunk = min(len(block), length - done)
            self.write(owner, address + done, block[:chunk])
            done += chunk

    def copy(self, owner: int, destination: int, source: int, length: int) -> None:
        self.write(owner, destination, self.read(owner, source, length))

    def _stored_pages(self, address: int, length: int) -> list[int]:
        """The stored pages that [address, address + length) touches, cheaply for huge ranges."""
        first, last = address // PAGE, (address + length - 1) // PAGE
        if last - first < len(self._pages):
            return [page for page in range(first, last + 1) if page in self._pages]
        return [page for page in self._pages if first <= page <= last]

    def _zero(self, address: int, length: int) -> None:
        for page in self._stored_pages(address, length):
            start = max(address, page * PAGE) - page * PAGE
            end = min(address + length, (page + 1) * PAGE) - page * PAGE
            self._pages[page][start:end] = ZEROS[:end - start]

    def _drop_pages(self, address: int, length: int) -> None:
        """Forget the pages of a freed range (a neighbour may share its first or last page)."""
        self._zero(address, length)
        for page in self._stored_pages(address, length):
            if self._pages[page] == ZEROS:
                del self._pages[page]
