"""Shared-memory windows: client memory vgpud maps, so bulk data skips the socket.

A client shares a range of its address space that a file of its own maps (page-locked
host memory made with memfd_create); vgpud maps the same file through /proc/PID/fd/FD.
Transfers to and from that range then name the address, and vgpud reads and writes the
memory in place, as a DMA engine does with real page-locked memory.
"""

from __future__ import annotations

import bisect
import mmap
from dataclasses import dataclass


@dataclass
class Window:
    address: int
    size: int
    map: mmap.mmap


class Windows:
    """The windows of one client process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._starts: list[int] = []
        self._windows: dict[int, Window] = {}

    def share(self, address: int, size: int, fd: int) -> int:
        """Map a window; an errno on failure (the client then sends its data through the socket)."""
        try:
            with open(f"/proc/{self.pid}/fd/{fd}", "r+b") as handle:
                mapping = mmap.mmap(handle.fileno(), size)
        except (OSError, ValueError) as error:
            return getattr(error, "errno", None) or 22
        self.withdraw(address)
        bisect.insort(self._starts, address)
        self._windows[address] = Window(address, size, mapping)
        return 0

    def withdraw(self, address: int) -> None:
        window = self._windows.pop(address, None)
        if window is not None:
            self._starts.pop(bisect.bisect_left(self._starts, address))
            try:
                window.map.close()
            except BufferError:
                pass  # a view is still held: the mapping goes when it does

    def view(self, address: int, length: int) -> memoryview | None:
        """The client's bytes [address, address + length), if one window holds them all."""
        index = bisect.bisect_right(self._starts, address) - 1
        if index < 0:
            return None
        window = self._windows[self._starts[index]]
        offset = address - window.address
        if offset + length > window.size:
            return None
        return memoryview(window.map)[offset:offset + length]

    def __len__(self) -> int:
        return len(self._windows)

    def close(self) -> None:
        for address in list(self._windows):
            self.withdraw(address)

