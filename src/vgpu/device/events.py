"""Event sets: sessions register for event types on GPUs and wait for them (nvmlEventSetWait)."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    gpu: int
    type: int
    data: int


@dataclass
class EventSet:
    id: int
    owner: int
    #: GPU index -> registered event-type mask
    masks: dict[int, int] = field(default_factory=dict)
    queue: deque = field(default_factory=deque)


class EventHub:
    """All event sets of a daemon; ``publish`` wakes the sets registered for an event."""

    def __init__(self, types: dict[str, int]) -> None:
        self.types = types
        self._sets: dict[int, EventSet] = {}
        self._ids = itertools.count(1)
        self._cond = threading.Condition()

    def create(self, owner: int) -> EventSet:
        with self._cond:
            event_set = EventSet(next(self._ids), owner)
            self._sets[event_set.id] = event_set
            return event_set

    def get(self, set_id: int, owner: int) -> EventSet | None:
        event_set = self._sets.get(set_id)
        return event_set if event_set is not None and event_set.owner == owner else None

    def register(self, event_set: EventSet, gpu: int, mask: int) -> None:
        with self._cond:
            event_set.masks[gpu] = event_set.masks.get(gpu, 0) | mask

    def free(self, event_set: EventSet) -> None:
        with self._cond:
            self._sets.pop(event_set.id, None)
            self._cond.notify_all()

    def free_owned_by(self, owner: int) -> None:
        with self._cond:
            for set_id in [s.id for s in self._sets.values() if s.owner == owner]:
                del self._sets[set_id]
            self._cond.notify_all()

    def publish(self, gpu: int, event_type: int, data: int) -> int:
        """Queue an event for every set registered for it; returns how many sets got it."""
        with self._cond:
            receivers = [s for s in self._sets.values() if s.masks.get(gpu, 0) & event_type]
            for event_set in receivers:
                event_set.queue.append(Event(gpu, event_type, data))
            self._cond.notify_all()
            return len(receivers)

    def wait(self, event_set: EventSet, timeout_s: float) -> Event | None:
        """The next event of a set, or None when the wait times out (or the set is freed)."""
        with self._cond:
            self._cond.wait_for(lambda: event_set.queue or event_set.id not in self._sets, timeout_s)
            return event_set.queue.popleft() if event_set.queue else None
