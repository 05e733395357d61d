"""Client memory vgpud reaches directly, so bulk data skips the socket: shared-memory
windows (page-locked memory) and, where the kernel allows it, ordinary memory.

A client shares a range of its address space that a file of its own maps (page-locked
host memory made with memfd_create); vgpud maps the same file through /proc/PID/fd/FD.
Transfers to and from that range then name the address, and vgpud reads and writes the
memory in place, as a DMA engine does with real page-locked memory.
"""

from __future__ import annotations

import bisect
import ctypes
import itertools
import mmap
import os
from dataclasses import dataclass
from typing import Any

from vgpu.device.memory import Region
from vgpu.wire.protocol import HOST_WINDOWS_BASE, HOST_WINDOWS_SPAN


class WindowFile:
    """The file behind a window, kept open so the process's kernel worker can map it too
    (the executor asks for a descriptor of its own: ``duplicate``)."""

    _serials = itertools.count(1)

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd
        self.serial = next(WindowFile._serials)

    def duplicate(self) -> int | None:
        return os.dup(self.fd) if self.fd is not None else None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class Window:
    address: int
    size: int
    map: mmap.mmap
    #: what the window holds when it is managed memory (vgpu.server.cuda_hostmem), else None
    managed: Any = None
    file: WindowFile | None = None

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass
class Registration:
    """Ordinary memory the client registered (cuMemHostRegister), which vgpud reaches with
    process_vm_readv/writev (only where ``Windows.direct``); device-side writes are refused
    when it was registered read-only."""

    address: int
    size: int
    read_only: bool

    def remote(self, pid: int, address: int, length: int) -> RemoteBuffer | None:
        """The registered bytes [address, address + length), if the registration holds them all."""
        inside = self.address <= address and address + max(length, 1) <= self.address + self.size
        return RemoteBuffer(pid, address, length) if inside else None


class Windows:
    """The windows of one client process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._starts: list[int] = []
        self._windows: dict[int, Window] = {}
        #: vgpud can read and write the client's ordinary memory (checked at the handshake)
        self.direct = False
        #: registered memory by start address (cuMemHostRegister; few per process)
        self._registered: dict[int, Registration] = {}
        #: counts changes to what kernels may reach (the executor compares it)
        self.generation = 0

    def share(self, address: int, size: int, fd: int) -> int:
        """Map a window; an errno on failure (the client then sends its data through the socket)."""
        try:
            with open(f"/proc/{self.pid}/fd/{fd}", "r+b") as handle:
                mapping = mmap.mmap(handle.fileno(), size)
                file = WindowFile(os.dup(handle.fileno())) if self._reachable(address, size) else None
        except (OSError, ValueError) as error:
            return getattr(error, "errno", None) or 22
        self.withdraw(address)
        bisect.insort(self._starts, address)
        self._windows[address] = Window(address, size, mapping, file=file)
        self.generation += 1
        return 0

    @staticmethod
    def _reachable(address: int, size: int) -> bool:
        """Whether kernels can reach a window: it lies where the library places the page-locked
        and managed memory it makes (memory registered in place does not)."""
        return HOST_WINDOWS_BASE <= address and address + size <= HOST_WINDOWS_BASE + HOST_WINDOWS_SPAN

    def backing(self, owner: int) -> list[Region]:
        """The windows the process's kernels may reach, at the process's own addresses (the
        executor maps them beside its device memory)."""
        return [Region(w.address, w.size, 0, True, w.file) for w in self._windows.values() if w.file is not None]

    def withdraw(self, address: int) -> None:
        window = self._windows.pop(address, None)
        if window is not None:
            self._starts.pop(bisect.bisect_left(self._starts, address))
            if window.file is not None:
                window.file.close()
                self.generation += 1
            try:
                window.map.close()
            except BufferError:
                pass  # a view is still held: the mapping goes when it does

    def find(self, address: int, length: int = 1) -> Window | None:
        """The window holding all of [address, address + length), if one does."""
        index = bisect.bisect_right(self._starts, address) - 1
        if index < 0:
            return None
        window = self._windows[self._starts[index]]
        return window if address + max(length, 1) <= window.end else None

    def view(self, address: int, length: int) -> memoryview | None:
        """The client's bytes [address, address + length), if one window holds them all."""
        window = self.find(address, length)
        if window is None:
            return None
        offset = address - window.address
        return memoryview(window.map)[offset:offset + length]

    def __len__(self) -> int:
        return len(self._windows)

    def remote(self, address: int, length: int) -> RemoteBuffer | None:
        """The client's ordinary memory [address, address + length), if vgpud may reach it."""
        return RemoteBuffer(self.pid, address, length) if self.direct else None

    def register(self, address: int, size: int, read_only: bool) -> bool:
        """Remember registered memory, where vgpud reaches the client's memory; whether it did."""
        if self.direct:
            self._registered[address] = Registration(address, size, read_only)
        return self.direct

    def unregister(self, address: int) -> None:
        self._registered.pop(address, None)

    def registration(self, address: int, length: int = 1) -> Registration | None:
        """The registration holding all of [address, address + length), if one does."""
        return next((r for r in self._registered.values() if r.remote(self.pid, address, length) is not None), None)

    def close(self) -> None:
        for address in list(self._windows):
            self.withdraw(address)
        self._registered.clear()



class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_IOV_MAX = 1024


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class RemoteBuffer:
    """A client's ordinary memory, which vgpud reads and writes with process_vm_readv and
    process_vm_writev (same user, or root; the shim lets vgpud in where Yama restricts it):
    one copy, where the socket would take three."""

    def __init__(self, pid: int, address: int, length: int) -> None:
        self.pid, self.address, self.length = pid, address, length

    def __len__(self) -> int:
        return self.length

    def _transfer(self, function: Any, views: list[memoryview]) -> None:
        remote = self.address
        for start in range(0, len(views), _IOV_MAX):
            batch = views[start:start + _IOV_MAX]
            local = (_IoVec * len(batch))(*[_IoVec(_address(v), len(v)) for v in batch])
            size = sum(len(v) for v in batch)
            far = _IoVec(remote, size)
            done = function(self.pid, local, len(batch), ctypes.byref(far), 1, 0)
            if done != size:
                error = ctypes.get_errno()
                raise OSError(error, f"client memory at 0x{remote:x} ({done} of {size} bytes): {os.strerror(error)}")
            remote += size

    def copy_to(self, views: list[memoryview]) -> None:
        """Fill ``views``, in order, from the client's bytes."""
        self._transfer(_libc.process_vm_readv, views)

    def copy_from(self, views: list[memoryview]) -> None:
        """Write ``views``, in order, into the client's bytes."""
        self._transfer(_libc.process_vm_writev, views)


def can_reach(pid: int, address: int, expected: bytes) -> bool:
    """Whether vgpud can read a client's memory: the client's probe value at ``address``."""
    found = bytearray(len(expected))
    try:
        RemoteBuffer(pid, address, len(expected)).copy_to([memoryview(found)])
    except OSError:
        return False
    return bytes(found) == expected
