"""A GPU's device memory: allocations in a unified address range, and their exact contents.

Contents are kept sparsely in 64 KiB pages, created on first write: an 80 GB allocation
that is never written costs nothing, and unwritten memory reads as zeros.  Every access
names its owner: a session reaches only the allocations it made.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import Any

PAGE = 1 << 20
#: where each GPU's allocations start: GPUs never share an address (unified addressing)
BASE = 0x2000_0000_0000
SPAN = 1 << 38
ZEROS = bytes(PAGE)
ZERO_VIEW = memoryview(ZEROS)
#: stands for unwritten pages when they are read through a client buffer (never written)
ZERO_PAGE = bytearray(PAGE)
SMALL_ALIGNMENT = 512
LARGE_ALIGNMENT = 2 << 20


class InvalidAddress(ValueError):
    """An address or range outside the caller's allocations."""


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
    def __init__(self, gpu_index: int) -> None:
        self.base = BASE + gpu_index * SPAN
        self._next = self.base
        self._starts: list[int] = []
        self._allocations: dict[int, Allocation] = {}
        self._pages: dict[int, bytearray] = {}
        self._lock = threading.RLock()

    # allocations ----------------------------------------------------------------------
    @staticmethod
    def footprint(size: int) -> int:
        """What an allocation of ``size`` bytes takes from the GPU."""
        return _round_up(size, LARGE_ALIGNMENT if size >= LARGE_ALIGNMENT else SMALL_ALIGNMENT)

    def allocate(self, owner: int, size: int) -> Allocation:
        with self._lock:
            alignment = LARGE_ALIGNMENT if size >= LARGE_ALIGNMENT else SMALL_ALIGNMENT
            address = _round_up(self._next, alignment)
            allocation = Allocation(address, size, owner)
            self._next = address + self.footprint(size)
            bisect.insort(self._starts, address)
            self._allocations[address] = allocation
            return allocation

    def free(self, owner: int, address: int) -> Allocation:
        with self._lock:
            allocation = self._allocations.get(address)
            if allocation is None or allocation.owner != owner:
                raise InvalidAddress(f"0x{address:x} is not the start of an allocation of this process")
            del self._allocations[address]
            self._starts.pop(bisect.bisect_left(self._starts, address))
            self._drop_pages(address, allocation.size)
            return allocation

    def free_owned_by(self, owner: int) -> list[Allocation]:
        with self._lock:
            mine = [a for a in self._allocations.values() if a.owner == owner]
            for allocation in mine:
                self.free(owner, allocation.address)
            return mine

    def find(self, owner: int, address: int, length: int = 1) -> Allocation:
        """The caller's allocation holding [address, address + length)."""
        with self._lock:
            index = bisect.bisect_right(self._starts, address) - 1
            allocation = self._allocations.get(self._starts[index]) if index >= 0 else None
            if allocation is None or allocation.owner != owner or address + max(length, 1) > allocation.end:
                raise InvalidAddress(f"[0x{address:x}, +{length}) is outside this process's allocations")
            return allocation

    def owns(self, address: int) -> bool:
        with self._lock:
            index = bisect.bisect_right(self._starts, address) - 1
            return index >= 0 and address < self._allocations[self._starts[index]].end

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
                    if view[done:done + chunk] == ZEROS[:chunk]:
                        done += chunk
                        continue  # zeros over unwritten memory: nothing to keep
                    stored = self._pages[page] = bytearray(PAGE)
                # through a memoryview: a bytearray slice assignment would copy the source first
                memoryview(stored)[offset:offset + chunk] = view[done:done + chunk]
                done += chunk

    def read(self, owner: int, address: int, length: int, into: Any = None) -> Any:
        """Copy bytes out, into a new buffer, a writable buffer, or a client buffer."""
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
