"""Running a launch's CTAs over host threads: the one loop both the in-process engine and the
kernel worker use."""

from __future__ import annotations

import os
import threading
from typing import Any

#: each device-function activation is a host call: room for the deepest recursion a lane's
#: stack allows (reserved address space, used only as deep as the recursion goes)
HOST_STACK = 256 << 20


def run_ctas(entry: Any, launch: int, ctas: int, threads: int | None = None) -> int:
    """Run CTAs [0, ctas) of a launch on ``threads`` threads (default: the cores this process
    may use; as many as there are CTAs: every CTA at once, as a cooperative launch needs),
    handed out in chunks from a shared counter, none after the first error.  The first error
    code, or 0.  (ctypes releases the GIL for the call, so the threads use every core.)"""
    threads = max(1, min(threads or len(os.sched_getaffinity(0)), ctas))
    chunk = max(1, min(64, ctas // (threads * 8)))
    lock = threading.Lock()
    state = {"next": 0, "code": 0}

    def work() -> None:
        while True:
            with lock:
                start = state["next"]
                if start >= ctas or state["code"]:
                    return
                state["next"] = start + chunk
            code = entry(launch, start, min(chunk, ctas - start))
            if code:
                with lock:
                    state["code"] = state["code"] or code
                return

    previous = threading.stack_size(HOST_STACK)
    try:
        pool = [threading.Thread(target=work) for _ in range(threads)]
        for thread in pool:
            thread.start()
    finally:
        threading.stack_size(previous)
    for thread in pool:
        thread.join()
    return state["code"]
