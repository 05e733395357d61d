"""A GPU whose readings come from this host's NVML: the cuda backend's GPUs.

Utilisation, temperature, power, energy, clocks, fan speed and performance state are the
device's own (found by its UUID, which NVML's GPUs wear on that backend); memory, processes
and faults stay vgpud's accounting, so a tenant still sees its own memory and processes. A
reading NVML cannot give falls back to the model, and the first such failure is logged.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

import pynvml

from vgpu.device.gpu import Gpu

log = logging.getLogger("vgpud")
_init_lock = threading.Lock()
_initialised: list[bool] = []


def _nvml_ready() -> bool:
    """nvmlInit once for the process; False (logged) where the host has no working NVML."""
    with _init_lock:
        if not _initialised:
            try:
                pynvml.nvmlInit()
                _initialised.append(True)
            except pynvml.NVMLError as error:
                log.warning("this host's NVML does not start (%s): GPU readings stay the model's", error)
                _initialised.append(False)
        return _initialised[0]


@dataclass
class MeasuredGpu(Gpu):
    def __post_init__(self) -> None:
        super().__post_init__()
        self._handle: Any = None
        self._failed: set[str] = set()

    def _read(self, what: str, read: Callable[[Any], Any], model: Callable[[], Any]) -> Any:
        """NVML's reading for this GPU, or the model's when NVML cannot give it."""
        if _nvml_ready():
            try:
                if self._handle is None:
                    self._handle = pynvml.nvmlDeviceGetHandleByUUID(self.ident.uuid)
                return read(self._handle)
            except pynvml.NVMLError as error:
                if what not in self._failed:
                    self._failed.add(what)
                    log.info("GPU %d: NVML gives no %s (%s); the model's is reported", self.index, what, error)
        return model()

    def utilization(self) -> tuple[int, int]:
        def read(handle: Any) -> tuple[int, int]:
            rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
            return rates.gpu, rates.memory
        return self._read("utilisation", read, super().utilization)

    def power_mw(self) -> int:
        return self._read("power", pynvml.nvmlDeviceGetPowerUsage, super().power_mw)

    def energy_mj(self) -> int:
        return self._read("energy", pynvml.nvmlDeviceGetTotalEnergyConsumption, super().energy_mj)

    def temperature_c(self) -> int:
        return self._read("temperature", lambda h: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
                          super().temperature_c)

    def sm_clock_mhz(self) -> int:
        return self._read("SM clock", lambda h: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                          super().sm_clock_mhz)

    def mem_clock_mhz(self) -> int:
        return self._read("memory clock", lambda h: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
                          super().mem_clock_mhz)

    def pstate(self) -> int:
        return self._read("performance state", pynvml.nvmlDeviceGetPerformanceState, super().pstate)

    def fan_percent(self) -> int:
        return self._read("fan speed", pynvml.nvmlDeviceGetFanSpeed, super().fan_percent)
