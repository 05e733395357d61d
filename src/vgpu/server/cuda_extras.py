"""What vgpud serves of the device and context extras: a context's events (cuCtxRecordEvent and
cuCtxWaitEvent act on all the work of a context, its default stream and every stream created in
it, for a primary context its device's green contexts' streams too, as cuda.h says), and
batches of managed-memory prefetches and discards."""

from __future__ import annotations

from typing import Any

from vgpu.server.dispatch import Caller

CONTEXT_KINDS = (1 << 32) | (1 << 33)  # a primary or created context id of the shim's
GREEN_CONTEXT = 1 << 34
SUCCESS, INVALID_VALUE, INVALID_DEVICE, INVALID_CONTEXT, NOT_SUPPORTED = 0, 1, 101, 201, 801


class ContextEvents:
    """Mixed into CudaService (streams, default streams, host time and events are its own)."""

    def _context_streams(self, c: Caller, context: int) -> list[Any] | None:
        """The streams holding a context's work, or None for no such context."""
        if not context & CONTEXT_KINDS:
            return None
        gpu, _ = self._device_call(c, context & 0xFFFF)
        if gpu is None:
            return None
        primary = bool(context & (1 << 32))
        mine = [s for s in self.streams.values() if s.owner == c.session.id and s.gpu is gpu and
                (s.context == context or (primary and s.context & GREEN_CONTEXT))]
        default = self.default_streams.get((c.session.id, gpu.index))
        return mine + ([default] if default is not None else [])

    def cuCtxRecordEvent(self, c: Caller, hCtx: int, hEvent: Any) -> int:
        streams = self._context_streams(c, hCtx or c.context)
        if streams is None:
            return INVALID_CONTEXT
        hEvent.capture = None
        hEvent.recorded_at = max([self.host_time.get(c.session.id, 0.0), *(s.ready_at for s in streams)])
        self._release_ready(hEvent.recorded_at)
        return SUCCESS

    def cuCtxWaitEvent(self, c: Caller, hCtx: int, hEvent: Any) -> int:
        streams = self._context_streams(c, hCtx or c.context)
        if streams is None:
            return INVALID_CONTEXT
        if hEvent.recorded_at is not None:  # later work of the context starts after the event
            for stream in streams:
                stream.ready_at = max(stream.ready_at, hEvent.recorded_at)
        return SUCCESS


class ManagedBatches:
    """Batches of managed-memory prefetches and discards (CUDA 13), mixed into CudaService: each
    operation as cuMemPrefetchAsync_v2 makes it (HostMemoryServing), one batch in stream order.

    A discarded range's contents are indeterminate until written or prefetched again, so here
    they stay as they were; its pages stop counting against any device, as on a real GPU, where
    the driver drops them instead of migrating them."""

    def _batch(self, c: Caller, dptrs: Any, sizes: Any, count: int) -> list[tuple[Any, Any, int, int]] | None:
        """The batch's (window, managed, start, size) ranges, or None where one is no managed memory."""
        if not count or dptrs is None or sizes is None or len(dptrs) != count or len(sizes) != count:
            return None
        ranges = []
        for address, size in zip(dptrs, sizes):
            window, managed = self._managed_at(c, int(address), int(size))
            if managed is None or not size:
                return None
            ranges.append((window, managed, int(address), int(size)))
        return ranges

    def _batch_locations(self, c: Caller, count: int, locations: Any, firsts: Any,
                         number: int) -> list[int | None] | None:
        """Each operation's destination (None: an invalid location), or None for malformed lists:
        the first index 0, each greater than the one before, the last below ``count``."""
        if not number or number > count or locations is None or firsts is None:
            return None
        starts = [int(i) for i in firsts]
        if len(starts) != number or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) \
                or starts[-1] >= count:
            return None
        bounds = starts[1:] + [count]
        chosen: list[int | None] = []
        for location, start, end in zip(locations, starts, bounds):
            chosen += [self._mem_location(c, location)] * (end - start)
        return chosen

    def _concurrent_managed_access(self, c: Caller) -> bool:
        return all(self._attributes[i].get("CONCURRENT_MANAGED_ACCESS", 0) for i in self._visible(c))

    def _discard(self, c: Caller, ranges: list[tuple[Any, Any, int, int]]) -> None:
        from vgpu.server.cuda_hostmem import HOST, RESIDENCY_PAGE

        for window, managed, address, size in ranges:
            offset = address - window.address
            start = -(-offset // RESIDENCY_PAGE) * RESIDENCY_PAGE  # whole pages inside the range
            end = (offset + size) // RESIDENCY_PAGE * RESIDENCY_PAGE
            if start < end:
                for piece_start, piece_end, at in managed.location.pieces(start, end):
                    if at != HOST:
                        self.state.gpus[at].release(c.session.id, piece_end - piece_start)
                managed.location.set(start, end, HOST)

    def cuMemPrefetchBatchAsync(self, c: Caller, dptrs: Any, sizes: Any, count: int, prefetchLocs: Any,
                                prefetchLocIdxs: Any, numPrefetchLocs: int, flags: int, hStream: Any) -> int:
        return self._prefetch_batch(c, dptrs, sizes, count, prefetchLocs, prefetchLocIdxs, numPrefetchLocs,
                                    flags, hStream, discard=False)

    def cuMemDiscardAndPrefetchBatchAsync(self, c: Caller, dptrs: Any, sizes: Any, count: int, prefetchLocs: Any,
                                          prefetchLocIdxs: Any, numPrefetchLocs: int, flags: int,
                                          hStream: Any) -> int:
        return self._prefetch_batch(c, dptrs, sizes, count, prefetchLocs, prefetchLocIdxs, numPrefetchLocs,
                                    flags, hStream, discard=True)

    def _prefetch_batch(self, c: Caller, dptrs: Any, sizes: Any, count: int, locations: Any, firsts: Any,
                        number: int, flags: int, stream: Any, discard: bool) -> int:
        if not self._concurrent_managed_access(c):
            return NOT_SUPPORTED
        ranges = self._batch(c, dptrs, sizes, count)
        destinations = self._batch_locations(c, count, locations, firsts, number)
        if ranges is None or destinations is None or flags:
            return INVALID_VALUE
        if any(to is None for to in destinations):
            return INVALID_DEVICE
        if discard:
            self._discard(c, ranges)
        for (_, _, address, size), to in zip(ranges, destinations):
            rc = self._prefetch(c, address, size, to, 0, stream)
            if rc != SUCCESS:
                return rc
        return SUCCESS

    def cuMemDiscardBatchAsync(self, c: Caller, dptrs: Any, sizes: Any, count: int, flags: int,
                               hStream: Any) -> int:
        if not self._concurrent_managed_access(c):
            return NOT_SUPPORTED
        ranges = self._batch(c, dptrs, sizes, count)
        if ranges is None or flags:
            return INVALID_VALUE
        self._discard(c, ranges)
        return SUCCESS
