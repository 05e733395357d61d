"""From the per-process trace records to processes, GPU library loads, failures and a diagnosis.

>>> report = Report.read(Path("trace"))                         # doctest: +SKIP
>>> [p.pid for p in report.processes if p.loaded("libcuda.so.1")]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from vgpu.api.manifest import result_name
from vgpu.diagnose.libraries import DRIVER_SONAMES, GPU_LIBRARY, identify
from vgpu.trace.recorder import Run

#: the driver library each API's calls come from
API_LIBRARY = {"cuda": "libcuda.so.1", "nvml": "libnvidia-ml.so.1"}


def is_gpu_library(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base in DRIVER_SONAMES or bool(GPU_LIBRARY.search(base))


@dataclass
class Load:
    t: float
    name: str    # what was asked for ("" for the program and what the loader added itself)
    path: str    # the path the loader opened
    file: str    # that path with every symlink resolved
    kind: str    # what the file is: vgpu, driver, runtime, other (vgpu.diagnose.libraries)


@dataclass
class Search:
    """One library name looked up, and each path the loader tried for it, in order."""
    t: float
    name: str
    candidates: list[dict[str, str]] = field(default_factory=list)  # path, via, problem ("" = usable)
    found: str = ""  # the path loaded, "" if none


@dataclass
class Failure:
    t: float
    pid: int
    text: str


@dataclass
class Call:
    t: float
    library: str
    call: str
    result: int
    args: list[Any] = field(default_factory=list)  # inputs; scalar and handle outputs after success

    @property
    def count(self) -> int | None:
        """The device count a cuDeviceGetCount or nvmlDeviceGetCount call reported."""
        counts = self.call.endswith(("GetCount", "GetCount_v2")) and self.result == 0 and len(self.args) == 1
        return self.args[0] if counts and isinstance(self.args[0], int) else None

    @property
    def result_name(self) -> str:
        return result_name(self.library, self.result)


@dataclass
class TracedProcess:
    pid: int
    ppid: int = 0
    exe: str = ""
    argv: list[str] = field(default_factory=list)
    ld_library_path: str = ""    # as the process started: a parent may have rewritten it
    start: float = 0.0
    end: float = 0.0
    exited: bool = False         # an exit was recorded: False after a crash, a kill or _exit
    traced: bool = True          # False: seen only from outside (a static or setuid program)
    execs: list[str] = field(default_factory=list)  # earlier programs of this pid, before exec
    loads: list[Load] = field(default_factory=list)
    searches: list[Search] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    children: list[int] = field(default_factory=list)

    @property
    def lifetime_ms(self) -> float:
        return (self.end - self.start) * 1000

    @property
    def title(self) -> str:
        return " ".join(" ".join(self.argv).split()) or self.exe

    def loaded(self, soname: str) -> list[Load]:
        return [load for load in self.loads
                if soname in (load.name.rsplit("/", 1)[-1], load.path.rsplit("/", 1)[-1])]

    def gpu_loads(self) -> list[Load]:
        return [load for load in self.loads if is_gpu_library(load.name or load.path) or load.kind == "vgpu"]

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "ppid": self.ppid, "exe": self.exe, "argv": self.argv,
                "ld_library_path": self.ld_library_path, "start": self.start,
                "end": self.end, "lifetime_ms": round(self.lifetime_ms, 3), "exited": self.exited,
                "execs": self.execs, "children": self.children, "traced": self.traced,
                "gpu_loads": [vars(load) for load in self.gpu_loads()],
                "loads": [vars(load) for load in self.loads],
                "searches": [vars(search) for search in self.searches],
                "calls": [dict(vars(call), result_name=call.result_name, count=call.count) for call in self.calls],
                "failures": [failure.text for failure in self.failures]}


def _events(path: Path) -> list[dict[str, Any]]:
    """A process's records; a line cut short by a crash is skipped, not fatal."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def _process(pid: int, events: list[dict[str, Any]]) -> TracedProcess:
    process = TracedProcess(pid)
    searches: dict[str, Search] = {}
    for event in sorted(events, key=lambda e: e.get("t", 0)):
        kind, t = event.get("ev"), event.get("t", 0.0)
        process.start = process.start or t
        process.end = max(process.end, t)
        if kind == "process":
            if process.exe:
                process.execs.append(process.exe)
            process.ppid = process.ppid or event.get("ppid", 0)
            process.exe, process.argv = event.get("exe", ""), event.get("argv", [])
            process.ld_library_path = event.get("ld_library_path", "")
        elif kind == "search":
            searches[event["name"]] = Search(t, event["name"])
            process.searches.append(searches[event["name"]])
        elif kind == "candidate":
            search = searches.setdefault(event["name"], Search(t, event["name"]))
            search.candidates.append({key: event.get(key, "") for key in ("path", "via", "problem", "target")})
            if event.get("problem") and event["problem"] != "missing" and is_gpu_library(event["name"]):
                target = f" to {event['target']}" if event.get("target") else ""
                outcome = "the loader stops there and the load fails" if event["problem"] == "not an ELF file" \
                    else "the loader skipped it"
                process.failures.append(Failure(t, pid, f"{event['name']}: {event['path']} (found through "
                                                        f"{event['via']}): {event['problem']}{target}; "
                                                        f"{outcome}"))
        elif kind == "load":
            load = Load(t, event.get("name", ""), event.get("path", ""), event.get("file", ""), "other")
            if is_gpu_library(load.name or load.path) or is_gpu_library(load.file):
                load.kind = identify(Path(load.file)).kind
            process.loads.append(load)
            if load.name in searches:
                searches[load.name].found = load.path
        elif kind == "dlerror":
            process.failures.append(Failure(t, pid, f"dlopen failed: {event.get('message', '')}"))
        elif kind == "call":
            call = Call(t, event["library"], event["call"], event["result"], event.get("args", []))
            if call.call == "connect":
                process.failures.append(Failure(t, pid, f"the vgpu {API_LIBRARY[call.library]} could not reach "
                                                        f"vgpud at {event.get('socket')} ({event.get('error')}); "
                                                        "start one with `vgpu up` or trace `vgpu run -- CMD`"))
                continue
            process.calls.append(call)
            if call.result != 0 and call.call.startswith(("cuInit", "nvmlInit")):
                process.failures.append(Failure(t, pid, f"{call.call} returned {call.result} ({call.result_name})"))
        elif kind == "exit":
            process.exited = True
    for search in process.searches:
        if not search.found and is_gpu_library(search.name) and "/" not in search.name:
            process.failures.append(Failure(search.t, pid, f"{search.name} was not found: "
                                                           f"{len(search.candidates)} paths tried, none usable"))
    process.failures.sort(key=lambda failure: failure.t)
    return process


