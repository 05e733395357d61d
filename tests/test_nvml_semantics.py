"""NVML's rules as the real library keeps them, checked through libvgpu-nvml.so with raw ctypes."""

from __future__ import annotations

import ctypes

import pytest

from vgpu.api.manifest import load
from vgpu.launcher import library_path

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)
API = load("nvml")
C = API.constants


@pytest.fixture
def lib(vgpud, monkeypatch):
    monkeypatch.setenv("VGPU_SOCKET", str(vgpud.socket))
    library = ctypes.CDLL(str(library_path()))
    library.nvmlErrorString.restype = ctypes.c_char_p
    return library


def device(lib, index: int) -> ctypes.c_void_p:
    handle = ctypes.c_void_p()
    assert lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) == C["NVML_SUCCESS"]
    return handle


def test_calls_before_init_are_uninitialized(lib):
    count = ctypes.c_uint()
    assert lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == C["NVML_ERROR_UNINITIALIZED"]
    assert lib.nvmlShutdown() == C["NVML_ERROR_UNINITIALIZED"]


def test_init_is_reference_counted(lib):
    count = ctypes.c_uint()
    assert lib.nvmlInit_v2() == 0
    assert lib.nvmlInitWithFlags(C["NVML_INIT_FLAG_NO_GPUS"] if "NVML_INIT_FLAG_NO_GPUS" in C else 1) == 0
    assert lib.nvmlShutdown() == 0
    assert lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0, "one init is still outstanding"
    assert count.value == 4
    assert lib.nvmlShutdown() == 0
    assert lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == C["NVML_ERROR_UNINITIALIZED"]
    assert lib.nvmlShutdown() == C["NVML_ERROR_UNINITIALIZED"]


@pytest.fixture
def inited(lib):
    assert lib.nvmlInit_v2() == 0
    yield lib
    lib.nvmlShutdown()


def test_versioned_memory_struct(inited):
    lib = inited
    memory_v2 = API.ctype_named("nvmlMemory_v2_t")
    info = memory_v2()
    info.version = ctypes.sizeof(memory_v2) | (2 << 24)
    assert lib.nvmlDeviceGetMemoryInfo_v2(device(lib, 0), ctypes.byref(info)) == 0
    assert info.total == 81559 << 20 and info.reserved == 479 << 20
    assert info.used + info.free + info.reserved == info.total
    info.version = ctypes.sizeof(memory_v2) | (1 << 24)
    assert lib.nvmlDeviceGetMemoryInfo_v2(device(lib, 0), ctypes.byref(info)) == C["NVML_ERROR_ARGUMENT_VERSION_MISMATCH"]
    v1 = API.ctype_named("nvmlMemory_t")()
    assert lib.nvmlDeviceGetMemoryInfo(device(lib, 0), ctypes.byref(v1)) == 0
    assert v1.used + v1.free == v1.total and v1.used >= 479 << 20, "v1 counts reserved memory as used"


def test_short_string_buffers(inited):
    lib = inited
    name = ctypes.create_string_buffer(96)
    assert lib.nvmlDeviceGetName(device(lib, 0), name, 96) == 0
    assert name.value == b"NVIDIA H100 80GB HBM3"
    short = ctypes.create_string_buffer(b"\xff" * 8, 8)
    assert lib.nvmlDeviceGetName(device(lib, 0), short, 8) == C["NVML_ERROR_INSUFFICIENT_SIZE"]
    assert short.raw == b"\xff" * 8, "nothing is written past a refusal"
    exact = ctypes.create_string_buffer(22)
    assert lib.nvmlDeviceGetName(device(lib, 0), exact, 22) == 0 and exact.value == b"NVIDIA H100 80GB HBM3"
    assert lib.nvmlDeviceGetName(device(lib, 0), exact, 21) == C["NVML_ERROR_INSUFFICIENT_SIZE"]


def test_process_list_reports_needed_count(inited, vgpud):
    vgpud.local_only("holds memory through a control request, which only the GPU host's own tools may make")
    lib = inited
    with vgpud.client() as other:
        other.control("hold", gpu=1, bytes=1 << 30)
        count = ctypes.c_uint(0)
        rc = lib.nvmlDeviceGetComputeRunningProcesses_v3(device(lib, 1), ctypes.byref(count), None)
        assert rc == C["NVML_ERROR_INSUFFICIENT_SIZE"] and count.value == 1
        infos = (API.ctype_named("nvmlProcessInfo_t") * 4)()
        count.value = 4
        assert lib.nvmlDeviceGetComputeRunningProcesses_v3(device(lib, 1), ctypes.byref(count), infos) == 0
        assert count.value == 1 and infos[0].usedGpuMemory == 1 << 30
    count = ctypes.c_uint(0)
    assert lib.nvmlDeviceGetComputeRunningProcesses_v3(device(lib, 3), ctypes.byref(count), None) == 0
    assert count.value == 0


