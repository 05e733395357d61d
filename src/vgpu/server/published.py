"""Answers vgpud publishes in shared memory, so the shim can answer hot readings without
a round trip.

The file beside the socket holds fixed slots; each is a seqlock-guarded pair of a key
(the request, less the contents of scalar outputs) and the reply vgpud computed for it,
with the time it was computed.  A request for a published function (manifest annotation
``published``) that reaches vgpud files its key here; from then on vgpud recomputes the
answer whenever state changes and at least every ``PUBLISHED_REFRESH_MS``.  The shim
(native/common/marshal.c) uses an answer only while it is younger than
``PUBLISHED_MAX_AGE_MS``, so a dead or stuck daemon is noticed on the next round trip.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path
from typing import Callable

from vgpu.wire import protocol as p

Compute = Callable[[int, bytes], bytes]


def fnv1a(data: bytes) -> int:
    """32-bit FNV-1a: where a key's probing starts (the C reader hashes alike)."""
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


class Published:
    def __init__(self, path: Path, compute: Compute, per_op_limit: int) -> None:
        self.path = path
        self.compute = compute
        self.per_op_limit = per_op_limit
        size = p.PUBLISHED_HEADER_SIZE + p.PUBLISHED_SLOTS * p.PUBLISHED_SLOT_SIZE
        # A new file, never the old one truncated: clients of a previous daemon may still
        # have that one mapped, and a shrinking mapping would crash them.
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        p.PUBLISHED_HEADER.pack_into(self.map, 0, p.PUBLISHED_MAGIC, p.PUBLISHED_SLOTS, p.PUBLISHED_SLOT_SIZE,
                                     p.PUBLISHED_KEY_MAX)
        #: key -> (slot, op, request payload)
        self.entries: dict[bytes, tuple[int, int, bytes]] = {}
        self.per_op: dict[int, int] = {}
        self.refreshed = time.monotonic()

    def _slot_for(self, key: bytes) -> int | None:
        start = fnv1a(key)
        used = {slot for slot, _, _ in self.entries.values()}
        for probe in range(p.PUBLISHED_PROBES):
            slot = (start + probe) % p.PUBLISHED_SLOTS
            if slot not in used:
                return slot
        return None

    def file(self, key: bytes, op: int, payload: bytes, answer: bytes) -> None:
        """Publish the answer to a request seen on the wire, if there is room for it."""
        if key in self.entries:
            self._write(self.entries[key][0], key, answer)
            return
        if len(key) > p.PUBLISHED_KEY_MAX or len(answer) > p.PUBLISHED_ANSWER_MAX:
            return
        if self.per_op.get(op, 0) >= self.per_op_limit:
            return  # callers that pass varying garbage must not fill the table
        slot = self._slot_for(key)
        if slot is None:
            return
        self.entries[key] = (slot, op, payload)
        self.per_op[op] = self.per_op.get(op, 0) + 1
        self._write(slot, key, answer)

    def _write(self, slot: int, key: bytes, answer: bytes) -> None:
        base = p.PUBLISHED_HEADER_SIZE + slot * p.PUBLISHED_SLOT_SIZE
        writing = (int.from_bytes(self.map[base:base + 4], "little") + 1) | 1
        self.map[base:base + 4] = writing.to_bytes(4, "little")  # odd: readers retry
        p.PUBLISHED_SLOT.pack_into(self.map, base, writing, len(key), len(answer), time.monotonic_ns())
        start = base + p.PUBLISHED_SLOT.size
        self.map[start:start + len(key)] = key
        start += p.PUBLISHED_KEY_MAX
        self.map[start:start + len(answer)] = answer
        self.map[base:base + 4] = (writing + 1).to_bytes(4, "little")  # even: complete

    def refresh(self) -> None:
        """Recompute every published answer (after a change of state, and periodically)."""
        for key, (slot, op, payload) in self.entries.items():
            self._write(slot, key, self.compute(op, payload))
        self.refreshed = time.monotonic()

    def refresh_if_due(self) -> None:
        if time.monotonic() - self.refreshed >= p.PUBLISHED_REFRESH_MS / 1000:
            self.refresh()

    def close(self) -> None:
        self.map.close()
        self.path.unlink(missing_ok=True)
