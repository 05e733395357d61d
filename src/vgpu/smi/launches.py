"""`vgpu launches`: the kernels each process launched on the simulated GPUs, as vgpud
recorded them, with their modelled durations and whether their results were computed."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from rich.console import Console
from rich.table import Table


def demangled(names: list[str]) -> dict[str, str]:
    """Readable names for C++ kernel symbols, through binutils' c++filt when it is installed
    (each name maps to itself otherwise)."""
    unique = sorted(set(names))
    tool = shutil.which("c++filt")
    if not tool or not unique:
        return {name: name for name in unique}
    try:
        result = subprocess.run([tool], input="\n".join(unique), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {name: name for name in unique}
    readable = result.stdout.splitlines()
    return dict(zip(unique, readable)) if len(readable) == len(unique) else {name: name for name in unique}


def _dims(values: list[int]) -> str:
    return "x".join(str(v) for v in values)


def _computed(compute: dict[str, Any] | None) -> str:
    """yes (host time), no (why), failed, running, or off."""
    if not compute:
        return "off"
    status = compute["status"]
    if status == "computed":
        return f"yes ({compute['host_us'] / 1000:.1f} ms on the host)"
    if status == "not computed":
        return f"no: {compute['reason']}"
    if status == "failed":
        return f"failed ({compute['host_us'] / 1000:.1f} ms)"
    return {"pending": "running"}.get(status, status)


def render(reply: dict[str, Any], console: Console) -> None:
    """A table of launches, oldest first, and what the durations and results mean."""
    records = reply["launches"]
    names = demangled([launch["kernel"] for launch in records])
    table = Table("pid", "GPU", "kernel", "grid", "block", "shared", "stream", "args (digest)", "start µs",
                  "duration µs", "computed", title=f"{len(records)} kernel launches")
    for launch in records:
        kind = " (cooperative)" if launch["cooperative"] else " (graph)" if launch["graph"] else ""
        table.add_row(str(launch["pid"]), str(launch["gpu"]), names[launch["kernel"]] + kind, _dims(launch["grid"]),
                      _dims(launch["block"]), str(launch["shared_bytes"]), str(launch["stream"]),
                      f"{launch['args_size']} B {launch['args_digest']}", f"{launch['start_us']:.1f}",
                      f"{launch['duration_us']:.1f}", _computed(launch.get("compute")))
    console.print(table)
    totals = ", ".join(f"pid {pid}: {count}" for pid, count in reply["counts"].items())
    if totals:
        console.print(f"launches since vgpud started: {totals}")
    console.print(f"note: {reply['note']}")
