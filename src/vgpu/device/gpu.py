"""One simulated GPU's changing state: memory held by sessions, activity, the power and
thermal model behind its telemetry, ECC counters and faults.

Readings follow from what sessions did: utilisation is the share of the last second
during which work was scheduled, power follows utilisation, temperature follows power
with a thermal time constant, clocks rise from idle to boost under load.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from vgpu.device.events import EventHub
from vgpu.device.gpuset import GpuIdentity
from vgpu.device.memory import DeviceMemory

AMBIENT_C = 30.0
THERMAL_TAU_S = 20.0
POWER_TAU_S = 1.0
UTIL_WINDOW_S = 1.0
#: the memory controller is busy for this share of the time kernels run (a model constant)
MEMORY_SHARE = 0.6

FAULT_KINDS = ("xid", "ecc-sbe", "ecc-dbe", "lost")


class OutOfMemory(Exception):
    pass


@dataclass
class EccCounters:
    single_volatile: int = 0
    single_aggregate: int = 0
    double_volatile: int = 0
    double_aggregate: int = 0


@dataclass
class Gpu:
    ident: GpuIdentity
    events: EventHub
    clock: Callable[[], float] = time.monotonic
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: bytes held on this GPU per session id
    held: dict[int, int] = field(default_factory=dict)
    #: scheduled work: (start, end, session id), in start order
    busy: deque = field(default_factory=deque)
    busy_until: float = 0.0
    lost: bool = False
    ecc: EccCounters = field(default_factory=EccCounters)
    xids: list[int] = field(default_factory=list)
    #: session id -> (tenant name, the tenant's memory quota on this GPU or None), for
    #: sessions that came over the network with a token
    tenants: dict[int, tuple[str, int | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.profile = self.ident.profile
        self.memory = DeviceMemory(self.ident.index, self.ident.pci_domain)
        self._last = self.clock()
        self._power_w = float(self.profile.idle_power_w)
        self._temp_c = self._equilibrium(self._power_w)
        self._energy_j = 0.0

    @property
    def index(self) -> int:
        return self.ident.index

    # memory -----------------------------------------------------------------------
    @property
    def memory_used_by_processes(self) -> int:
        return sum(self.held.values())

    @property
    def memory_free(self) -> int:
        return self.profile.memory_total - self.profile.memory_reserved - self.memory_used_by_processes

    @property
    def cuda_total(self) -> int:
        """What CUDA reports as the GPU's memory (less than NVML's total, as on real cards)."""
        return self.profile.cuda_total

    @property
    def cuda_free(self) -> int:
        return max(self.cuda_total - self.memory_used_by_processes, 0)

    def hold(self, session: int, nbytes: int, cuda: bool = False) -> None:
        """Account ``nbytes`` of device memory to a session (its allocations); CUDA's
        allocations are bounded by CUDA's total, which is less than NVML's free memory, and a
        tenant's by its quota."""
        with self.lock:
            if nbytes < 0:
                raise ValueError("a negative allocation")
            free = self.cuda_free if cuda else self.memory_free
            tenant = self.tenants.get(session)
            if tenant is not None and tenant[1] is not None:
                free = min(free, tenant[1] - self.tenant_used(tenant[0]))
            if nbytes > free:
                raise OutOfMemory(f"GPU {self.index}: {nbytes} bytes asked, {free} free")
            self.held[session] = self.held.get(session, 0) + nbytes

    def tenant_used(self, tenant: str) -> int:
        """Bytes the sessions of one tenant hold on this GPU."""
        with self.lock:
            return sum(self.held.get(s, 0) for s, (name, _) in self.tenants.items() if name == tenant)

    def release(self, session: int, nbytes: int | None = None) -> None:
        """Give back ``nbytes`` (all, if None) held by a session."""
        with self.lock:
            left = 0 if nbytes is None else max(self.held.get(session, 0) - nbytes, 0)
            if left:
                self.held[session] = left
            else:
                self.held.pop(session, None)

    # activity ---------------------------------------------------------------------
    def run(self, session: int, seconds: float) -> float:
        """Queue ``seconds`` of work behind what is already queued; returns when it ends."""
        with self.lock:
            now = self.clock()
            start = max(now, self.busy_until)
            self.busy_until = start + seconds
            if self.busy and self.busy[-1][1] >= start and self.busy[-1][2] == session:
                self.busy[-1] = (self.busy[-1][0], self.busy_until, session)  # back to back: one interval
            else:
                self.busy.append((start, self.busy_until, session))
            while self.busy and self.busy[0][1] < now - 60:
                self.busy.popleft()
            return self.busy_until

    def busy_share(self, since: float, until: float, session: int | None = None) -> float:
        """Share of [since, until] during which work (of one session, or any) ran."""
        with self.lock:
            total = 0.0
            for start, end, owner in self.busy:
                if session is None or owner == session:
                    total += max(0.0, min(end, until) - max(start, since))
            return min(total / max(until - since, 1e-9), 1.0)

    def utilization(self) -> tuple[int, int]:
        """(GPU %, memory %) over the last second."""
        now = self.clock()
        share = self.busy_share(now - UTIL_WINDOW_S, now)
        return round(share * 100), round(share * MEMORY_SHARE * 100)

    def processes(self) -> list[int]:
        """Sessions holding memory on this GPU."""
        with self.lock:
            return sorted(self.held)

    # power, temperature, clocks ---------------------------------------------------
    def _target_power(self, utilization: float) -> float:
        p = self.profile
        return p.idle_power_w + (0.9 * p.power_limit_w - p.idle_power_w) * utilization

    def _equilibrium(self, power_w: float) -> float:
        full = self.profile.temp_slowdown_c - 10
        return AMBIENT_C + (full - AMBIENT_C) * power_w / self.profile.power_limit_w + 5.0

    def _advance(self) -> None:
        """Integrate power, energy and temperature up to now."""
        now = self.clock()
        dt = now - self._last
        if dt <= 0:
            return
        util = self.busy_share(now - UTIL_WINDOW_S, now)
        target = self._target_power(util)
        self._power_w = target + (self._power_w - target) * math.exp(-dt / POWER_TAU_S)
        self._energy_j += self._power_w * dt
        equilibrium = self._equilibrium(self._power_w)
        self._temp_c = equilibrium + (self._temp_c - equilibrium) * math.exp(-dt / THERMAL_TAU_S)
        self._last = now

    def power_mw(self) -> int:
        with self.lock:
            self._advance()
            return int(self._power_w * 1000)

    def energy_mj(self) -> int:
        with self.lock:
            self._advance()
            return int(self._energy_j * 1000)

    def temperature_c(self) -> int:
        with self.lock:
            self._advance()
            return int(round(self._temp_c))

    def sm_clock_mhz(self) -> int:
        util, _ = self.utilization()
        p = self.profile
        if util == 0 and not self.held:
            return p.idle_sm_clock_mhz
        return p.max_sm_clock_mhz if util else (p.idle_sm_clock_mhz + p.max_sm_clock_mhz) // 2

    def mem_clock_mhz(self) -> int:
        return self.profile.max_mem_clock_mhz

    def pstate(self) -> int:
        util, _ = self.utilization()
        return 0 if util or self.held else 8

    def fan_percent(self) -> int:
        return max(30, min(100, 30 + (self.temperature_c() - 40) * 2))

    # faults -----------------------------------------------------------------------
    def inject(self, kind: str, xid: int = 0) -> str:
        """Inject a fault; returns what happened, in words."""
        types = self.events.types
        if kind == "xid":
            self.xids.append(xid)
            self.events.publish(self.index, types["nvmlEventTypeXidCriticalError"], xid)
            return f"GPU {self.index}: Xid {xid} delivered"
        if kind in ("ecc-sbe", "ecc-dbe"):
            if not self.profile.ecc:
                raise ValueError(f"GPU {self.index} ({self.profile.model}) has ECC off; no ECC error can occur")
            if kind == "ecc-sbe":
                self.ecc.single_volatile += 1
                self.ecc.single_aggregate += 1
                self.events.publish(self.index, types["nvmlEventTypeSingleBitEccError"], 0)
                return f"GPU {self.index}: single-bit ECC error counted"
            self.ecc.double_volatile += 1
            self.ecc.double_aggregate += 1
            self.events.publish(self.index, types["nvmlEventTypeDoubleBitEccError"], 0)
            self.xids.append(48)
            self.events.publish(self.index, types["nvmlEventTypeXidCriticalError"], 48)
            return f"GPU {self.index}: double-bit ECC error counted, Xid 48 delivered"
        if kind == "lost":
            self.lost = True
            self.xids.append(79)
            self.events.publish(self.index, types["nvmlEventTypeXidCriticalError"], 79)
            return f"GPU {self.index}: fallen off the bus (Xid 79); it answers NVML_ERROR_GPU_IS_LOST"
        raise ValueError(f"unknown fault {kind!r}; one of xid=N, ecc-sbe, ecc-dbe, lost")

    def clear(self) -> None:
        self.lost = False
        self.ecc.single_volatile = self.ecc.double_volatile = 0
        self.xids.clear()
