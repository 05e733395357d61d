"""NVML, answered from the device model.

Each method is named after the NVML function it implements and takes the decoded
arguments: handles already resolved (a ``Gpu`` or an ``EventSet``), value
parameters as Python values, pointers as ctypes objects to fill, ``Buffer`` and
``HandleOut`` holders.  It returns an ``nvmlReturn_t``.  Functions without a
method are reported to the shim as not implemented, and it answers
``NVML_ERROR_NOT_SUPPORTED`` for them.  Handle fields inside structs carry ids.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path
from typing import Any

from vgpu.api.manifest import load
from vgpu.device.events import EventSet
from vgpu.device.gpu import Gpu
from vgpu.device.gpuset import parse_pci_bus_id
from vgpu.server.dispatch import implemented
from vgpu.server.state import DaemonState, Session
from vgpu.wire.codec import Buffer, HandleOut

API = load("nvml")
C = API.constants
SUCCESS = C["NVML_SUCCESS"]
INVALID = C["NVML_ERROR_INVALID_ARGUMENT"]
NOT_SUPPORTED = C["NVML_ERROR_NOT_SUPPORTED"]
NOT_FOUND = C["NVML_ERROR_NOT_FOUND"]
INSUFFICIENT_SIZE = C["NVML_ERROR_INSUFFICIENT_SIZE"]
VERSION_MISMATCH = C["NVML_ERROR_ARGUMENT_VERSION_MISMATCH"]
TIMEOUT = C["NVML_ERROR_TIMEOUT"]
NOT_AVAILABLE = 0xFFFFFFFF  # NVML_VALUE_NOT_AVAILABLE as an unsigned int
MIB = 1 << 20


def struct_version(typedef: str, version: int) -> int:
    """NVML_STRUCT_VERSION(): the struct's size with the version in the top byte."""
    return ctypes.sizeof(API.ctype_named(typedef)) | (version << 24)


def device_handle_id(gpu: Gpu) -> int:
    return gpu.index + 1


def _string(buffer: Buffer, text: str) -> int:
    data = text.encode()
    if buffer.capacity < len(data) + 1:
        return INSUFFICIENT_SIZE
    buffer.value = data
    return SUCCESS