@dataclass
class Report:
    processes: list[TracedProcess]
    exit_status: int | None = None

    @classmethod
    def read(cls, trace_dir: Path, run: Run | None = None) -> Report:
        """The records in ``trace_dir``; ``run`` adds the command itself where the loader never saw it."""
        by_pid: dict[int, list[dict[str, Any]]] = {}
        for path in trace_dir.glob("*.jsonl"):
            if path.stem.isdigit():
                by_pid.setdefault(int(path.stem), []).extend(_events(path))
        processes = sorted((_process(pid, events) for pid, events in by_pid.items()), key=lambda p: p.start)
        known = {process.pid: process for process in processes}
        if run and run.pid and run.pid not in known:
            outside = TracedProcess(run.pid, ppid=os.getpid(), exe=shutil.which(run.argv[0]) or run.argv[0],
                                    argv=run.argv, start=run.start, end=run.end, exited=run.status >= 0,
                                    traced=False)
            processes.insert(0, outside)
            known[run.pid] = outside
        for process in processes:
            if process.ppid in known:
                known[process.ppid].children.append(process.pid)
        return cls(processes, run.status if run else None)

    @property
    def roots(self) -> list[TracedProcess]:
        pids = {process.pid for process in self.processes}
        return [process for process in self.processes if process.ppid not in pids]

    @property
    def start(self) -> float:
        return min((p.start for p in self.processes), default=0.0)

    @property
    def end(self) -> float:
        return max((p.end for p in self.processes), default=0.0)

    def failures(self) -> list[Failure]:
        return sorted((f for p in self.processes for f in p.failures), key=lambda failure: failure.t)

    def diagnosis(self) -> list[str]:
        """The answer in plain words: who loaded the driver libraries, from where, and what came of it."""
        lines = []
        roots = self.roots
        lines += [f"pid {p.pid} ({_short(p)}) was not traced: a statically linked program (a pure Go binary) "
                  f"or a setuid one, which the dynamic loader does not audit; {len(p.children)} of its child "
                  "processes were traced" for p in self.processes if not p.traced]
        if all(not p.traced for p in self.processes):
            return lines + ["no traced process: the command started no dynamically linked program"]
        for soname in DRIVER_SONAMES:
            loaders = [p for p in self.processes if p.loaded(soname)]
            if not loaders:
                lines.append(f"no process loaded {soname}")
                continue
            where = "; ".join(
                f"pid {p.pid} ({_short(p)}, lived {p.lifetime_ms:.0f} ms) from {load.path}"
                + (f" -> {load.file}" if load.file != load.path else "") + f" [{load.kind}]"
                for p in loaders for load in p.loaded(soname)[:1])
            lines.append(f"{soname} was loaded by {len(loaders)} process{'es' if len(loaders) > 1 else ''}: {where}")
            if roots and all(p not in roots for p in loaders):
                lines.append(f"{soname} was loaded only in child processes, never in the process you started "
                             f"(pid {roots[0].pid}): GPU discovery happened in the children")
        lines.extend(self._initialisation())
        failures = self.failures()
        if failures:
            first = failures[0]
            lines.append(f"first failure: pid {first.pid} ({_short(self.process(first.pid))}): {first.text}")
        return lines

    def _initialisation(self) -> list[str]:
        lines = []
        for process in self.processes:
            for init, count_calls in (("cuInit", ("cuDeviceGetCount",)),
                                      ("nvmlInit", ("nvmlDeviceGetCount_v2", "nvmlDeviceGetCount"))):
                inits = [c for c in process.calls if c.call.startswith(init)]
                if not inits:
                    continue
                counts = [c.count for c in process.calls if c.call in count_calls and c.count is not None]
                first = inits[0]
                state = "initialised" if first.result == 0 else f"did not initialise: {first.call} returned " \
                                                                  f"{first.result} ({first.result_name})"
                devices = f", {counts[0]} device{'s' if counts[0] != 1 else ''} reported" if counts else ""
                lines.append(f"pid {process.pid} ({_short(process)}): the {API_LIBRARY[first.library]} driver "
                             f"{state}{devices}")
        return lines

    @cached_property
    def _index(self) -> dict[int, TracedProcess]:
        return {process.pid: process for process in self.processes}

    def process(self, pid: int) -> TracedProcess:
        return self._index[pid]

    def children(self, process: TracedProcess) -> list[TracedProcess]:
        return [self._index[pid] for pid in process.children]

    def depth_first(self) -> list[TracedProcess]:
        """Every process, each followed by its descendants: the order of the tree and the timeline."""
        ordered: list[TracedProcess] = []

        def visit(process: TracedProcess) -> None:
            ordered.append(process)
            for child in self.children(process):
                visit(child)

        for root in self.roots:
            visit(root)
        return ordered

    def to_json(self) -> dict[str, Any]:
        return {"exit_status": self.exit_status, "start": self.start, "end": self.end,
                "roots": [p.pid for p in self.roots], "diagnosis": self.diagnosis(),
                "failures": [vars(failure) for failure in self.failures()],
                "processes": [process.to_json() for process in self.processes]}


def _short(process: TracedProcess) -> str:
    return process.exe.rsplit("/", 1)[-1] or str(process.pid)
