"""Live processes with GPU libraries mapped, from /proc/PID/maps, and what vgpud knows of them.

A process that lives for milliseconds (an Ollama discovery child) is seen only if a scan
happens to run while it lives: ``watch`` polls often, and still says it can miss some;
``vgpu trace`` sees every process it starts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from vgpu.diagnose.libraries import GPU_LIBRARY, LibraryIdentity, identify


@dataclass
class GpuProcess:
    pid: int
    ppid: int | None
    exe: str | None
    cmdline: list[str]
    started: float | None
    libraries: list[LibraryIdentity] = field(default_factory=list)
    #: vgpud's session for the process: id, connections, calls, memory held per GPU
    session: dict[str, Any] | None = None
    #: why the process's maps could not be read, if they could not
    unreadable: str | None = None

    @property
    def has_driver(self) -> bool:
        return any(lib.kind in ("vgpu", "driver") for lib in self.libraries)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def mapped_gpu_libraries(pid: int) -> list[Path]:
    """The GPU library files a process has mapped, in first-mapped order."""
    seen: dict[str, None] = {}
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and GPU_LIBRARY.search(parts[5]):
                seen.setdefault(parts[5].rstrip("\n").removesuffix(" (deleted)"), None)
    return [Path(p) for p in seen]


def scan(sessions: dict[int, dict[str, Any]] | None = None, everything: bool = False) -> list[GpuProcess]:
    """Processes with a driver library mapped (with ``everything``: any GPU library, a vgpud
    session, or maps this user may not read)."""
    sessions = sessions or {}
    found = []
    for proc in psutil.process_iter(["pid", "ppid", "exe", "cmdline", "create_time"]):
        info = proc.info
        if info["pid"] == os.getpid():
            continue
        entry = GpuProcess(info["pid"], info["ppid"], info["exe"], info["cmdline"] or [], info["create_time"],
                           session=sessions.get(info["pid"]))
        try:
            entry.libraries = [identify(path) for path in mapped_gpu_libraries(info["pid"])]
        except PermissionError as error:
            entry.unreadable = error.strerror
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended while we looked
        if entry.has_driver or (everything and (entry.libraries or entry.session or entry.unreadable)):
            found.append(entry)
    return found


def watch(interval: float, duration: float | None, sessions: Callable[[], dict[int, dict[str, Any]]],
          everything: bool = False) -> Iterator[GpuProcess]:
    """Each process the first time a scan sees it, polling every ``interval`` seconds."""
    seen: set[tuple[int, float | None]] = set()
    end = None if duration is None else time.monotonic() + duration
    while end is None or time.monotonic() < end:
        for entry in scan(sessions(), everything):
            key = (entry.pid, entry.started)
            if key not in seen:
                seen.add(key)
                yield entry
        time.sleep(interval)
