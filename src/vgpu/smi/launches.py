"""`vgpu launches`: the kernels each process launched on the simulated GPUs, as vgpud
recorded them, with their modelled durations."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _dims(values: list[int]) -> str:
    return "x".join(str(v) for v in values)


def render(reply: dict[str, Any], console: Console) -> None:
    """A table of launches, oldest first, and the note that nothing was computed."""
    records = reply["launches"]
    table = Table("pid", "GPU", "kernel", "grid", "block", "shared", "stream", "args (digest)", "start µs",
                  "duration µs", title=f"{len(records)} kernel launches")
    for launch in records:
        kind = " (cooperative)" if launch["cooperative"] else " (graph)" if launch["graph"] else ""
        table.add_row(str(launch["pid"]), str(launch["gpu"]), launch["kernel"] + kind, _dims(launch["grid"]),
                      _dims(launch["block"]), str(launch["shared_bytes"]), str(launch["stream"]),
                      f"{launch['args_size']} B {launch['args_digest']}", f"{launch['start_us']:.1f}",
                      f"{launch['duration_us']:.1f}")
    console.print(table)
    totals = ", ".join(f"pid {pid}: {count}" for pid, count in reply["counts"].items())
    if totals:
        console.print(f"launches since vgpud started: {totals}")
    console.print(f"note: {reply['note']}")
