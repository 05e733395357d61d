"""Stream memory operations: cuStreamWriteValue32/64, cuStreamWaitValue32/64 and
cuStreamBatchMemOp, in stream order.

vgpud does a stream's work when it is called, so a write happens at once, after everything
queued before it, and takes its place on the stream's modelled timeline.  A wait whose
condition already holds orders the stream's timeline only.  A wait whose condition does not
hold yet holds the stream: its later copies, memsets, memory operations, event records and
event waits are kept, in order, and done the moment a write (a stream write, a copy or a
memset, by any process of this vgpud, into device memory or memory opened through IPC)
makes the condition true.  Events recorded behind a hold read as not ready, and a stream
that waits for such an event is held until it is recorded.  Kernel launches are kept too, and
compute when they are released, on the memory as it is then; the stream's work kept after
such a kernel waits, held again, until the kernel has ended (vgpud's other requests of the
process wait for it anyway).

Page-locked and managed memory can hold the waited values too (vgpu.server.cuda_hostmem); as
vgpud does not see the host write into them, conditions are checked again whenever a
query or a synchronising call asks about a held stream.

vgpud never blocks on a hold.  A call that has to wait for held work (cuStreamSynchronize,
cuCtxSynchronize, cuEventSynchronize, a synchronous copy, a copy into pageable host memory)
answers CUDA_ERROR_TIMEOUT at once, and vgpud logs which wait holds the stream: a real GPU
would wait, for ever if nothing is left to satisfy the condition.  cuStreamQuery and
cuEventQuery answer CUDA_ERROR_NOT_READY.  Not held: host functions and graph launches.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from vgpu.api.manifest import load
from vgpu.device.memory import InvalidAddress
from vgpu.server.dispatch import Caller
from vgpu.server.state import Session

log = logging.getLogger("vgpud")
C = load("cuda").constants
SUCCESS = C["CUDA_SUCCESS"]
INVALID_VALUE = C["CUDA_ERROR_INVALID_VALUE"]
#: what a call that would wait for a held stream answers (a real GPU would wait)
HELD = C["CUDA_ERROR_TIMEOUT"]
NOT_READY = C["CUDA_ERROR_NOT_READY"]
WAIT_FLUSH = C["CU_STREAM_WAIT_VALUE_FLUSH"]
#: the real driver's limit on one batch's operations
MAX_BATCH = 256
#: a memory operation's modelled time, seconds
MEMOP_SECONDS = 1e-6


def condition_holds(operation: int, current: int, value: int, width: int) -> bool:
    """A wait's condition (CU_STREAM_WAIT_VALUE_*); GEQ compares cyclically, as the driver does."""
    mask = (1 << 8 * width) - 1
    if operation == C["CU_STREAM_WAIT_VALUE_GEQ"]:
        return (current - value) & mask < 1 << (8 * width - 1)
    if operation == C["CU_STREAM_WAIT_VALUE_EQ"]:
        return current == value
    if operation == C["CU_STREAM_WAIT_VALUE_AND"]:
        return current & value != 0
    return ~(current | value) & mask != 0  # NOR


@dataclass
class Hold:
    """A stream's later work, kept until ``ready()``."""

    stream: Any
    caller: Caller
    ready: Callable[[], bool]
    why: str
    work: deque[Callable[[], int]] = field(default_factory=deque)


