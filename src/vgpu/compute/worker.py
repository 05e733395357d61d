"""A kernel worker: the process that runs one client process's kernels
(``python -m vgpu.compute.worker FD PARENT_PID``, started by vgpud's executor).

It maps exactly its client's device memory at the device addresses (the memfds vgpud sends),
so compiled kernels dereference device pointers directly; everything else in the device
address ranges stays reserved and inaccessible, so a stray access faults here (vgpud answers
the launch with CUDA_ERROR_ILLEGAL_ADDRESS) and never reaches another process's memory.
Messages: ``vgpu.compute.jobs``.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import os
import resource
import signal
import socket
import sys
import time
from typing import Any

from vgpu.compute import jobs
from vgpu.compute.runner import run_ctas
from vgpu.device.memory import DEVICE_RANGE, LEGACY_BASE

PR_SET_PDEATHSIG = 1
PROT_NONE = 0
MAP_FIXED = 0x10
MAP_NORESERVE = 0x4000
MAP_FIXED_NOREPLACE = 0x100000
#: the windows device addresses come from: every GPU's span, and the legacy window below 4 GiB
WINDOWS = (DEVICE_RANGE, (LEGACY_BASE, 1 << 32))

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
MAP_FAILED = ctypes.c_void_p(-1).value
ENTRY_TYPE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32)
LAUNCH_FAILED = 719


def _mmap(address: int, size: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """0, or the errno of a mapping that did not land exactly at ``address``."""
    got = _libc.mmap(address, size, prot, flags, fd, offset)
    if got == MAP_FAILED:
        return ctypes.get_errno()
    if got != address:  # a kernel without MAP_FIXED_NOREPLACE takes it as a hint
        _libc.munmap(got, size)
        return 17  # EEXIST
    return 0


def _occupied() -> list[tuple[int, int]]:
    """This process's mappings, from /proc/self/maps."""
    with open("/proc/self/maps") as maps:
        return [tuple(int(part, 16) for part in line.split(" ", 1)[0].split("-")) for line in maps]


class AddressSpace:
    """The device windows of this process, reserved (no access) wherever nothing else sat when
    the worker started: a stray access faults, and nothing the worker allocates later (heap,
    JIT code, kernels' scratch memory) can land there.  What already sat in a window (a
    position-independent python binary and its heap load near 0x55..., inside the span of PCI
    domains 5 and 6) stays; a device allocation there cannot be mapped and its job fails."""

    def __init__(self) -> None:
        self.reserved: list[tuple[int, int]] = []
        occupied = _occupied()
        for start, end in WINDOWS:
            gaps, at = [], start
            for used_start, used_end in sorted(occupied):
                if used_end > at and used_start < end:
                    if used_start > at:
                        gaps.append((at, used_start))
                    at = max(at, used_end)
            if at < end:
                gaps.append((at, end))
            for gap_start, gap_end in gaps:
                if _mmap(gap_start, gap_end - gap_start, PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS |
                         MAP_NORESERVE | MAP_FIXED_NOREPLACE) == 0:
                    self.reserved.append((gap_start, gap_end))
        #: mapped start -> end
        self._starts: list[int] = []
        self._ends: dict[int, int] = {}

    def _inside_reservation(self, address: int, size: int) -> bool:
        return any(start <= address and address + size <= end for start, end in self.reserved)

    def _overlaps(self, address: int, size: int) -> bool:
        index = bisect.bisect_left(self._starts, address + size) - 1
        return index >= 0 and self._ends[self._starts[index]] > address

    def map(self, address: int, size: int, fd: int, offset: int, writable: bool) -> int:
        """Show the memfd at ``address``: 0, or the errno (EEXIST: something is there)."""
        if self._overlaps(address, size):
            return 17
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        # over this process's own reservation MAP_FIXED replaces nothing else; outside it,
        # MAP_FIXED_NOREPLACE refuses (EEXIST) rather than clobber what sits there
        fixed = MAP_FIXED if self._inside_reservation(address, size) else MAP_FIXED_NOREPLACE
        failed = _mmap(address, size, prot, mmap.MAP_SHARED | fixed, fd, offset)
        if not failed:
            bisect.insort(self._starts, address)
            self._ends[address] = address + size
        return failed

    def unmap(self, address: int, size: int) -> int:
        if self._ends.get(address) != address + size:
            return 22  # EINVAL: not a range this process mapped
        self._starts.remove(address)
        del self._ends[address]
        if self._inside_reservation(address, size):
            return _mmap(address, size, PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE |
                         MAP_FIXED)
        _libc.munmap(address, size)
        return 0


