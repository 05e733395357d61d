"""Read every GPU's state through libnvidia-ml.so.1, as any NVML client would.

The vgpu library is loaded first (by path, RTLD_GLOBAL), so pynvml's own
``dlopen("libnvidia-ml.so.1")`` finds it by its SONAME; under ``vgpu run`` the
loader would find the same file through LD_LIBRARY_PATH anyway.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import pynvml

from vgpu.launcher import library_path

MIB = 1 << 20


@dataclass
class Process:
    pid: int
    name: str | None
    used_memory: int | None
    type: str = "C"


@dataclass
class GpuSnapshot:
    index: int
    name: str | None = None
    uuid: str | None = None
    serial: str | None = None
    pci_bus_id: str | None = None
    pci_device_id: int | None = None
    pci_subsystem_id: int | None = None
    minor_number: int | None = None
    brand: int | None = None
    architecture: int | None = None
    compute_capability: str | None = None
    persistence_mode: bool | None = None
    display_active: bool | None = None
    memory_total: int | None = None
    memory_reserved: int | None = None
    memory_used: int | None = None
    memory_free: int | None = None
    bar1_total: int | None = None
    bar1_used: int | None = None
    utilization_gpu: int | None = None
    utilization_memory: int | None = None
    encoder: int | None = None
    decoder: int | None = None
    temperature: int | None = None
    temperature_slowdown: int | None = None
    temperature_shutdown: int | None = None
    fan_speed: int | None = None
    pstate: int | None = None
    power_draw_mw: int | None = None
    power_limit_mw: int | None = None
    power_min_mw: int | None = None
    power_max_mw: int | None = None
    clock_graphics: int | None = None
    clock_sm: int | None = None
    clock_mem: int | None = None
    clock_max_sm: int | None = None
    clock_max_mem: int | None = None
    compute_mode: int | None = None
    ecc_enabled: bool | None = None
    ecc_corrected_volatile: int | None = None
    ecc_uncorrected_volatile: int | None = None
    ecc_uncorrected_aggregate: int | None = None
    mig_mode: bool | None = None
    pcie_generation: int | None = None
    pcie_width: int | None = None
    lost: bool = False
    processes: list[Process] = field(default_factory=list)


@dataclass
class Snapshot:
    driver_version: str | None
    cuda_version: int | None
    nvml_version: str | None
    gpus: list[GpuSnapshot]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _try(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except pynvml.NVMLError:
        return None


def load_library() -> None:
    """Load vgpu's libnvidia-ml.so.1 so that pynvml's dlopen by that name finds it."""
    ctypes.CDLL(str(library_path()), mode=os.RTLD_NOW | ctypes.RTLD_GLOBAL)


def _gpu(index: int) -> GpuSnapshot:
    n = pynvml
    snap = GpuSnapshot(index)
    try:
        handle = n.nvmlDeviceGetHandleByIndex(index)
    except n.NVMLError_GpuIsLost:
        snap.lost = True
        return snap
    snap.name = _try(lambda: n.nvmlDeviceGetName(handle))
    snap.uuid = _try(lambda: n.nvmlDeviceGetUUID(handle))
    snap.serial = _try(lambda: n.nvmlDeviceGetSerial(handle))
    pci = _try(lambda: n.nvmlDeviceGetPciInfo(handle))
    if pci is not None:
        snap.pci_bus_id = pci.busId if isinstance(pci.busId, str) else pci.busId.decode()
        snap.pci_device_id, snap.pci_subsystem_id = pci.pciDeviceId, pci.pciSubSystemId
    snap.minor_number = _try(lambda: n.nvmlDeviceGetMinorNumber(handle))
    snap.brand = _try(lambda: n.nvmlDeviceGetBrand(handle))
    snap.architecture = _try(lambda: n.nvmlDeviceGetArchitecture(handle))
    cc = _try(lambda: n.nvmlDeviceGetCudaComputeCapability(handle))
    snap.compute_capability = f"{cc[0]}.{cc[1]}" if cc else None
    snap.persistence_mode = _try(lambda: n.nvmlDeviceGetPersistenceMode(handle) == n.NVML_FEATURE_ENABLED)
    snap.display_active = _try(lambda: n.nvmlDeviceGetDisplayActive(handle) == n.NVML_FEATURE_ENABLED)
    memory = _try(lambda: n.nvmlDeviceGetMemoryInfo(handle, version=n.nvmlMemory_v2))
    if memory is not None:
        snap.memory_total, snap.memory_reserved = memory.total, memory.reserved
        snap.memory_used, snap.memory_free = memory.used, memory.free
    bar1 = _try(lambda: n.nvmlDeviceGetBAR1MemoryInfo(handle))
    if bar1 is not None:
        snap.bar1_total, snap.bar1_used = bar1.bar1Total, bar1.bar1Used
    util = _try(lambda: n.nvmlDeviceGetUtilizationRates(handle))
    if util is not None:
        snap.utilization_gpu, snap.utilization_memory = util.gpu, util.memory
    snap.encoder = _try(lambda: n.nvmlDeviceGetEncoderUtilization(handle)[0])
    snap.decoder = _try(lambda: n.nvmlDeviceGetDecoderUtilization(handle)[0])
    snap.temperature = _try(lambda: n.nvmlDeviceGetTemperature(handle, n.NVML_TEMPERATURE_GPU))
    snap.temperature_slowdown = _try(lambda: n.nvmlDeviceGetTemperatureThreshold(
        handle, n.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN))
    snap.temperature_shutdown = _try(lambda: n.nvmlDeviceGetTemperatureThreshold(
        handle, n.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN))
    snap.fan_speed = _try(lambda: n.nvmlDeviceGetFanSpeed(handle))
    snap.pstate = _try(lambda: n.nvmlDeviceGetPerformanceState(handle))
    snap.power_draw_mw = _try(lambda: n.nvmlDeviceGetPowerUsage(handle))
    snap.power_limit_mw = _try(lambda: n.nvmlDeviceGetEnforcedPowerLimit(handle))
    limits = _try(lambda: n.nvmlDeviceGetPowerManagementLimitConstraints(handle))
    if limits is not None:
        snap.power_min_mw, snap.power_max_mw = limits
    snap.clock_graphics = _try(lambda: n.nvmlDeviceGetClockInfo(handle, n.NVML_CLOCK_GRAPHICS))
    snap.clock_sm = _try(lambda: n.nvmlDeviceGetClockInfo(handle, n.NVML_CLOCK_SM))
    snap.clock_mem = _try(lambda: n.nvmlDeviceGetClockInfo(handle, n.NVML_CLOCK_MEM))
    snap.clock_max_sm = _try(lambda: n.nvmlDeviceGetMaxClockInfo(handle, n.NVML_CLOCK_SM))
    snap.clock_max_mem = _try(lambda: n.nvmlDeviceGetMaxClockInfo(handle, n.NVML_CLOCK_MEM))
    snap.compute_mode = _try(lambda: n.nvmlDeviceGetComputeMode(handle))
    ecc = _try(lambda: n.nvmlDeviceGetEccMode(handle))
    snap.ecc_enabled = ecc[0] == n.NVML_FEATURE_ENABLED if ecc else None
    if snap.ecc_enabled:
        snap.ecc_corrected_volatile = _try(lambda: n.nvmlDeviceGetTotalEccErrors(
            handle, n.NVML_MEMORY_ERROR_TYPE_CORRECTED, n.NVML_VOLATILE_ECC))
        snap.ecc_uncorrected_volatile = _try(lambda: n.nvmlDeviceGetTotalEccErrors(
            handle, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC))
        snap.ecc_uncorrected_aggregate = _try(lambda: n.nvmlDeviceGetTotalEccErrors(
            handle, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_AGGREGATE_ECC))
    mig = _try(lambda: n.nvmlDeviceGetMigMode(handle))
    snap.mig_mode = mig[0] == n.NVML_DEVICE_MIG_ENABLE if mig else None
    snap.pcie_generation = _try(lambda: n.nvmlDeviceGetCurrPcieLinkGeneration(handle))
    snap.pcie_width = _try(lambda: n.nvmlDeviceGetCurrPcieLinkWidth(handle))
    for kind, read in (("C", n.nvmlDeviceGetComputeRunningProcesses), ("G", n.nvmlDeviceGetGraphicsRunningProcesses)):
        for proc in _try(lambda: read(handle)) or []:
            name = _try(lambda: n.nvmlSystemGetProcessName(proc.pid))
            snap.processes.append(Process(proc.pid, name, proc.usedGpuMemory, kind))
    return snap


def take() -> Snapshot:
    """Initialise NVML, read everything, shut NVML down."""
    load_library()
    pynvml.nvmlInit()
    try:
        count = pynvml.nvmlDeviceGetCount()
        return Snapshot(
            driver_version=_try(pynvml.nvmlSystemGetDriverVersion),
            cuda_version=_try(pynvml.nvmlSystemGetCudaDriverVersion_v2),
            nvml_version=_try(pynvml.nvmlSystemGetNVMLVersion),
            gpus=[_gpu(i) for i in range(count)],
        )
    finally:
        pynvml.nvmlShutdown()
