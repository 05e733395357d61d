"""Work other threads hand to the selector thread (a kernel that finished computing): a
queue of callables and a socket pair that wakes the selector when one arrives."""

from __future__ import annotations

import logging
import queue
import socket
from typing import Callable

log = logging.getLogger("vgpud")


class LoopCalls:
    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.wakeup, self._waker = socket.socketpair()
        self.wakeup.setblocking(False)
        self._waker.setblocking(False)

    def post(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the selector thread soon (safe from any thread)."""
        self._calls.put(call)
        try:
            self._waker.send(b"\0")
        except BlockingIOError:
            pass  # the selector has wake-ups enough waiting

    def run_pending(self) -> None:
        """On the selector thread, when ``wakeup`` is readable."""
        try:
            while self.wakeup.recv(4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                call()
            except Exception:  # a bug of ours: it costs that piece of work, never the daemon
                log.exception("vgpud failed to finish work handed to it")

    def close(self) -> None:
        self.wakeup.close()
        self._waker.close()