class NvmlService:
    """The NVML functions vgpud serves."""

    api = API
    CONTEXT_PREFIX = False
    INVALID_HANDLE = INVALID_ARGUMENT = INVALID
    NOT_SUPPORTED = NOT_SUPPORTED
    INTERNAL_ERROR = C["NVML_ERROR_UNKNOWN"]

    def __init__(self, state: DaemonState) -> None:
        self.state = state
        self.implemented = implemented(self)

    def resolve(self, handle_type: str, handle_id: int, session: Session) -> Any:
        if handle_type == "nvmlDevice_t" and 1 <= handle_id <= len(self.state.gpus):
            gpu = self.state.gpus[handle_id - 1]
            return gpu if gpu in self.state.visible_gpus(session) else None
        if handle_type == "nvmlEventSet_t":
            return self.state.events.get(handle_id, session.id)
        return None

    @staticmethod
    def handle_id(obj: Any) -> int:
        if isinstance(obj, Gpu):
            return device_handle_id(obj)
        if isinstance(obj, EventSet):
            return obj.id
        raise TypeError(f"no handle id for {obj!r}")

    @staticmethod
    def refusal(obj: Any) -> int | None:
        """A lost GPU answers nothing but NVML_ERROR_GPU_IS_LOST."""
        return C["NVML_ERROR_GPU_IS_LOST"] if isinstance(obj, Gpu) and obj.lost else None

    # system -------------------------------------------------------------------------
    def nvmlSystemGetDriverVersion(self, s: Session, version: Buffer, length: int) -> int:
        return _string(version, self.state.gpuset.driver_version)

    def nvmlSystemGetNVMLVersion(self, s: Session, version: Buffer, length: int) -> int:
        return _string(version, f"{self.state.gpuset.cuda_version // 1000}.{self.state.gpuset.driver_version}")

    def nvmlSystemGetCudaDriverVersion(self, s: Session, version: Any) -> int:
        version.value = self.state.gpuset.cuda_version
        return SUCCESS

    nvmlSystemGetCudaDriverVersion_v2 = nvmlSystemGetCudaDriverVersion

    def nvmlSystemGetProcessName(self, s: Session, pid: int, name: Buffer, length: int) -> int:
        try:
            text = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() or \
                Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return NOT_FOUND
        return _string(name, text)

    def nvmlUnitGetCount(self, s: Session, unitCount: Any) -> int:
        unitCount.value = 0
        return SUCCESS

    def nvmlGetExcludedDeviceCount(self, s: Session, deviceCount: Any) -> int:
        deviceCount.value = 0
        return SUCCESS

    # enumeration ----------------------------------------------------------------------
    # a network client with a token sees its tenant's GPUs only, numbered from 0
    def nvmlDeviceGetCount_v2(self, s: Session, deviceCount: Any) -> int:
        deviceCount.value = len(self.state.visible_gpus(s))
        return SUCCESS

    nvmlDeviceGetCount = nvmlDeviceGetCount_v2

    def nvmlDeviceGetHandleByIndex_v2(self, s: Session, index: int, device: HandleOut) -> int:
        visible = self.state.visible_gpus(s)
        if not 0 <= index < len(visible):
            return INVALID
        device.value = visible[index]
        return C["NVML_ERROR_GPU_IS_LOST"] if device.value.lost else SUCCESS

    nvmlDeviceGetHandleByIndex = nvmlDeviceGetHandleByIndex_v2

    def _handle_where(self, s: Session, device: HandleOut, match: Any) -> int:
        for gpu in self.state.visible_gpus(s):
            if match(gpu):
                device.value = gpu
                return C["NVML_ERROR_GPU_IS_LOST"] if gpu.lost else SUCCESS
        return NOT_FOUND

    def nvmlDeviceGetHandleByUUID(self, s: Session, uuid: bytes | None, device: HandleOut) -> int:
        if uuid is None:
            return INVALID
        return self._handle_where(s, device, lambda g: g.ident.uuid.encode() == uuid)

    def nvmlDeviceGetHandleBySerial(self, s: Session, serial: bytes | None, device: HandleOut) -> int:
        if serial is None:
            return INVALID
        return self._handle_where(s, device, lambda g: g.ident.serial.encode() == serial)

    def nvmlDeviceGetHandleByPciBusId_v2(self, s: Session, pciBusId: bytes | None, device: HandleOut) -> int:
        wanted = parse_pci_bus_id(pciBusId) if pciBusId is not None else None
        if wanted is None:
            return INVALID
        return self._handle_where(s, device, lambda g: g.ident.pci_location == wanted)

    nvmlDeviceGetHandleByPciBusId = nvmlDeviceGetHandleByPciBusId_v2

    def nvmlDeviceGetIndex(self, s: Session, device: Gpu, index: Any) -> int:
        index.value = self.state.visible_gpus(s).index(device)
        return SUCCESS

    def nvmlDeviceGetMinorNumber(self, s: Session, device: Gpu, minorNumber: Any) -> int:
        minorNumber.value = device.index
        return SUCCESS

    # identity -------------------------------------------------------------------------
    def nvmlDeviceGetName(self, s: Session, device: Gpu, name: Buffer, length: int) -> int:
        return _string(name, device.profile.name)

    def nvmlDeviceGetUUID(self, s: Session, device: Gpu, uuid: Buffer, length: int) -> int:
        return _string(uuid, device.ident.uuid)

    def nvmlDeviceGetSerial(self, s: Session, device: Gpu, serial: Buffer, length: int) -> int:
        return _string(serial, device.ident.serial)

    def nvmlDeviceGetBrand(self, s: Session, device: Gpu, type: Any) -> int:
        type.value = C[device.profile.brand]
        return SUCCESS

    def nvmlDeviceGetArchitecture(self, s: Session, device: Gpu, arch: Any) -> int:
        arch.value = C[device.profile.architecture]
        return SUCCESS

    def nvmlDeviceGetCudaComputeCapability(self, s: Session, device: Gpu, major: Any, minor: Any) -> int:
        major.value, minor.value = device.profile.compute_capability
        return SUCCESS

    def _fill_pci(self, device: Gpu, pci: Any) -> None:
        pci.domain, pci.bus, pci.device = device.ident.pci_location
        pci.pciDeviceId = device.profile.pci_device_id
        pci.pciSubSystemId = device.profile.pci_subsystem_id
        pci.busId = device.ident.pci_bus_id.encode()

    def nvmlDeviceGetPciInfo_v3(self, s: Session, device: Gpu, pci: Any) -> int:
        self._fill_pci(device, pci)
        pci.busIdLegacy = device.ident.pci_bus_id_legacy.encode()
        return SUCCESS

    nvmlDeviceGetPciInfo_v2 = nvmlDeviceGetPciInfo_v3
    nvmlDeviceGetPciInfo = nvmlDeviceGetPciInfo_v3

    def nvmlDeviceGetPciInfoExt(self, s: Session, device: Gpu, pci: Any) -> int:
        if pci.version != struct_version("nvmlPciInfoExt_v1_t", 1):
            return VERSION_MISMATCH
        self._fill_pci(device, pci)
        pci.baseClass, pci.subClass = 0x03, 0x02  # display controller, 3D controller
        return SUCCESS

    def nvmlDeviceGetAttributes_v2(self, s: Session, device: Gpu, attributes: Any) -> int:
        attributes.multiprocessorCount = device.profile.sm_count
        attributes.memorySizeMB = device.profile.memory_total >> 20
        attributes.gpuInstanceSliceCount = 7 if device.profile.mig else 1
        attributes.computeInstanceSliceCount = attributes.gpuInstanceSliceCount
        return SUCCESS

    def nvmlDeviceGetAddressingMode(self, s: Session, device: Gpu, mode: Any) -> int:
        if mode.version != struct_version("nvmlDeviceAddressingMode_v1_t", 1):
            return VERSION_MISMATCH
        mode.value = C["NVML_DEVICE_ADDRESSING_MODE_NONE"]
        return SUCCESS

    def nvmlDeviceGetBoardId(self, s: Session, device: Gpu, boardId: Any) -> int:
        boardId.value = device.ident.pci_bus << 8
        return SUCCESS

    def nvmlDeviceGetMultiGpuBoard(self, s: Session, device: Gpu, multiGpuBool: Any) -> int:
        multiGpuBool.value = 0
        return SUCCESS

    def nvmlDeviceGetVirtualizationMode(self, s: Session, device: Gpu, pVirtualMode: Any) -> int:
        pVirtualMode.value = C["NVML_GPU_VIRTUALIZATION_MODE_NONE"]
        return SUCCESS

    def nvmlDeviceGetCpuAffinity(self, s: Session, device: Gpu, cpuSetSize: int, cpuSet: Any) -> int:
        if cpuSet is None:
            return INVALID
        bits = ctypes.sizeof(ctypes.c_ulong) * 8
        for cpu in os.sched_getaffinity(0):
            if cpu // bits < cpuSetSize:
                cpuSet[cpu // bits] |= 1 << (cpu % bits)
        return SUCCESS

    # memory ---------------------------------------------------------------------------
    def nvmlDeviceGetMemoryInfo(self, s: Session, device: Gpu, memory: Any) -> int:
        memory.total, memory.used = self.state.memory_view(device, s)
        memory.free = max(memory.total - memory.used, 0)
        return SUCCESS

    def nvmlDeviceGetMemoryInfo_v2(self, s: Session, device: Gpu, memory: Any) -> int:
        if memory.version != struct_version("nvmlMemory_v2_t", 2):
            return VERSION_MISMATCH
        total, used = self.state.memory_view(device, s)
        memory.total = total
        memory.reserved = self.state.reserved_view(device, s)
        memory.used = used - memory.reserved
        memory.free = max(total - used, 0)
        return SUCCESS

    def nvmlDeviceGetBAR1MemoryInfo(self, s: Session, device: Gpu, bar1Memory: Any) -> int:
        total = device.profile.bar1_mib * MIB
        used = min(total, MIB * (1 + 2 * len(device.processes())))  # a mapping per context
        bar1Memory.bar1Total, bar1Memory.bar1Used, bar1Memory.bar1Free = total, used, total - used
        return SUCCESS

    # processes ------------------------------------------------------------------------
    def _processes(self, device: Gpu, infoCount: Any, infos: Any, pids: list[tuple[int, int]]) -> int:
        needed = len(pids)
        if infos is None or infoCount.value < needed:
            infoCount.value = needed
            return INSUFFICIENT_SIZE if needed else SUCCESS
        for slot, (pid, used) in zip(infos, pids):
            slot.pid, slot.usedGpuMemory = pid, used
            if hasattr(slot, "gpuInstanceId"):
                slot.gpuInstanceId = slot.computeInstanceId = NOT_AVAILABLE
        infoCount.value = needed
        return SUCCESS

    def _compute_pids(self, s: Session, device: Gpu) -> list[tuple[int, int]]:
        """The processes using a GPU: all of them, or for a tenant its own."""
        found = []
        for session_id in device.processes():
            session = self.state.sessions.get(session_id)
            if session is not None and (s.tenant is None or (session.tenant and session.tenant.name == s.tenant.name)):
                found.append((session.pid, device.held.get(session_id, 0)))
        return found

    def nvmlDeviceGetComputeRunningProcesses_v3(self, s: Session, device: Gpu, infoCount: Any, infos: Any) -> int:
        return self._processes(device, infoCount, infos, self._compute_pids(s, device))

    nvmlDeviceGetComputeRunningProcesses_v2 = nvmlDeviceGetComputeRunningProcesses_v3
    nvmlDeviceGetComputeRunningProcesses = nvmlDeviceGetComputeRunningProcesses_v3

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, s: Session, device: Gpu, infoCount: Any, infos: Any) -> int:
        return self._processes(device, infoCount, infos, [])

    nvmlDeviceGetGraphicsRunningProcesses_v2 = nvmlDeviceGetGraphicsRunningProcesses_v3
    nvmlDeviceGetGraphicsRunningProcesses = nvmlDeviceGetGraphicsRunningProcesses_v3
    nvmlDeviceGetMPSComputeRunningProcesses_v3 = nvmlDeviceGetGraphicsRunningProcesses_v3
    nvmlDeviceGetMPSComputeRunningProcesses_v2 = nvmlDeviceGetGraphicsRunningProcesses_v3
    nvmlDeviceGetMPSComputeRunningProcesses = nvmlDeviceGetGraphicsRunningProcesses_v3

    def nvmlDeviceGetProcessUtilization(self, s: Session, device: Gpu, utilization: Any,
                                        processSamplesCount: Any, lastSeenTimeStamp: int) -> int:
        now_wall, now = time.time(), device.clock()
        since = max(now - (now_wall - lastSeenTimeStamp / 1e6), now - 1.0) if lastSeenTimeStamp else now - 1.0
        samples = []
        for session_id in device.processes():
            session = self.state.sessions.get(session_id)
            share = device.busy_share(since, now, session_id)
            if session is not None:
                samples.append((session.pid, share))
        if not samples:
            return NOT_FOUND
        if utilization is None or processSamplesCount.value < len(samples):
            processSamplesCount.value = len(samples)
            return INSUFFICIENT_SIZE
        for slot, (pid, share) in zip(utilization, samples):
            slot.pid, slot.timeStamp = pid, int(now_wall * 1e6)
            slot.smUtil, slot.memUtil = round(share * 100), round(share * 60)
            slot.encUtil = slot.decUtil = 0
        processSamplesCount.value = len(samples)
        return SUCCESS

    # utilisation, power, thermals, clocks ---------------------------------------------
    def nvmlDeviceGetUtilizationRates(self, s: Session, device: Gpu, utilization: Any) -> int:
        utilization.gpu, utilization.memory = device.utilization()
        return SUCCESS

    def nvmlDeviceGetEncoderUtilization(self, s: Session, device: Gpu, utilization: Any, samplingPeriodUs: Any) -> int:
        utilization.value, samplingPeriodUs.value = 0, 167000  # nothing in vgpu encodes video
        return SUCCESS

    nvmlDeviceGetDecoderUtilization = nvmlDeviceGetEncoderUtilization

    def nvmlDeviceGetPowerUsage(self, s: Session, device: Gpu, power: Any) -> int:
        power.value = device.power_mw()
        return SUCCESS

    def nvmlDeviceGetTotalEnergyConsumption(self, s: Session, device: Gpu, energy: Any) -> int:
        energy.value = device.energy_mj()
        return SUCCESS

    def nvmlDeviceGetPowerManagementLimit(self, s: Session, device: Gpu, limit: Any) -> int:
        limit.value = device.profile.power_limit_w * 1000
        return SUCCESS

    nvmlDeviceGetPowerManagementDefaultLimit = nvmlDeviceGetPowerManagementLimit

    def nvmlDeviceGetEnforcedPowerLimit(self, s: Session, device: Gpu, limit: Any) -> int:
        limit.value = device.profile.power_limit_w * 1000
        return SUCCESS

    def nvmlDeviceGetPowerManagementLimitConstraints(self, s: Session, device: Gpu, minLimit: Any, maxLimit: Any) -> int:
        minLimit.value, maxLimit.value = device.profile.power_min_w * 1000, device.profile.power_limit_w * 1000
        return SUCCESS

    def nvmlDeviceGetPowerManagementMode(self, s: Session, device: Gpu, mode: Any) -> int:
        mode.value = C["NVML_FEATURE_ENABLED"]
        return SUCCESS

    def nvmlDeviceGetPerformanceState(self, s: Session, device: Gpu, pState: Any) -> int:
        pState.value = device.pstate()
        return SUCCESS

    nvmlDeviceGetPowerState = nvmlDeviceGetPerformanceState

    def nvmlDeviceGetTemperature(self, s: Session, device: Gpu, sensorType: int, temp: Any) -> int:
        if sensorType != C["NVML_TEMPERATURE_GPU"]:
            return INVALID
        temp.value = device.temperature_c()
        return SUCCESS

    def nvmlDeviceGetTemperatureV(self, s: Session, device: Gpu, temperature: Any) -> int:
        if temperature.version != struct_version("nvmlTemperature_v1_t", 1):
            return VERSION_MISMATCH
        if temperature.sensorType != C["NVML_TEMPERATURE_GPU"]:
            return INVALID
        temperature.temperature = device.temperature_c()
        return SUCCESS

    def nvmlDeviceGetTemperatureThreshold(self, s: Session, device: Gpu, thresholdType: int, temp: Any) -> int:
        p = device.profile
        thresholds = {C["NVML_TEMPERATURE_THRESHOLD_SHUTDOWN"]: p.temp_shutdown_c,
                      C["NVML_TEMPERATURE_THRESHOLD_SLOWDOWN"]: p.temp_slowdown_c,
                      C["NVML_TEMPERATURE_THRESHOLD_GPU_MAX"]: p.temp_slowdown_c - 2,
                      C["NVML_TEMPERATURE_THRESHOLD_MEM_MAX"]: p.temp_shutdown_c + 3}
        if thresholdType not in thresholds:
            return NOT_SUPPORTED
        temp.value = thresholds[thresholdType]
        return SUCCESS

    def nvmlDeviceGetNumFans(self, s: Session, device: Gpu, numFans: Any) -> int:
        if not device.profile.fan:
            return NOT_SUPPORTED
        numFans.value = 1
        return SUCCESS

    def nvmlDeviceGetFanSpeed(self, s: Session, device: Gpu, speed: Any) -> int:
        if not device.profile.fan:
            return NOT_SUPPORTED
        speed.value = device.fan_percent()
        return SUCCESS

    def nvmlDeviceGetFanSpeed_v2(self, s: Session, device: Gpu, fan: int, speed: Any) -> int:
        if device.profile.fan and fan != 0:
            return INVALID
        return self.nvmlDeviceGetFanSpeed(s, device, speed)

    def _clock(self, device: Gpu, clockType: int, current: bool) -> int | None:
        p = device.profile
        sm = device.sm_clock_mhz() if current else p.max_sm_clock_mhz
        return {C["NVML_CLOCK_GRAPHICS"]: sm, C["NVML_CLOCK_SM"]: sm,
                C["NVML_CLOCK_MEM"]: p.max_mem_clock_mhz,
                C["NVML_CLOCK_VIDEO"]: sm * 9 // 10}.get(clockType)

    def nvmlDeviceGetClockInfo(self, s: Session, device: Gpu, type: int, clock: Any) -> int:
        value = self._clock(device, type, current=True)
        if value is None:
            return INVALID
        clock.value = value
        return SUCCESS

    def nvmlDeviceGetMaxClockInfo(self, s: Session, device: Gpu, type: int, clock: Any) -> int:
        value = self._clock(device, type, current=False)
        if value is None:
            return INVALID
        clock.value = value
        return SUCCESS

    nvmlDeviceGetApplicationsClock = nvmlDeviceGetMaxClockInfo
    nvmlDeviceGetDefaultApplicationsClock = nvmlDeviceGetMaxClockInfo
    nvmlDeviceGetMaxCustomerBoostClock = nvmlDeviceGetMaxClockInfo

    def nvmlDeviceGetClock(self, s: Session, device: Gpu, clockType: int, clockId: int, clockMHz: Any) -> int:
        if clockId not in API.enum("nvmlClockId_enum").values() or clockId == C["NVML_CLOCK_ID_COUNT"]:
            return INVALID
        value = self._clock(device, clockType, current=clockId == C["NVML_CLOCK_ID_CURRENT"])
        if value is None:
            return INVALID
        clockMHz.value = value
        return SUCCESS

    def nvmlDeviceGetCurrentClocksEventReasons(self, s: Session, device: Gpu, clocksEventReasons: Any) -> int:
        util, _ = device.utilization()
        clocksEventReasons.value = 0 if util else C["nvmlClocksEventReasonGpuIdle"]
        return SUCCESS

    nvmlDeviceGetCurrentClocksThrottleReasons = nvmlDeviceGetCurrentClocksEventReasons

    def nvmlDeviceGetSupportedClocksEventReasons(self, s: Session, device: Gpu, supportedClocksEventReasons: Any) -> int:
        supportedClocksEventReasons.value = C["nvmlClocksEventReasonGpuIdle"] | C["nvmlClocksEventReasonSwPowerCap"]
        return SUCCESS

    nvmlDeviceGetSupportedClocksThrottleReasons = nvmlDeviceGetSupportedClocksEventReasons

    # modes ----------------------------------------------------------------------------
    def nvmlDeviceGetComputeMode(self, s: Session, device: Gpu, mode: Any) -> int:
        mode.value = C["NVML_COMPUTEMODE_DEFAULT"]
        return SUCCESS

    def nvmlDeviceGetPersistenceMode(self, s: Session, device: Gpu, mode: Any) -> int:
        mode.value = C["NVML_FEATURE_ENABLED"]  # vgpud keeps its GPUs initialised, as nvidia-persistenced does
        return SUCCESS

    def nvmlDeviceGetDisplayMode(self, s: Session, device: Gpu, display: Any) -> int:
        display.value = C["NVML_FEATURE_DISABLED"]
        return SUCCESS

    def nvmlDeviceGetDisplayActive(self, s: Session, device: Gpu, isActive: Any) -> int:
        isActive.value = C["NVML_FEATURE_DISABLED"]
        return SUCCESS

    def nvmlDeviceGetAccountingMode(self, s: Session, device: Gpu, mode: Any) -> int:
        mode.value = C["NVML_FEATURE_DISABLED"]
        return SUCCESS

    def nvmlDeviceGetMigMode(self, s: Session, device: Gpu, currentMode: Any, pendingMode: Any) -> int:
        if not device.profile.mig:
            return NOT_SUPPORTED
        currentMode.value = pendingMode.value = C["NVML_DEVICE_MIG_DISABLE"]
        return SUCCESS

    def nvmlDeviceGetMaxMigDeviceCount(self, s: Session, device: Gpu, count: Any) -> int:
        if not device.profile.mig:
            return NOT_SUPPORTED
        count.value = 7
        return SUCCESS

    def nvmlDeviceIsMigDeviceHandle(self, s: Session, device: Gpu, isMigDevice: Any) -> int:
        isMigDevice.value = 0
        return SUCCESS

    def nvmlDeviceGetMigDeviceHandleByIndex(self, s: Session, device: Gpu, index: int, migDevice: HandleOut) -> int:
        if not device.profile.mig:
            return NOT_SUPPORTED
        return NOT_FOUND  # MIG is disabled: no MIG device at any index

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, s: Session, migDevice: Gpu, device: HandleOut) -> int:
        return INVALID  # no MIG device exists while MIG is disabled

    # ECC and errors -------------------------------------------------------------------
    def nvmlDeviceGetEccMode(self, s: Session, device: Gpu, current: Any, pending: Any) -> int:
        if not device.profile.ecc:
            return NOT_SUPPORTED
        current.value = pending.value = C["NVML_FEATURE_ENABLED"]
        return SUCCESS

    def _ecc_count(self, device: Gpu, errorType: int, counterType: int) -> int | None:
        ecc = device.ecc
        table = {(C["NVML_MEMORY_ERROR_TYPE_CORRECTED"], C["NVML_VOLATILE_ECC"]): ecc.single_volatile,
                 (C["NVML_MEMORY_ERROR_TYPE_CORRECTED"], C["NVML_AGGREGATE_ECC"]): ecc.single_aggregate,
                 (C["NVML_MEMORY_ERROR_TYPE_UNCORRECTED"], C["NVML_VOLATILE_ECC"]): ecc.double_volatile,
                 (C["NVML_MEMORY_ERROR_TYPE_UNCORRECTED"], C["NVML_AGGREGATE_ECC"]): ecc.double_aggregate}
        return table.get((errorType, counterType))

    def nvmlDeviceGetTotalEccErrors(self, s: Session, device: Gpu, errorType: int, counterType: int, eccCounts: Any) -> int:
        if not device.profile.ecc:
            return NOT_SUPPORTED
        count = self._ecc_count(device, errorType, counterType)
        if count is None:
            return INVALID
        eccCounts.value = count
        return SUCCESS

    def nvmlDeviceGetMemoryErrorCounter(self, s: Session, device: Gpu, errorType: int, counterType: int,
                                        locationType: int, count: Any) -> int:
        if not device.profile.ecc:
            return NOT_SUPPORTED
        total = self._ecc_count(device, errorType, counterType)
        if total is None:
            return INVALID
        count.value = total if locationType == C["NVML_MEMORY_LOCATION_DEVICE_MEMORY"] else 0
        return SUCCESS

    def nvmlDeviceGetRemappedRows(self, s: Session, device: Gpu, corrRows: Any, uncRows: Any,
                                  isPending: Any, failureOccurred: Any) -> int:
        if not device.profile.ecc:
            return NOT_SUPPORTED
        corrRows.value, uncRows.value = 0, device.ecc.double_aggregate
        isPending.value, failureOccurred.value = int(device.ecc.double_volatile > 0), 0
        return SUCCESS

    def nvmlDeviceGetRetiredPagesPendingStatus(self, s: Session, device: Gpu, isPending: Any) -> int:
        isPending.value = C["NVML_FEATURE_DISABLED"]
        return SUCCESS

    # PCIe and NVLink ------------------------------------------------------------------
    def nvmlDeviceGetPcieThroughput(self, s: Session, device: Gpu, counter: int, value: Any) -> int:
        if counter not in (C["NVML_PCIE_UTIL_TX_BYTES"], C["NVML_PCIE_UTIL_RX_BYTES"]):
            return INVALID
        value.value = 0  # no host-device copies reach vgpud until the CUDA shim exists
        return SUCCESS

    def nvmlDeviceGetPcieReplayCounter(self, s: Session, device: Gpu, value: Any) -> int:
        value.value = 0
        return SUCCESS

    def nvmlDeviceGetCurrPcieLinkGeneration(self, s: Session, device: Gpu, currLinkGen: Any) -> int:
        currLinkGen.value = device.profile.pcie_generation
        return SUCCESS

    nvmlDeviceGetMaxPcieLinkGeneration = nvmlDeviceGetCurrPcieLinkGeneration
    nvmlDeviceGetGpuMaxPcieLinkGeneration = nvmlDeviceGetCurrPcieLinkGeneration

    def nvmlDeviceGetCurrPcieLinkWidth(self, s: Session, device: Gpu, currLinkWidth: Any) -> int:
        currLinkWidth.value = device.profile.pcie_width
        return SUCCESS

    nvmlDeviceGetMaxPcieLinkWidth = nvmlDeviceGetCurrPcieLinkWidth

    def nvmlDeviceGetNvLinkState(self, s: Session, device: Gpu, link: int, isActive: Any) -> int:
        if not device.profile.nvlinks:
            return NOT_SUPPORTED
        if link >= device.profile.nvlinks:
            return INVALID
        isActive.value = C["NVML_FEATURE_ENABLED"]
        return SUCCESS

    def nvmlDeviceGetNvLinkCapability(self, s: Session, device: Gpu, link: int, capability: int,
                                      capResult: Any) -> int:
        """An SXM board's links reach its peers through NVSwitch (P2P and its atomics); none
        reaches the host's memory on the x86 machines modelled, nor an SLI bridge."""
        if not device.profile.nvlinks:
            return NOT_SUPPORTED
        if link >= device.profile.nvlinks or not 0 <= capability < C["NVML_NVLINK_CAP_COUNT"]:
            return INVALID
        supported = {C["NVML_NVLINK_CAP_P2P_SUPPORTED"], C["NVML_NVLINK_CAP_P2P_ATOMICS"], C["NVML_NVLINK_CAP_VALID"]}
        capResult.value = int(capability in supported)
        return SUCCESS

    def nvmlDeviceGetGpuFabricInfoV(self, s: Session, device: Gpu, gpuFabricInfo: Any) -> int:
        """An SXM board registers with the NVSwitch fabric of its HGX system: probe complete and
        successful, clique 0 of an unnamed cluster (what such systems report outside multi-node
        NVLink domains), no health data; a board without NVLink is in no fabric. Versions 2 and 3
        (3 adds the health summary at the end) are answered."""
        if gpuFabricInfo is None:
            return INVALID
        if gpuFabricInfo.version not in (struct_version("nvmlGpuFabricInfo_v2_t", 2),
                                         struct_version("nvmlGpuFabricInfo_v3_t", 3)):
            return C["NVML_ERROR_ARGUMENT_VERSION_MISMATCH"]
        if not device.profile.nvlinks:
            return NOT_SUPPORTED
        gpuFabricInfo.state = C["NVML_GPU_FABRIC_STATE_COMPLETED"]
        gpuFabricInfo.status = SUCCESS
        gpuFabricInfo.cliqueId = 0
        gpuFabricInfo.healthMask = 0
        gpuFabricInfo.healthSummary = C["NVML_GPU_FABRIC_HEALTH_SUMMARY_NOT_SUPPORTED"]
        return SUCCESS

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, s: Session, device: Gpu, link: int, pNvLinkDeviceType: Any) -> int:
        if not device.profile.nvlinks:
            return NOT_SUPPORTED
        if link >= device.profile.nvlinks:
            return INVALID
        pNvLinkDeviceType.value = C["NVML_NVLINK_DEVICE_TYPE_SWITCH"]  # SXM boards link through NVSwitch
        return SUCCESS

    def nvmlDeviceGetFieldValues(self, s: Session, device: Gpu, valuesCount: int, values: Any) -> int:
        if values is None or valuesCount < 0:
            return INVALID
        unsigned = C["NVML_VALUE_TYPE_UNSIGNED_INT"], C["NVML_VALUE_TYPE_UNSIGNED_LONG_LONG"]
        known = {C["NVML_FI_DEV_NVLINK_LINK_COUNT"]: (unsigned[0], lambda: device.profile.nvlinks),
                 C["NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]: (unsigned[1], device.energy_mj),
                 C["NVML_FI_DEV_POWER_INSTANT"]: (unsigned[0], device.power_mw),
                 C["NVML_FI_DEV_PCIE_REPLAY_COUNTER"]: (unsigned[1], lambda: 0),
                 C["NVML_FI_DEV_ECC_CURRENT"]: (unsigned[0], lambda: int(device.profile.ecc))}
        nvlink_rates = {C["NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX"], C["NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX"],
                        C["NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_TX"], C["NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_RX"]}
        stamp = int(time.time() * 1e6)
        for value in values:
            value.timestamp, value.latencyUsec = stamp, 0
            if value.fieldId in known:
                value.valueType, read = known[value.fieldId]
                value.value.ullVal = read()
                value.nvmlReturn = SUCCESS
            elif value.fieldId in nvlink_rates and device.profile.nvlinks:
                value.valueType, value.value.ullVal, value.nvmlReturn = unsigned[1], 0, SUCCESS
            else:
                value.nvmlReturn = NOT_SUPPORTED
        return SUCCESS

    # events ---------------------------------------------------------------------------
    def _supported_events(self, device: Gpu) -> int:
        mask = C["nvmlEventTypeXidCriticalError"] | C["nvmlEventTypePState"] | C["nvmlEventTypeClock"]
        if device.profile.ecc:
            mask |= C["nvmlEventTypeSingleBitEccError"] | C["nvmlEventTypeDoubleBitEccError"]
        return mask

    def nvmlDeviceGetSupportedEventTypes(self, s: Session, device: Gpu, eventTypes: Any) -> int:
        eventTypes.value = self._supported_events(device)
        return SUCCESS

    def nvmlEventSetCreate(self, s: Session, set: HandleOut) -> int:
        set.value = self.state.events.create(s.id)
        return SUCCESS

    def nvmlDeviceRegisterEvents(self, s: Session, device: Gpu, eventTypes: int, set: EventSet) -> int:
        if eventTypes & ~self._supported_events(device):
            return NOT_SUPPORTED
        self.state.events.register(set, device.index, eventTypes)
        return SUCCESS

    def nvmlEventSetWait_v2(self, s: Session, set: EventSet, data: Any, timeoutms: int) -> int:
        event = self.state.events.wait(set, timeoutms / 1000)
        if event is None:
            return TIMEOUT
        data.device = device_handle_id(self.state.gpus[event.gpu])
        data.eventType, data.eventData = event.type, event.data
        data.gpuInstanceId = data.computeInstanceId = NOT_AVAILABLE
        return SUCCESS

    nvmlEventSetWait = nvmlEventSetWait_v2

    def nvmlEventSetFree(self, s: Session, set: EventSet) -> int:
        self.state.events.free(set)
        return SUCCESS
