"""Every NVML call that pynvml users, gpustat, nvitop, PyTorch and the Kubernetes device
plugin make (shared/facts/nvml-clients.md), through nvidia-ml-py, with values cross-checked."""

from __future__ import annotations

import ctypes

import pytest

from vgpu.launcher import library_path

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)


def handles(n):
    return [n.nvmlDeviceGetHandleByIndex(i) for i in range(n.nvmlDeviceGetCount())]


def test_system_calls(nvml):
    n = nvml
    assert n.nvmlSystemGetDriverVersion() == "590.48.01"
    assert n.nvmlSystemGetCudaDriverVersion() == 13050
    assert n.nvmlSystemGetCudaDriverVersion_v2() == 13050  # cuda.h's CUDA_VERSION
    assert n.nvmlSystemGetNVMLVersion() == "13.590.48.01"
    assert n.nvmlDeviceGetCount() == 4
    assert n.nvmlUnitGetCount() == 0
    import os
    assert n.nvmlSystemGetProcessName(os.getpid())


def test_identity_matches_the_gpu_set(nvml, vgpud):
    n = nvml
    for position, (handle, ident) in enumerate(zip(handles(n), vgpud.gpus)):
        assert n.nvmlDeviceGetName(handle) == ident.profile.name
        assert n.nvmlDeviceGetUUID(handle) == ident.uuid
        assert n.nvmlDeviceGetSerial(handle) == ident.serial
        assert n.nvmlDeviceGetIndex(handle) == position
        assert n.nvmlDeviceGetMinorNumber(handle) == ident.index  # /dev/nvidiaN on the GPU's host
        pci = n.nvmlDeviceGetPciInfo(handle)
        assert pci.busId == ident.pci_bus_id and pci.bus == ident.pci_bus
        assert pci.pciDeviceId == ident.profile.pci_device_id
        assert n.nvmlDeviceGetCudaComputeCapability(handle) == ident.profile.compute_capability
        assert n.nvmlDeviceGetHandleByUUID(ident.uuid).contents is not None
    uuids = {n.nvmlDeviceGetUUID(h) for h in handles(n)}
    assert len(uuids) == 4


def test_memory_agrees_across_versions(nvml, vgpud):
    n = nvml
    for handle, ident in zip(handles(n), vgpud.gpus):
        v1 = n.nvmlDeviceGetMemoryInfo(handle)
        v2 = n.nvmlDeviceGetMemoryInfo(handle, version=n.nvmlMemory_v2)
        assert v1.total == v2.total == ident.profile.memory_total_mib << 20
        assert v1.used + v1.free == v1.total
        assert v2.used + v2.free + v2.reserved == v2.total
        assert v2.reserved == ident.profile.memory_reserved_mib << 20
        assert v1.free == v2.free
        bar1 = n.nvmlDeviceGetBAR1MemoryInfo(handle)
        assert bar1.bar1Used + bar1.bar1Free == bar1.bar1Total


def test_gpustat_calls(nvml, vgpud):
    n = nvml
    for handle, ident in zip(handles(n), vgpud.gpus):
        assert 20 <= n.nvmlDeviceGetTemperature(handle, n.NVML_TEMPERATURE_GPU) < ident.profile.temp_slowdown_c
        if ident.profile.fan:
            assert 0 <= n.nvmlDeviceGetFanSpeed(handle) <= 100
        else:
            with pytest.raises(n.NVMLError_NotSupported):
                n.nvmlDeviceGetFanSpeed(handle)
        util = n.nvmlDeviceGetUtilizationRates(handle)
        assert 0 <= util.gpu <= 100 and 0 <= util.memory <= 100
        assert n.nvmlDeviceGetEncoderUtilization(handle)[0] == 0
        assert n.nvmlDeviceGetDecoderUtilization(handle)[0] == 0
        power = n.nvmlDeviceGetPowerUsage(handle)
        limit = n.nvmlDeviceGetEnforcedPowerLimit(handle)
        assert limit == ident.profile.power_limit_w * 1000
        assert ident.profile.idle_power_w * 1000 * 0.9 <= power <= limit
        assert n.nvmlDeviceGetComputeRunningProcesses(handle) == []
        assert n.nvmlDeviceGetGraphicsRunningProcesses(handle) == []


