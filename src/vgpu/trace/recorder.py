"""Run a command with the loader-audit library and the vgpu libraries' call records on.

Both are switched on through the environment (``LD_AUDIT``, ``VGPU_TRACE_DIR``), which
every child inherits, also one whose parent rewrites ``LD_LIBRARY_PATH`` as Ollama does.
Each process writes its own file as it goes, so a crash leaves a readable record.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from vgpu.launcher import library_path

AUDIT_LIBRARY = "libvgpu-audit.so"
TRACE_DIR_ENV = "VGPU_TRACE_DIR"


def traced_environment(out_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    audit = str(library_path(AUDIT_LIBRARY))
    env["LD_AUDIT"] = ":".join(filter(None, [audit, env.get("LD_AUDIT", "")]))
    env[TRACE_DIR_ENV] = str(out_dir)
    return env


@dataclass
class Run:
    """The command as its parent saw it: what a static or setuid program, which the loader
    never traces, leaves for the report."""
    pid: int | None
    argv: list[str]
    start: float
    end: float
    status: int  # negative: killed by that signal


def run(command: list[str], out_dir: Path, stdout: IO[str] | None = None) -> Run:
    """Run ``command`` traced into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.jsonl"):
        old.unlink()
    start = time.time()
    try:
        process = subprocess.Popen(command, env=traced_environment(out_dir), stdout=stdout)
    except OSError:
        return Run(None, command, start, time.time(), 127)
    status = process.wait()
    return Run(process.pid, command, start, time.time(), status)