class Worker:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.space = AddressSpace()
        #: object key -> its execution engine (kept: the code lives in it)
        self._engines: dict[str, Any] = {}
        self._entries: dict[tuple[str, str], Any] = {}

    def serve(self) -> None:
        while True:
            try:
                kind, payload, fds = jobs.recv_frame(self.sock)
            except (EOFError, ConnectionError):
                return
            if kind == jobs.MAP:
                self._status(self._map(payload, fds))
            elif kind == jobs.UNMAP:
                self._status(self._unmap(payload))
            elif kind == jobs.RUN:
                job, _ = jobs.decode_run(payload)
                try:
                    answer = self._run(job)
                except Exception as error:  # noqa: BLE001 - e.g. an object that does not load
                    answer = jobs.encode_done(LAUNCH_FAILED, 0.0, job.launch, [], f"{type(error).__name__}: {error}")
                jobs.send_frame(self.sock, jobs.DONE, answer)
            for fd in fds:
                os.close(fd)

    def _status(self, failure: tuple[int, int]) -> None:
        jobs.send_frame(self.sock, jobs.STATUS, jobs.STATUS_BODY.pack(*failure))

    def _map(self, payload: bytes, fds: list[int]) -> tuple[int, int]:
        for index, (address, size, offset, writable) in enumerate(jobs.REGION.iter_unpack(payload)):
            failed = self.space.map(address, size, fds[index], offset, bool(writable)) if index < len(fds) else 9
            if failed:
                return failed, address
        return 0, 0

    def _unmap(self, payload: bytes) -> tuple[int, int]:
        for address, size in jobs.RANGE.iter_unpack(payload):
            failed = self.space.unmap(address, size)
            if failed:
                return failed, address
        return 0, 0

    def _entry(self, job: jobs.Job) -> Any:
        if (job.key, job.entry) not in self._entries:
            from vgpu.compute.compiler import load_object

            engine, address = load_object(job.object, job.entry) if job.key not in self._engines else \
                (self._engines[job.key], self._engines[job.key].get_function_address(job.entry))
            self._engines[job.key] = engine
            self._entries[job.key, job.entry] = ENTRY_TYPE(address)
        return self._entries[job.key, job.entry]

    def _run(self, job: jobs.Job) -> bytes:
        entry = self._entry(job)
        launch = ctypes.create_string_buffer(job.launch, max(len(job.launch), 8))
        buffers = []
        for buffer in job.buffers:
            memory = ctypes.create_string_buffer(buffer.data, max(buffer.size, len(buffer.data), 1))
            ctypes.c_uint64.from_buffer(launch, buffer.at).value = ctypes.addressof(memory)
            buffers.append(memory)
        started = time.perf_counter()
        code = run_ctas(entry, ctypes.addressof(launch), job.ctas, job.threads) if job.ctas else 0
        seconds = time.perf_counter() - started
        outputs = []
        for buffer, memory in zip(job.buffers, buffers):
            if buffer.returned:
                used = len(memory) if buffer.used_at is None else \
                    min(ctypes.c_uint64.from_buffer(launch, buffer.used_at).value, len(memory))
                outputs.append(memory.raw[:used])
        return jobs.encode_done(code, seconds, launch.raw[:len(job.launch)], outputs)


def main(argv: list[str]) -> None:
    fd, parent = int(argv[0]), int(argv[1])
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # never outlive vgpud's thread that started us
    if os.getppid() != parent:
        return  # vgpud went before the line above took effect
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a faulting kernel is an answer, not a core dump
    Worker(socket.socket(fileno=fd)).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
