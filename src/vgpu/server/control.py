"""Control requests (JSON over OP_CONTROL): what the tools and tests ask of vgpud.

Until the CUDA shim exists, ``hold`` and ``run`` are how a session allocates memory and
does work on a GPU; the NVML telemetry follows from them exactly as it will from CUDA.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Callable

from vgpu.device.gpu import OutOfMemory
from vgpu.server.state import Session

if TYPE_CHECKING:
    from vgpu.server.daemon import Daemon

Reply = dict[str, Any]


class ControlError(Exception):
    pass


def _gpu(daemon: Daemon, request: dict[str, Any]):
    index = request.get("gpu")
    if not isinstance(index, int) or not 0 <= index < len(daemon.state.gpus):
        raise ControlError(f"no GPU {index!r}; this vgpud has GPUs 0 to {len(daemon.state.gpus) - 1}")
    return daemon.state.gpus[index]


def _package_version() -> str:
    try:
        return version("vgpu")
    except PackageNotFoundError:
        return "unknown (not installed as a package)"


def status(daemon: Daemon, session: Session, request: dict[str, Any]) -> Reply:
    state = daemon.state
    gpus = []
    for gpu in state.visible_gpus(session):
        util, mem_util = gpu.utilization()
        total, used = state.memory_view(gpu, session)
        gpus.append({
            "index": gpu.index, "profile": gpu.profile.key, "name": gpu.profile.name, "uuid": gpu.ident.uuid,
            "pci_bus_id": gpu.ident.pci_bus_id, "memory_total": total,
            "memory_reserved": state.reserved_view(gpu, session),
            "memory_used": used - state.reserved_view(gpu, session),
            "utilization": util, "lost": gpu.lost, "temperature": gpu.temperature_c(),
            "power_mw": gpu.power_mw(),
        })
    sessions = [{
        "id": s.id, "pid": s.pid, "uid": s.uid, "exe": s.exe, "connections": s.connections, "calls": s.calls, "posted": s.posted,
        "started": s.started, "shared_windows": len(s.windows), "direct_memory": s.windows.direct,
        "held": {str(g.index): g.held[s.id] for g in state.gpus if s.id in g.held},
        "tenant": s.tenant.name if s.tenant else None, "peer": s.peer,
    } for s in list(state.sessions.values()) if _sees(session, s)]
    return {"pid": state.pid, "version": _package_version(), "backend": state.backend, "socket": str(daemon.socket_path),
            "started": state.started, "spec": state.gpuset.spec, "driver_version": state.gpuset.driver_version,
            "cuda_version": state.gpuset.cuda_version, "gpus": gpus, "sessions": sessions, "you": session.id,
            "compute": {"enabled": state.compute, "launches": state.launches.compute_counts()}}


def _sees(viewer: Session, other: Session) -> bool:
    """A tenant sees its own sessions; the GPU host's own tools see all."""
    return viewer.tenant is None or (other.tenant is not None and other.tenant.name == viewer.tenant.name)


def hold(daemon: Daemon, session: Session, request: dict[str, Any]) -> Reply:
    gpu = _gpu(daemon, request)
    try:
        gpu.hold(session.id, int(request["bytes"]))
    except OutOfMemory as error:
        raise ControlError(str(error)) from None
    return {"held": gpu.held.get(session.id, 0)}


def release(daemon: Daemon, session: Session, request: dict[str, Any]) -> Reply:
    gpu = _gpu(daemon, request)
    gpu.release(session.id, request.get("bytes"))
    return {"held": gpu.held.get(session.id, 0)}


def run(daemon: Daemon, session: Session, request: dict[str, Any]) -> Reply:
    seconds = float(request.get("seconds", 0))
    if not 0 <= seconds <= 3600:
        raise ControlError("seconds must be between 0 and 3600")
    return {"ends_in": _gpu(daemon, request).run(session.id, seconds) - daemon.state.gpus[0].clock()}


def fault(daemon: Daemon, session: Session, request: dict[str, Any]) -> Reply:
    gpu = _gpu(daemon, request)
    try:
        return {"message": gpu.inject(str(request.get("kind")), int(request.get("xid", 0)))}
    except ValueError as error:
        raise ControlError(str(error)) from None


def clear(daemon: Daemon, session: Session, request: dict[str, Any]) -> Reply:
    targets = daemon.state.gpus if request.get("gpu") is None else [_gpu(daemon, request)]
    for gpu in targets:
        gpu.clear()
    return {"cleared": [gpu.index for gpu in targets]}


#: what every launches reply says, so no reader mistakes a recorded launch for a computed one
#: (or the other way round)
NOT_COMPUTED = ("vgpud runs with --compute off: the simulator validates, records and times kernel launches; it "
                "does not compute their results")
SIMULATED = ("the simulator computes each launch whose module carries PTX for the device, on this host's CPUs "
             "(\"compute\" says which did and why others did not); durations are the cost model's, host time is "
             "what computing took")
COMPUTED = ("the cuda backend runs kernel launches on this host's GPUs, so their results are real; their "
            "durations are not measured (0)")


def launches(daemon: Daemon, session: Session, request: dict[str, Any]) -> Reply:
    pid = request.get("pid")
    limit = request.get("limit")
    if pid is not None and not isinstance(pid, int) or limit is not None and not isinstance(limit, int):
        raise ControlError("pid and limit must be integers")
    log = daemon.state.launches
    owners = daemon.state.session_tenants
    chosen = [launch for launch in log.select(pid)
              if session.tenant is None or owners.get(launch.session) == session.tenant.name]
    chosen = chosen[-limit:] if limit else chosen
    return {"launches": [launch.as_json() for launch in chosen], "counts": {str(k): v for k, v in log.counts.items()},
            "computed": daemon.state.backend == "cuda" or daemon.state.compute,
            "note": COMPUTED if daemon.state.backend == "cuda" else SIMULATED if daemon.state.compute else NOT_COMPUTED}


def stop(daemon: Daemon, session: Session, request: dict[str, Any]) -> Reply:
    daemon.stop()
    return {"stopping": daemon.state.pid}


COMMANDS: dict[str, Callable[[Daemon, Session, dict[str, Any]], Reply]] = {
    "status": status, "hold": hold, "release": release, "run": run, "fault": fault, "clear": clear, "launches": launches,
    "stop": stop,
}


#: what a network client (a tenant) may ask: looking, not changing the GPU host
NETWORK_COMMANDS = {"status", "launches"}


def handle(daemon: Daemon, session: Session, request: Any) -> Reply:
    command = request.get("cmd") if isinstance(request, dict) else None
    if command not in COMMANDS:
        return {"ok": False, "error": f"unknown control command {command!r}; known: {', '.join(COMMANDS)}"}
    if session.peer and command not in NETWORK_COMMANDS:
        return {"ok": False, "error": f"{command!r} is for the GPU host's own tools; a tenant may ask "
                                      f"{', '.join(sorted(NETWORK_COMMANDS))}"}
    try:
        return {"ok": True, **COMMANDS[command](daemon, session, request)}
    except (ControlError, KeyError, TypeError, ValueError) as error:
        return {"ok": False, "error": str(error)}
