"""What one vgpud holds: its GPUs, the client sessions and their event sets."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from vgpu.api.manifest import load
from vgpu.device.events import EventHub
from vgpu.device.gpu import Gpu
from vgpu.device.gpuset import GpuSet
from vgpu.device.launches import LaunchLog
from vgpu.remote.tokens import Tenant
from vgpu.server.loop_calls import LoopCalls
from vgpu.server.windows import Windows


@dataclass
class Session:
    """One client process; its connections (one per thread) share it."""

    id: int
    pid: int
    uid: int
    exe: str
    started: float = field(default_factory=time.time)
    connections: int = 0
    calls: int = 0
    #: the environment the driver honours, as the process's first connection reported it
    env: dict[str, str] = field(default_factory=dict)
    #: the process's shared-memory windows (bulk data without the socket)
    windows: Windows | None = None
    #: the first error of work sent without waiting, for the next synchronising call
    deferred_error: int = 0
    #: frames sent without waiting for an answer
    posted: int = 0
    #: for a client that came over the network: its tenant (from its token), and where it runs
    #: ("host/pid" as its relay reported it)
    tenant: Tenant | None = None
    peer: str = ""
    #: the daemon's GPU indices behind the process's CUDA ordinals (vgpu.server.cuda_service)
    cuda_visible: list[int] | None = None
    #: a kernel of this process is computing: its later frames wait in ``held`` (connection,
    #: frame), in arrival order, and run when it ends (stream order, whatever the thread)
    computing: bool = False
    #: (connection, frame, Later or None): a Later is the rest of a frame already begun
    held: deque = field(default_factory=deque)
    #: the connection whose frame vgpud is carrying out (a kernel's printed output goes to it)
    serving: object = None
    #: the error a failed kernel left: every later CUDA call of the process returns it, as a
    #: GPU's sticky errors (illegal address, assert, trap) do
    sticky_error: int = 0

    def __post_init__(self) -> None:
        if self.windows is None:
            self.windows = Windows(self.pid)


@dataclass
class Later:
    """What a service answers when a frame's rest must wait for the kernel it started (a
    launch frame's later records, a graph's later nodes): ``finish`` carries it on when the
    kernel has ended and gives the frame's reply, or another Later."""

    finish: Callable[[], object]


def _kernel_ended(session: Session, job: object) -> None:
    """Without a daemon (a service driven directly): the process may go on."""
    session.computing = False


class DaemonState:
    def __init__(self, gpuset: GpuSet, backend: str = "sim", make_gpu: Callable[..., Gpu] = Gpu) -> None:
        """``make_gpu``: the kind of GPU (vgpu.device.measured.MeasuredGpu reads a real one's
        telemetry)."""
        nvml = load("nvml")
        self.gpuset = gpuset
        self.backend = backend
        self.started = time.time()
        self.pid = os.getpid()
        self.events = EventHub({k: v for k, v in nvml.constants.items() if k.startswith("nvmlEventType")})
        self.gpus = [make_gpu(ident, self.events) for ident in gpuset.gpus]
        #: every kernel launch, kept after its process ends (`vgpu launches`)
        self.launches = LaunchLog()
        self.sessions: dict[int, Session] = {}
        #: (peer, pid) -> session: local processes have no peer; network ones are told apart by it
        self._by_process: dict[tuple[str, int], Session] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        #: session id -> tenant name, kept after sessions end (a tenant's recorded launches stay its own)
        self.session_tenants: dict[int, str] = {}
        #: called with each session that ends, after its memory is freed (services' clean-up)
        self.on_detach: list[Callable[[Session], None]] = []
        #: whether kernels compute (vgpud --compute on|off)
        self.compute = True
        #: work other threads hand to the selector thread, and what it does when a process's
        #: kernel has ended (the daemon's: run the frames that waited for it)
        self.loop_calls = LoopCalls()
        self.kernel_ended: Callable[[Session, object], None] = _kernel_ended

    def attach(self, pid: int, uid: int, exe: str, env: dict[str, str] | None = None,
               tenant: Tenant | None = None, peer: str = "") -> Session:
        """The session of a process, made on its first connection."""
        with self._lock:
            session = self._by_process.get((peer, pid))
            if session is None:
                session = Session(next(self._ids), pid, uid, exe, env=env or {}, tenant=tenant, peer=peer)
                self.sessions[session.id] = session
                self._by_process[(peer, pid)] = session
                if tenant is not None:
                    self.session_tenants[session.id] = tenant.name
                    for gpu in self.gpus:
                        gpu.tenants[session.id] = (tenant.name, tenant.memory)
            session.connections += 1
            return session

    def visible_gpus(self, session: Session) -> list[Gpu]:
        """The GPUs a session may use: all of them, or its tenant's."""
        if session.tenant is None or session.tenant.gpus is None:
            return self.gpus
        return [gpu for gpu in self.gpus if gpu.index in session.tenant.gpus]

    @staticmethod
    def reserved_view(gpu: Gpu, session: Session) -> int:
        """The driver's reserved memory, part of a whole GPU's view; none in a quota's."""
        return gpu.profile.memory_reserved if session.tenant is None or session.tenant.memory is None else 0

    def memory_view(self, gpu: Gpu, session: Session, cuda: bool = False) -> tuple[int, int]:
        """(total, used) of a GPU's memory as a session sees it: the GPU's (NVML's or CUDA's
        total), or for a tenant with a quota the quota and the tenant's own use."""
        total = gpu.cuda_total if cuda else gpu.profile.memory_total
        tenant = session.tenant
        if tenant is None or tenant.memory is None:
            return total, gpu.memory_used_by_processes + (0 if cuda else gpu.profile.memory_reserved)
        return min(total, tenant.memory), gpu.tenant_used(tenant.name)

    def detach(self, session: Session) -> None:
        """Drop one connection; the last one frees everything the process held."""
        with self._lock:
            session.connections -= 1
            if session.connections > 0:
                return
            self.sessions.pop(session.id, None)
            if self._by_process.get((session.peer, session.pid)) is session:
                del self._by_process[(session.peer, session.pid)]
        for gpu in self.gpus:
            gpu.memory.free_owned_by(session.id)
            gpu.release(session.id)
            gpu.tenants.pop(session.id, None)
        self.events.free_owned_by(session.id)
        for forget in self.on_detach:
            forget(session)
        session.windows.close()
