"""Every kernel launch vgpud accepted, for `vgpu launches`: kept after the process ends
(a discovery child that lives for milliseconds still shows what it launched), up to a
bounded number of the most recent ones."""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from dataclasses import dataclass

#: launches kept, across all processes
HISTORY = 200_000


@dataclass
class ComputeOutcome:
    """Whether a launch's results were computed: "pending" while it runs, "computed",
    "failed" (it ended in a CUDA error), "not computed" (``reason`` says why) or "off"
    (vgpud runs with --compute off); ``host_seconds``: the host time computing took."""

    status: str = "pending"
    reason: str = ""
    host_seconds: float = 0.0

    def as_json(self) -> dict:
        return {"status": self.status, "reason": self.reason, "host_us": round(self.host_seconds * 1e6, 1)}


@dataclass(frozen=True)
class Launch:
    pid: int
    session: int
    at: float            # wall-clock time vgpud recorded it
    gpu: int
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int    # dynamic shared memory
    stream: int          # the stream's id (0 the default stream)
    args: bytes          # the packed parameter buffer
    start: float         # modelled start on the stream, seconds on the process's timeline
    seconds: float       # modelled duration
    cooperative: bool = False
    graph: bool = False  # launched as part of a graph
    compute: ComputeOutcome | None = None

    def as_json(self) -> dict:
        return {"pid": self.pid, "session": self.session, "time": self.at, "gpu": self.gpu, "kernel": self.kernel,
                "grid": list(self.grid), "block": list(self.block), "shared_bytes": self.shared_bytes,
                "stream": self.stream, "args_size": len(self.args), "args_digest": self.digest,
                "args_hex": self.args.hex(), "start_us": round(self.start * 1e6, 3),
                "duration_us": round(self.seconds * 1e6, 3), "cooperative": self.cooperative, "graph": self.graph,
                "compute": (self.compute or ComputeOutcome("off")).as_json()}

    @property
    def digest(self) -> str:
        return hashlib.blake2b(self.args, digest_size=8).hexdigest()


class LaunchLog:
    """Launches as plain tuples in Launch's field order (a launch costs vgpud a few
    microseconds; records become Launch objects only when asked for)."""

    def __init__(self, history: int = HISTORY) -> None:
        self.records: deque[tuple] = deque(maxlen=history)
        #: launches per pid since vgpud started, including those that fell out of the history
        self.counts: dict[int, int] = {}
        self._lock = threading.Lock()

    def add(self, record: tuple) -> None:
        """Keep a launch: the values of Launch's fields, in order."""
        with self._lock:
            self.records.append(record)
            self.counts[record[0]] = self.counts.get(record[0], 0) + 1

    def extend(self, records: list[tuple]) -> None:
        """Keep several launches at once (one lock for a frame of them)."""
        if not records:
            return
        with self._lock:
            self.records.extend(records)
            for record in records:
                self.counts[record[0]] = self.counts.get(record[0], 0) + 1

    def compute_counts(self) -> dict[str, int]:
        """Launches kept, by what became of their results (ComputeOutcome.status)."""
        counts: dict[str, int] = {}
        with self._lock:
            outcomes = [r[14] if len(r) > 14 else None for r in self.records]
        for outcome in outcomes:
            status = outcome.status if outcome is not None else "off"
            counts[status] = counts.get(status, 0) + 1
        return counts

    def select(self, pid: int | None = None, limit: int | None = None) -> list[Launch]:
        with self._lock:
            chosen = [r for r in self.records if pid is None or r[0] == pid]
        return [Launch(*r) for r in (chosen[-limit:] if limit else chosen)]
