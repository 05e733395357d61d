"""A context's events: cuCtxRecordEvent and cuCtxWaitEvent act on all the work of a context,
its default stream and every stream created in it (for a primary context, its device's green
contexts' streams too, as cuda.h says), not on one stream."""

from __future__ import annotations

from typing import Any

from vgpu.server.dispatch import Caller

CONTEXT_KINDS = (1 << 32) | (1 << 33)  # a primary or created context id of the shim's
GREEN_CONTEXT = 1 << 34
SUCCESS, INVALID_CONTEXT = 0, 201


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