def test_nvitop_calls(nvml, vgpud):
    n = nvml
    for handle, ident in zip(handles(n), vgpud.gpus):
        p = ident.profile
        assert n.nvmlDeviceGetMaxClockInfo(handle, n.NVML_CLOCK_SM) == p.max_sm_clock_mhz
        assert n.nvmlDeviceGetMaxClockInfo(handle, n.NVML_CLOCK_MEM) == p.max_mem_clock_mhz
        sm = n.nvmlDeviceGetClockInfo(handle, n.NVML_CLOCK_SM)
        assert p.idle_sm_clock_mhz <= sm <= p.max_sm_clock_mhz
        assert n.nvmlDeviceGetComputeMode(handle) == n.NVML_COMPUTEMODE_DEFAULT
        assert n.nvmlDeviceGetDisplayMode(handle) == n.NVML_FEATURE_DISABLED
        assert n.nvmlDeviceGetDisplayActive(handle) == n.NVML_FEATURE_DISABLED
        assert n.nvmlDeviceGetPersistenceMode(handle) == n.NVML_FEATURE_ENABLED
        assert n.nvmlDeviceGetPerformanceState(handle) in (0, 8)
        assert n.nvmlDeviceGetPowerManagementLimit(handle) == p.power_limit_w * 1000
        assert n.nvmlDeviceGetPcieThroughput(handle, n.NVML_PCIE_UTIL_TX_BYTES) == 0
        with pytest.raises(n.NVMLError_NotFound):
            n.nvmlDeviceGetProcessUtilization(handle, 0)
        with pytest.raises(n.NVMLError_NotSupported):
            n.nvmlDeviceGetCurrentDriverModel(handle)  # Windows only, as on a real Linux host
        if p.ecc:
            assert n.nvmlDeviceGetTotalEccErrors(handle, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC) == 0
        else:
            with pytest.raises(n.NVMLError_NotSupported):
                n.nvmlDeviceGetEccMode(handle)
        assert n.nvmlDeviceGetTemperatureV(handle, n.NVML_TEMPERATURE_GPU) == \
            n.nvmlDeviceGetTemperature(handle, n.NVML_TEMPERATURE_GPU)
        if p.mig:
            assert n.nvmlDeviceGetMigMode(handle) == [0, 0]
            assert n.nvmlDeviceGetMaxMigDeviceCount(handle) == 7
            with pytest.raises(n.NVMLError_NotFound):
                n.nvmlDeviceGetMigDeviceHandleByIndex(handle, 0)
        else:
            with pytest.raises(n.NVMLError_NotSupported):
                n.nvmlDeviceGetMigMode(handle)
        assert n.nvmlDeviceIsMigDeviceHandle(handle).value == 0  # pynvml returns the c_uint itself
        with pytest.raises(n.NVMLError_NotSupported):
            n.nvmlDeviceGetGpuInstanceId(handle)  # not a MIG device, as the real library answers
        with pytest.raises(n.NVMLError_InvalidArgument):
            n.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
        assert n.nvmlDeviceGetMPSComputeRunningProcesses(handle) == []
        assert n.nvmlDeviceGetHandleByPciBusId(n.nvmlDeviceGetPciInfo(handle).busId)
        fields = n.nvmlDeviceGetFieldValues(handle, [n.NVML_FI_DEV_NVLINK_LINK_COUNT])
        assert fields[0].nvmlReturn == 0 and fields[0].value.uiVal == p.nvlinks
        assert n.nvmlDeviceGetCudaComputeCapability(handle) == p.compute_capability


def test_kubernetes_device_plugin_calls(nvml, vgpud):
    n = nvml
    for handle, ident in zip(handles(n), vgpud.gpus):
        p = ident.profile
        assert n.nvmlDeviceGetArchitecture(handle) == getattr(n, p.architecture)
        assert n.nvmlDeviceGetBrand(handle) == getattr(n, p.brand)
        attributes = n.nvmlDeviceGetAttributes(handle)
        assert attributes.multiprocessorCount == p.sm_count
        assert attributes.memorySizeMB == p.memory_total_mib
        supported = n.nvmlDeviceGetSupportedEventTypes(handle)
        assert supported & n.nvmlEventTypeXidCriticalError
        assert bool(supported & n.nvmlEventTypeDoubleBitEccError) == p.ecc


def test_pytorch_required_symbols_are_exported():
    lib = ctypes.CDLL(str(library_path()))
    for name in ("nvmlInit_v2", "nvmlDeviceGetHandleByPciBusId_v2", "nvmlDeviceGetNvLinkRemoteDeviceType",
                 "nvmlDeviceGetNvLinkRemotePciInfo_v2", "nvmlDeviceGetComputeRunningProcesses",
                 "nvmlSystemGetCudaDriverVersion_v2"):
        assert hasattr(lib, name), name


def test_pytorch_nvml_device_count_path(nvml, vgpud):
    """What PYTORCH_NVML_BASED_CUDA_CHECK=1 makes torch.cuda.device_count() call."""
    n = nvml
    count = n.nvmlDeviceGetCount()
    uuids = [n.nvmlDeviceGetUUID(n.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
    assert uuids == [g.uuid for g in vgpud.gpus]
    assert n.nvmlDeviceGetNvLinkRemoteDeviceType(n.nvmlDeviceGetHandleByIndex(0), 0) == \
        n.NVML_NVLINK_DEVICE_TYPE_SWITCH


def test_cpu_affinity_covers_this_process(nvml):
    import os

    n = nvml
    mask = n.nvmlDeviceGetCpuAffinity(n.nvmlDeviceGetHandleByIndex(0), 4)
    cpus = {word * 64 + bit for word, value in enumerate(mask) for bit in range(64) if value >> bit & 1}
    assert cpus == os.sched_getaffinity(0)


def test_nvlink_capabilities_as_xla_asks_them(nvml, vgpud):
    """XLA asks each link's P2P capability; an SXM H100's links reach peers (not the host), a
    PCIe board without links answers not supported."""
    n = nvml
    h100, l4 = (n.nvmlDeviceGetHandleByIndex(i) for i in (0, 2))
    caps = [n.nvmlDeviceGetNvLinkCapability(h100, 0, cap) for cap in range(n.NVML_NVLINK_CAP_COUNT)]
    assert caps == [1, 0, 1, 0, 0, 1]  # P2P, sysmem access, P2P atomics, sysmem atomics, SLI, valid
    with pytest.raises(n.NVMLError_InvalidArgument):
        n.nvmlDeviceGetNvLinkCapability(h100, vgpud.gpus[0].profile.nvlinks, 0)
    with pytest.raises(n.NVMLError_NotSupported):
        n.nvmlDeviceGetNvLinkCapability(l4, 0, 0)
