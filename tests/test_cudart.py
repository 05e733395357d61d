"""NVIDIA's runtime on the simulated GPUs: programs built with nvcc (cudart 13, static and
shared) and cudart 12 from the nvidia-cuda-runtime-cu12 wheel."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_json
from vgpu.device.cuda_attributes import attributes
from vgpu.device.gpuset import DEFAULT_CUDA_VERSION

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)
CLIENTS = Path(__file__).parent / "clients"
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)


def build(tmp_path_factory, source: str, cudart: str = "static") -> Path:
    """A client program from tests/clients, compiled with nvcc (skipped where there is none)."""
    if NVCC is None:
        pytest.skip("nvcc is not on this machine")
    binary = tmp_path_factory.mktemp("nvcc") / f"{source}_{cudart}"
    subprocess.run([NVCC, f"-cudart={cudart}", "-o", str(binary), str(CLIENTS / f"{source}.cu")],
                   check=True, capture_output=True)
    return binary


def run_report(binary: Path, env: dict[str, str], *args: str) -> dict[str, str]:
    """Run a client and read its "name value" lines."""
    result = subprocess.run([str(binary), *args], env=env, capture_output=True, text=True, timeout=120)
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in result.stdout.splitlines()} | \
        {"_output": result.stdout + result.stderr}


@pytest.fixture(scope="module", params=["static", "shared"])
def device_query(request, tmp_path_factory) -> Path:
    return build(tmp_path_factory, "device_query", request.param)


def parse_report(text: str) -> tuple[dict[str, str], dict[int, dict[str, str]]]:
    overall, devices = {}, {}
    for line in text.splitlines():
        where, key, value = line.split(" ", 2)
        if where == "-":
            overall[key] = value
        else:
            devices.setdefault(int(where), {})[key] = value
    return overall, devices


def test_nvcc_device_query(vgpud, device_query):
    result = subprocess.run([str(device_query)], env=vgpud.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    overall, devices = parse_report(result.stdout)
    assert overall["driver"] == str(DEFAULT_CUDA_VERSION) and overall["count"] == "4"
    for index, ident in enumerate(vgpud.gpus):
        p, d = ident.profile, devices[index]
        values = attributes(ident)
        assert d["rc"] == "0" and d["name"] == p.name
        assert d["uuid"] == ident.uuid_bytes.hex(), "cudart's UUID is NVML's"
        assert int(d["totalGlobalMem"]) == p.cuda_total_mib << 20
        assert int(d["multiProcessorCount"]) == p.sm_count
        assert (int(d["major"]), int(d["minor"])) == p.compute_capability
        assert d["warpSize"] == "32" and d["maxThreadsPerBlock"] == "1024"
        assert int(d["maxThreadsPerMultiProcessor"]) == values["MAX_THREADS_PER_MULTIPROCESSOR"]
        assert int(d["sharedMemPerMultiprocessor"]) == values["MAX_SHARED_MEMORY_PER_MULTIPROCESSOR"]
        assert int(d["l2CacheSize"]) == p.l2_cache_mib << 20 and int(d["memoryBusWidth"]) == p.bus_width
        assert int(d["pciBusID"]) == ident.pci_bus and d["busId"] == ident.pci_bus_id_legacy
        assert d["ECCEnabled"] == str(int(p.ecc)) and d["integrated"] == "0" and d["unifiedAddressing"] == "1"
        expected = {  # every other property, from the architecture table
            "maxGridSize0": "MAX_GRID_DIM_X", "maxGridSize1": "MAX_GRID_DIM_Y", "maxGridSize2": "MAX_GRID_DIM_Z",
            "maxThreadsDim0": "MAX_BLOCK_DIM_X", "maxThreadsDim1": "MAX_BLOCK_DIM_Y",
            "maxThreadsDim2": "MAX_BLOCK_DIM_Z", "totalConstMem": "TOTAL_CONSTANT_MEMORY", "memPitch": "MAX_PITCH",
            "textureAlignment": "TEXTURE_ALIGNMENT", "texturePitchAlignment": "TEXTURE_PITCH_ALIGNMENT",
            "canMapHostMemory": "CAN_MAP_HOST_MEMORY", "concurrentKernels": "CONCURRENT_KERNELS",
            "asyncEngineCount": "ASYNC_ENGINE_COUNT", "persistingL2CacheMaxSize": "MAX_PERSISTING_L2_CACHE_SIZE",
            "maxBlocksPerMultiProcessor": "MAX_BLOCKS_PER_MULTIPROCESSOR",
            "accessPolicyMaxWindowSize": "MAX_ACCESS_POLICY_WINDOW_SIZE",
            "reservedSharedMemPerBlock": "RESERVED_SHARED_MEMORY_PER_BLOCK",
            "sharedMemPerBlockOptin": "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN",
            "regsPerMultiprocessor": "MAX_REGISTERS_PER_MULTIPROCESSOR", "managedMemory": "MANAGED_MEMORY",
            "concurrentManagedAccess": "CONCURRENT_MANAGED_ACCESS",
            "computePreemptionSupported": "COMPUTE_PREEMPTION_SUPPORTED", "cooperativeLaunch": "COOPERATIVE_LAUNCH",
            "hostRegisterSupported": "HOST_REGISTER_SUPPORTED", "memoryPoolsSupported": "MEMORY_POOLS_SUPPORTED",
            "clusterLaunch": "CLUSTER_LAUNCH", "unifiedFunctionPointers": "UNIFIED_FUNCTION_POINTERS",
            "globalL1CacheSupported": "GLOBAL_L1_CACHE_SUPPORTED", "localL1CacheSupported": "LOCAL_L1_CACHE_SUPPORTED",
            "streamPrioritiesSupported": "STREAM_PRIORITIES_SUPPORTED", "pciDeviceID": "PCI_DEVICE_ID",
        }
        for field, attribute in expected.items():
            assert int(d[field]) == values.get(attribute, 0), f"{p.key} {field}"
        assert d["isMultiGpuBoard"] == "0" and d["tccDriver"] == "0"


def test_nvcc_device_query_with_visible_devices(vgpud, device_query):
    env = {**vgpud.env, "CUDA_VISIBLE_DEVICES": "3,1"}
    result = subprocess.run([str(device_query)], env=env, capture_output=True, text=True, timeout=60)
    overall, devices = parse_report(result.stdout)
    assert overall["count"] == "2"
    assert [devices[i]["name"] for i in (0, 1)] == ["NVIDIA GeForce RTX 4090", "NVIDIA H100 80GB HBM3"]


def test_nvcc_program_without_vgpud(tmp_path, device_query):
    from vgpu import launcher

    result = subprocess.run([str(device_query)], env=launcher.client_environment(tmp_path / "none.sock"),
                            capture_output=True, text=True, timeout=60)
    overall, _ = parse_report(result.stdout)
    assert overall["count"] == "0" and overall["count_rc"] == "100"  # cudaErrorNoDevice


CUDART12 = """
import ctypes, json, pathlib
import nvidia.cuda_runtime
folder = pathlib.Path(nvidia.cuda_runtime.__path__[0]) / "lib"
rt = ctypes.CDLL(str(folder / "libcudart.so.12"))
count, version = ctypes.c_int(), ctypes.c_int()
out = {"count_rc": rt.cudaGetDeviceCount(ctypes.byref(count)), "count": count.value}
rt.cudaRuntimeGetVersion(ctypes.byref(version))
out["runtime"] = version.value
prop = ctypes.create_string_buffer(4096)
out["props_rc"] = rt.cudaGetDeviceProperties_v2(prop, 2)
out["name"] = prop.raw[:256].split(b"\\0")[0].decode()
out["uuid"] = prop.raw[256:272].hex()
rt.cudaSetDevice(1)
data = bytes(range(256)) * 4096
back = ctypes.create_string_buffer(len(data))
ptr = ctypes.c_void_p()
out["malloc"] = rt.cudaMalloc(ctypes.byref(ptr), len(data))
out["h2d"] = rt.cudaMemcpy(ptr, data, len(data), 1)
out["d2h"] = rt.cudaMemcpy(back, ptr, len(data), 2)
out["equal"] = back.raw == data
out["free"] = rt.cudaFree(ptr)
print(json.dumps(out))
"""


def test_cudart12_from_the_wheel(vgpud):
    out = run_json(CUDART12, vgpud.env)
    assert out["runtime"] // 1000 == 12
    assert out["count_rc"] == 0 and out["count"] == 4
    assert out["props_rc"] == 0 and out["name"] == "NVIDIA L4" and out["uuid"] == vgpud.gpus[2].uuid_bytes.hex()
    assert [out["malloc"], out["h2d"], out["d2h"], out["free"]] == [0, 0, 0, 0] and out["equal"]


@pytest.fixture(scope="module")
def memory_round_trip(tmp_path_factory) -> Path:
    return build(tmp_path_factory, "memory_round_trip")


@pytest.mark.parametrize("size,direct", [
    (1 << 20, "1"),
    (70 << 20, "1"),  # vgpud reads and writes the program's memory itself
    (70 << 20, "0"),  # in frames, above a frame's size: sent in pieces
])
def test_cudart_memory_round_trip(vgpud, memory_round_trip, size, direct):
    report = run_report(memory_round_trip, {**vgpud.env, "VGPU_DIRECT_MEMORY": direct}, str(size))
    result_text = report["_output"]
    assert int(report["total"]) == vgpud.gpus[0].profile.cuda_total_mib << 20
    for step in ("meminfo", "malloc", "malloc2", "h2d", "d2d", "d2h", "memset", "d2h2", "free", "free2", "sync"):
        assert report[step] == "0", f"{step}: {result_text}"
    assert report["equal"] == "1" and report["memset_ok"] == "1"
    assert int(report["used"]) >= 2 * size
    assert report["oom"] == "2"       # cudaErrorMemoryAllocation
    assert report["bad_copy"] == "1"  # cudaErrorInvalidValue


def test_streams_events_and_pinned_memory(vgpud, tmp_path_factory):
    report = run_report(build(tmp_path_factory, "streams_events"), vgpud.env)
    for step in ("mallochost", "hostalloc", "priority_range", "untimed_create", "event_sync", "event_query",
                 "elapsed_rc", "sync"):
        assert report[step] == "0", f"{step}: {report['_output']}"
    assert report["priorities"] == "0 -5" and report["stream_priority"] == "-5"
    assert report["created"] == report["async"] == report["equal"] == report["destroyed"] == "1"
    assert report["freehost"] == "0 0"
    assert report["host_calls"] == "4", "host functions ran before the synchronisations returned"
    assert report["untimed_rc"] == "400"  # cudaErrorInvalidResourceHandle: timing disabled
    # stream 0 ran an 8 MiB copy each way; the model times a PCIe 5 x16 link at about 50 GB/s
    h100 = vgpud.gpus[0].profile
    one_way = 5e-6 + (8 << 20) / (0.8 * h100.pcie_width * 0.985e9 * 2 ** (h100.pcie_generation - 3))
    assert float(report["elapsed_ms"]) == pytest.approx(2 * one_way * 1000, rel=0.01)


def test_pitched_2d_peer_async_and_limits(vgpud, tmp_path_factory):
    report = run_report(build(tmp_path_factory, "copies_2d_peer"), vgpud.env)
    for step in ("malloc_pitch", "h2d_2d", "d2h_2d", "can_peer_rc", "enable_peer", "peer_copy", "default_pool",
                 "set_threshold", "malloc_async",
                 "memset_async", "free_async", "stream_sync", "limit_rc", "set_limit"):
        assert report[step] == "0", f"{step}: {report['_output']}"
    assert report["pitch"] == "1024"  # 1000 bytes rounded to the 512-byte pitch alignment
    assert report["equal_2d"] == report["equal_peer"] == report["can_peer"] == "1"
    assert report["stack"] == "1024" and report["stack_after"] == "4096"
    assert report["threshold"] == str(64 << 20) and report["follow"] == "1" and report["pool_used_ok"] == "1"