def test_null_pointers_and_bad_handles(inited):
    lib = inited
    invalid = C["NVML_ERROR_INVALID_ARGUMENT"]
    assert lib.nvmlDeviceGetCount_v2(None) == invalid
    assert lib.nvmlDeviceGetHandleByIndex_v2(0, None) == invalid
    assert lib.nvmlDeviceGetHandleByIndex_v2(99, ctypes.byref(ctypes.c_void_p())) == invalid
    temp = ctypes.c_uint()
    assert lib.nvmlDeviceGetTemperature(None, 0, ctypes.byref(temp)) == invalid
    junk = ctypes.create_string_buffer(64)
    assert lib.nvmlDeviceGetTemperature(junk, 0, ctypes.byref(temp)) == invalid
    assert lib.nvmlDeviceGetTemperature(ctypes.c_void_p(0xDEAD0), 0, ctypes.byref(temp)) == invalid
    assert lib.nvmlDeviceGetTemperature(device(lib, 0), 0, None) == invalid
    assert lib.nvmlDeviceGetHandleByUUID(None, ctypes.byref(ctypes.c_void_p())) == invalid
    assert lib.nvmlDeviceGetHandleByUUID(b"GPU-nope", ctypes.byref(ctypes.c_void_p())) == C["NVML_ERROR_NOT_FOUND"]


def test_every_lookup_gives_the_same_handle(inited):
    lib = inited
    for index in range(4):
        handle = device(lib, index)
        uuid, serial = ctypes.create_string_buffer(96), ctypes.create_string_buffer(30)
        pci = API.ctype_named("nvmlPciInfo_t")()
        assert lib.nvmlDeviceGetUUID(handle, uuid, 96) == 0
        assert lib.nvmlDeviceGetSerial(handle, serial, 30) == 0
        assert lib.nvmlDeviceGetPciInfo_v3(handle, ctypes.byref(pci)) == 0
        for lookup, key in ((lib.nvmlDeviceGetHandleByUUID, uuid.value),
                            (lib.nvmlDeviceGetHandleBySerial, serial.value),
                            (lib.nvmlDeviceGetHandleByPciBusId_v2, pci.busId),
                            (lib.nvmlDeviceGetHandleByPciBusId_v2, pci.busIdLegacy),
                            (lib.nvmlDeviceGetHandleByPciBusId_v2, pci.busId.lower())):
            other = ctypes.c_void_p()
            assert lookup(key, ctypes.byref(other)) == 0, key
            assert other.value == handle.value, f"{key} gave another handle"
        got = ctypes.c_uint()
        assert lib.nvmlDeviceGetIndex(handle, ctypes.byref(got)) == 0 and got.value == index


def test_error_string_for_every_code(lib):
    for name, code in API.enum("nvmlReturn_enum").items():
        text = lib.nvmlErrorString(code).decode()
        assert text and text == API.annotations["error_strings"][name]
    assert lib.nvmlErrorString(12345) == b"Unknown Error"


def test_unimplemented_functions_answer_not_supported(inited, vgpud, monkeypatch):
    lib = inited
    samples = ctypes.c_uint(0)
    value_type = ctypes.c_int()
    rc = lib.nvmlDeviceGetSamples(device(lib, 0), 0, ctypes.c_ulonglong(0), ctypes.byref(value_type),
                                  ctypes.byref(samples), None)
    assert rc == C["NVML_ERROR_NOT_SUPPORTED"]


def test_a_versioned_struct_is_written_no_further_than_its_version(inited):
    """nvmlDeviceGetGpuFabricInfoV (XLA asks it) with a caller built against an older nvml.h: a
    version-2 struct is 4 bytes smaller than version 3, and nothing past it may be written."""
    lib = inited
    v2, v3 = API.ctype_named("nvmlGpuFabricInfo_v2_t"), API.ctype_named("nvmlGpuFabricInfo_v3_t")
    assert ctypes.sizeof(v2) < ctypes.sizeof(v3)
    guarded = (ctypes.c_uint8 * (ctypes.sizeof(v3) + 8))(*([0xEE] * (ctypes.sizeof(v3) + 8)))
    older = v2.from_buffer(guarded)
    older.version = ctypes.sizeof(v2) | (2 << 24)
    assert lib.nvmlDeviceGetGpuFabricInfoV(device(lib, 0), ctypes.byref(older)) == 0
    assert older.state == C["NVML_GPU_FABRIC_STATE_COMPLETED"] and older.status == 0
    assert bytes(guarded[ctypes.sizeof(v2):]) == b"\xee" * (len(guarded) - ctypes.sizeof(v2))
    current = v3()
    current.version = ctypes.sizeof(v3) | (3 << 24)
    assert lib.nvmlDeviceGetGpuFabricInfoV(device(lib, 0), ctypes.byref(current)) == 0
    assert current.state == C["NVML_GPU_FABRIC_STATE_COMPLETED"]
    assert current.healthSummary == C["NVML_GPU_FABRIC_HEALTH_SUMMARY_NOT_SUPPORTED"]
    assert lib.nvmlDeviceGetGpuFabricInfoV(device(lib, 2), ctypes.byref(current)) == C["NVML_ERROR_NOT_SUPPORTED"]
    current.version = 1 << 24 | 8  # no version NVML knows
    assert lib.nvmlDeviceGetGpuFabricInfoV(device(lib, 0), ctypes.byref(current)) == \
        C["NVML_ERROR_ARGUMENT_VERSION_MISMATCH"]