class StreamMemoryOperations:
    """A mixin of CudaService: the memory operations and the holds their waits make."""

    def _init_memops(self) -> None:
        #: id(stream) -> its hold (a stream's dataclass is not hashable)
        self.holds: dict[int, Hold] = {}
        #: id(event) -> (the session, the held stream) that will record it
        self.unrecorded: dict[int, tuple[Session, Any]] = {}
        self._releasing = False

    def _forget_memops(self, session: Session) -> None:
        for key in [k for k, h in self.holds.items() if h.caller.session is session]:
            del self.holds[key]
        for key in [k for k, (recorder, _) in self.unrecorded.items() if recorder is session]:
            del self.unrecorded[key]
        self._release_ready()  # streams of other processes that waited for those records

    # holds -------------------------------------------------------------------------------
    def _held(self, stream: Any) -> Hold | None:
        return self.holds.get(id(stream)) if self.holds and stream is not None else None

    def _hold_work(self, c: Caller, stream: Any, work: Callable[[], int], waits: bool = False) -> int | None:
        """Keep ``work`` behind the stream's hold; None when the stream is not held. A call whose
        caller would wait for it (``waits``) cannot be kept: it answers HELD."""
        hold = self._held(stream)
        if hold is None:
            return None
        if waits:
            return self._refuse_held(hold)
        hold.work.append(work)
        return SUCCESS

    def _hold_behind_kernel(self, c: Caller, stream: Any) -> None:
        """While a kernel of the process computes, hold ``stream`` (if nothing holds it yet):
        its kept work goes on once the kernel has ended (see CudaService's kernel end)."""
        if self._held(stream) is None and c.session.computing:
            session = c.session
            self.holds[id(stream)] = Hold(stream, c, lambda: not session.computing,
                                          "a kernel of the process that still computes")

    @staticmethod
    def _refuse_held(hold: Hold) -> int:
        log.warning("pid %d waits for a stream held by %s, which nothing issued so far satisfies; "
                    "a real GPU would wait (for ever if nothing does)", hold.caller.session.pid, hold.why)
        return HELD

    @staticmethod
    def _pageable_now(data: Any) -> bytes | bytearray:
        """The bytes of pageable host memory a held copy reads: taken at the call, as the real
        driver stages them (the frame's buffer is reused, and the caller may reuse its own)."""
        if hasattr(data, "copy_to"):  # the caller's memory, reached directly
            fetched = bytearray(len(data))
            data.copy_to([memoryview(fetched)])
            return fetched
        return bytes(data)

    def _event_unrecorded(self, event: Any) -> bool:
        return bool(self.unrecorded) and id(getattr(event, "source", event)) in self.unrecorded

    def _held_for_sync(self, c: Caller, stream: Any = None, event: Any = None, query: bool = False) -> int | None:
        """What a synchronising call answers while the work it waits for is held (None: not held):
        for a stream, an event, or (neither) every stream of the caller's current context."""
        if not self.holds:
            return None
        self._release_ready()  # the host may have written a waited value into page-locked memory
        if event is not None:
            recorder = self.unrecorded.get(id(getattr(event, "source", event)))
            hold = self._held(recorder[1]) if recorder is not None else None
        elif stream is not None:
            hold = self._held(stream)
        else:
            gpu, _ = self._context_gpu(c)
            hold = next((h for h in self.holds.values()
                         if h.caller.session is c.session and h.stream.gpu is gpu), None)
        if hold is None:
            return None
        return NOT_READY if query else self._refuse_held(hold)

    def _record_held(self, c: Caller, stream: Any, event: Any, record: Callable[[], int]) -> int | None:
        """An event record behind a hold: the event reads as not ready until it is done."""
        if self._held(stream) is None:
            return None
        source = getattr(event, "source", event)
        self.unrecorded[id(source)] = (c.session, stream)

        def recorded() -> int:
            self.unrecorded.pop(id(source), None)
            return record()
        return self._hold_work(c, stream, recorded)

    def _wait_event_held(self, c: Caller, stream: Any, event: Any, wait: Callable[[], int]) -> int | None:
        """A stream waiting for an event recorded behind a hold is held until the record is done."""
        if self._held(stream) is None and not self._event_unrecorded(event):
            return None
        if self._held(stream) is None:
            source = getattr(event, "source", event)
            self.holds[id(stream)] = Hold(stream, c, lambda: id(source) not in self.unrecorded,
                                          "a wait for an event recorded behind a stream memory wait")
        return self._hold_work(c, stream, wait)

    def _release_ready(self, moment: float = 0.0) -> None:
        """Something was written: do the kept work of every hold whose condition now holds (work
        done may release further holds, or hold its stream again)."""
        if not self.holds or self._releasing:
            return
        self._releasing = True
        try:
            progress = True
            while progress:
                progress = False
                for key, hold in list(self.holds.items()):
                    if self.holds.get(key) is not hold or not hold.ready():
                        continue
                    del self.holds[key]
                    hold.stream.ready_at = max(hold.stream.ready_at, moment)
                    for work in hold.work:  # work met by a new hold joins it, in order
                        rc = work()
                        if rc and not hold.caller.session.deferred_error:
                            hold.caller.session.deferred_error = rc
                    progress = True
        finally:
            self._releasing = False

    # the operations ---------------------------------------------------------------------
    def _read_value(self, c: Caller, address: int, width: int) -> int | None:
        """The value at a device-side address (device memory, or the caller's page-locked or
        managed memory); None where the caller cannot reach it."""
        _, memory = self._address_space(c, (address,))
        try:
            return int.from_bytes(memory.read(c.session.id, address, width), "little") if memory else None
        except InvalidAddress:
            return None

    def _write_value(self, c: Caller, stream: Any, addr: int, value: int, width: int, flags: int) -> int:
        if flags & ~C["CU_STREAM_WRITE_VALUE_NO_MEMORY_BARRIER"] or addr % width:
            return INVALID_VALUE
        if self.capturing(stream) is not None:
            return self._capture_node(stream, C["CU_GRAPH_NODE_TYPE_BATCH_MEM_OP"], lambda caller, on:
                                      self._write_value(caller, on, addr, value, width, flags), ("write", width))
        data = (value & ((1 << 8 * width) - 1)).to_bytes(width, "little")
        return self._timed(c, stream, MEMOP_SECONDS, lambda m: m.write(c.session.id, addr, data), addr)

    def _wait_value(self, c: Caller, stream: Any, addr: int, value: int, width: int, flags: int) -> int:
        operation = flags & ~WAIT_FLUSH
        if operation not in (C["CU_STREAM_WAIT_VALUE_GEQ"], C["CU_STREAM_WAIT_VALUE_EQ"],
                             C["CU_STREAM_WAIT_VALUE_AND"], C["CU_STREAM_WAIT_VALUE_NOR"]) or addr % width:
            return INVALID_VALUE
        if self._read_value(c, addr, width) is None:
            return INVALID_VALUE
        if flags & WAIT_FLUSH and not self._attributes[stream.gpu.index].get("CAN_FLUSH_REMOTE_WRITES", 0):
            return INVALID_VALUE  # the flush needs a device that can flush remote writes
        if self.capturing(stream) is not None:
            return self._capture_node(stream, C["CU_GRAPH_NODE_TYPE_BATCH_MEM_OP"], lambda caller, on:
                                      self._wait_value(caller, on, addr, value, width, flags), ("wait", width))
        kept = self._hold_work(c, stream, lambda: self._wait_value(c, stream, addr, value, width, flags))
        if kept is not None:
            return kept

        def ready() -> bool:
            current = self._read_value(c, addr, width)
            return current is not None and condition_holds(operation, current, value, width)
        if not ready():
            self.holds[id(stream)] = Hold(stream, c, ready, f"cuStreamWaitValue{8 * width} at 0x{addr:x} "
                                                            f"(operation {operation}, value {value})")
            return SUCCESS
        stream.queue(self.host_time.get(c.session.id, 0.0), MEMOP_SECONDS)
        return SUCCESS

    def cuStreamWriteValue32_v2(self, c: Caller, stream: Any, addr: int, value: int, flags: int) -> int:
        return self._write_value(c, stream, addr, value, 4, flags)

    def cuStreamWriteValue64_v2(self, c: Caller, stream: Any, addr: int, value: int, flags: int) -> int:
        return self._write_value(c, stream, addr, value, 8, flags)

    def cuStreamWaitValue32_v2(self, c: Caller, stream: Any, addr: int, value: int, flags: int) -> int:
        return self._wait_value(c, stream, addr, value, 4, flags)

    def cuStreamWaitValue64_v2(self, c: Caller, stream: Any, addr: int, value: int, flags: int) -> int:
        return self._wait_value(c, stream, addr, value, 8, flags)

    def cuStreamBatchMemOp_v2(self, c: Caller, stream: Any, count: int, paramArray: Any, flags: int) -> int:
        """The operations in order, each as its own call would do it (a wait holds the rest)."""
        if flags or not 0 < count <= MAX_BATCH or paramArray is None or len(paramArray) < count:
            return INVALID_VALUE
        kinds = {C["CU_STREAM_MEM_OP_WAIT_VALUE_32"]: (self._wait_value, 4),
                 C["CU_STREAM_MEM_OP_WAIT_VALUE_64"]: (self._wait_value, 8),
                 C["CU_STREAM_MEM_OP_WRITE_VALUE_32"]: (self._write_value, 4),
                 C["CU_STREAM_MEM_OP_WRITE_VALUE_64"]: (self._write_value, 8)}
        operations = []
        for op in paramArray[:count]:
            if op.operation == C["CU_STREAM_MEM_OP_BARRIER"]:
                continue  # every operation is ordered already
            if op.operation not in kinds:
                return INVALID_VALUE  # remote write flushes need a device that can flush them
            params = op.waitValue if kinds[op.operation][0] == self._wait_value else op.writeValue
            value = params.value if kinds[op.operation][1] == 4 else params.value64
            operations.append((*kinds[op.operation], params.address, value, params.flags))
        for do, width, address, value, op_flags in operations:
            rc = do(c, stream, address, value, width, op_flags)
            if rc:
                return rc
        return SUCCESS

    cuStreamWriteValue32 = cuStreamWriteValue32_v2
    cuStreamWriteValue64 = cuStreamWriteValue64_v2
    cuStreamWaitValue32 = cuStreamWaitValue32_v2
    cuStreamWaitValue64 = cuStreamWaitValue64_v2
    cuStreamBatchMemOp = cuStreamBatchMemOp_v2
