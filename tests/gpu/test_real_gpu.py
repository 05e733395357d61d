"""The cuda backend on a real GPU: kernels really computed, through vgpud on this host and
through a relay to it over TLS. Skipped where there is no NVIDIA GPU (or no nvcc).

    pytest tests/gpu
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Vgpud, free_port, listen_options, run_python, tls_files
from vgpu import launcher
from vgpu.remote.tokens import TokenStore


def _real_gpu() -> bool:
    try:
        from cuda.bindings import driver
    except ImportError:
        return False
    try:
        return int(driver.cuInit(0)[0]) == 0 and driver.cuDeviceGetCount()[1] > 0
    except RuntimeError:  # no libcuda.so.1 on this host
        return False


NVCC = shutil.which("nvcc") or next((str(p) for p in Path("/usr/local").glob("cuda*/bin/nvcc")), None)
pytestmark = pytest.mark.skipif(not _real_gpu() or NVCC is None, reason="needs an NVIDIA GPU, its driver and nvcc")
CLIENTS = Path(__file__).parent.parent / "clients"


def start_cuda_backend(folder: Path, options: tuple[str, ...] = ()) -> Vgpud:
    folder.mkdir(parents=True, exist_ok=True)
    socket_path = folder / "vgpud.sock"
    process = launcher.start_daemon("h200", socket_path, folder / "vgpud.log", detach=False,
                                    options=("--backend", "cuda", *options))
    return Vgpud(process, socket_path, folder / "vgpud.log")


def start_gpu_host(folder: Path, tenant: str, memory: int | None = None) -> tuple[Vgpud, str, int]:
    """This host's real GPU served over TLS on loopback, and a token for a tenant."""
    tls_files(folder)
    port = free_port()
    token = TokenStore(folder / "state").create(tenant, memory=memory)
    return start_cuda_backend(folder / "host", listen_options(folder, f"127.0.0.1:{port}")), token, port


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    daemon = start_cuda_backend(tmp_path_factory.mktemp("cuda"))
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("programs")
    built = {}
    for name, libraries in (("vector_add", []), ("cublas_check", ["-lcublas"])):
        built[name] = folder / name
        subprocess.run([NVCC, "-o", str(built[name]), str(CLIENTS / f"{name}.cu"), *libraries], check=True)
    return built


def report(binary: Path, env: dict[str, str]) -> dict[str, str]:
    result = subprocess.run([str(binary)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


def test_vector_add_computed(backend, programs):
    out = report(programs["vector_add"], backend.env)
    assert out["launch"] == "0" and out["copy_back"] == "0"
    assert out["elements"] == str(1 << 20) and out["wrong"] == "0", "every element is a[i] + b[i]"
    assert any(x["kernel"] == "_Z3addPKfS0_Pfi" for x in backend.control("launches")["launches"])


def test_cublas_gemm_computed(backend, programs):
    out = report(programs["cublas_check"], backend.env)
    assert out["create"] == out["sgemm"] == out["copy_back"] == "0"
    assert float(out["max_error"]) < 1e-3


def test_pytorch_matmul_matches_the_cpu(backend):
    pytest.importorskip("torch")
    code = """
import json, torch
torch.manual_seed(0)
a, b = torch.randn(512, 512), torch.randn(512, 512)
gpu = (a.cuda() @ b.cuda()).cpu()
print(json.dumps({"name": torch.cuda.get_device_name(0), "error": (gpu - a @ b).abs().max().item()}))
"""
    result = run_python(code, backend.env, timeout=300)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["error"] < 1e-2, answer


def test_through_a_relay(tmp_path, programs):
    """A GPU host serving its real GPU over TLS, and a relay in front of it."""
    pytest.importorskip("trustme")
    host, token, port = start_gpu_host(tmp_path, "gpu-tests")
    try:
        socket_path, pid, _ = launcher.up_remote([f"localhost:{port}"], [token], tmp_path / "ca.pem", 5.0,
                                                 socket_path=tmp_path / "relay" / "relay.sock")
        try:
            env = launcher.client_environment(socket_path)
            out = report(programs["vector_add"], env)
            assert out["wrong"] == "0"
            out = report(programs["cublas_check"], env)
            assert float(out["max_error"]) < 1e-3
        finally:
            launcher.down(socket_path)
    finally:
        host.stop()


VMM = """
import ctypes, json
cuda = ctypes.CDLL("libcuda.so.1")
ok = lambda rc, what: None if rc == 0 else (_ for _ in ()).throw(SystemExit(f"{what}: {rc}"))
ok(cuda.cuInit(0), "init")
ctx = ctypes.c_void_p(); ok(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0), "retain"); ok(cuda.cuCtxSetCurrent(ctx), "current")
class Location(ctypes.Structure): _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]
class Prop(ctypes.Structure): _fields_ = [("type", ctypes.c_int), ("handle_types", ctypes.c_int), ("location", Location),
                                          ("win32", ctypes.c_void_p), ("flags", ctypes.c_ubyte * 8)]
class Access(ctypes.Structure): _fields_ = [("location", Location), ("flags", ctypes.c_int)]
prop = Prop(); prop.type = 1; prop.location = Location(1, 0)
granularity = ctypes.c_size_t(); ok(cuda.cuMemGetAllocationGranularity(ctypes.byref(granularity), ctypes.byref(prop), 0), "granularity")
size = granularity.value
base = ctypes.c_uint64(); ok(cuda.cuMemAddressReserve(ctypes.byref(base), ctypes.c_size_t(2 * size), ctypes.c_size_t(0), ctypes.c_uint64(0), ctypes.c_uint64(0)), "reserve")
handle = ctypes.c_uint64(); ok(cuda.cuMemCreate(ctypes.byref(handle), ctypes.c_size_t(size), ctypes.byref(prop), ctypes.c_uint64(0)), "create")
ok(cuda.cuMemMap(base, ctypes.c_size_t(size), ctypes.c_size_t(0), handle, ctypes.c_uint64(0)), "map")
access = Access(Location(1, 0), 3)
ok(cuda.cuMemSetAccess(base, ctypes.c_size_t(size), ctypes.byref(access), ctypes.c_size_t(1)), "access")
data = bytes(range(256)) * 4096
back = ctypes.create_string_buffer(len(data))
ok(cuda.cuMemcpyHtoD_v2(base, data, ctypes.c_size_t(len(data))), "htod")
ok(cuda.cuMemcpyDtoH_v2(back, base, ctypes.c_size_t(len(data))), "dtoh")
ok(cuda.cuMemUnmap(base, ctypes.c_size_t(size)), "unmap"); ok(cuda.cuMemRelease(handle), "release")
ok(cuda.cuMemAddressFree(base, ctypes.c_size_t(2 * size)), "free")
print(json.dumps({"granularity": size, "same": back.raw == data}))
"""


def test_virtual_memory_on_the_gpu(backend):
    result = run_python(VMM, backend.env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    answer = json.loads(result.stdout)
    assert answer["same"] and answer["granularity"] >= 2 << 20


def test_pytorch_cuda_graph_replays_compute(backend):
    pytest.importorskip("torch")
    code = """
import json, torch
x = torch.arange(1024, dtype=torch.float32, device="cuda")
s = torch.cuda.Stream()
s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    y = x * 2 + 1
torch.cuda.current_stream().wait_stream(s)
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    y = x * 2 + 1
x.copy_(torch.full((1024,), 3.0, device="cuda"))
g.replay()
torch.cuda.synchronize()
print(json.dumps({"values": sorted(set(y.cpu().tolist()))}))
"""
    result = run_python(code, backend.env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["values"] == [7.0], "the replay computed 3 * 2 + 1"


def test_a_tenant_quota_on_the_gpu(tmp_path):
    """A tenant with a 1 GiB quota on the real GPU: its processes see 1 GiB and cannot go past it."""
    pytest.importorskip("torch")
    pytest.importorskip("trustme")
    host, token, port = start_gpu_host(tmp_path, "small", memory=1 << 30)
    try:
        socket_path, _, _ = launcher.up_remote([f"localhost:{port}"], [token], tmp_path / "ca.pem", 5.0,
                                               socket_path=tmp_path / "relay" / "relay.sock")
        try:
            code = """
import json, torch
free, total = torch.cuda.mem_get_info()
small = torch.ones(256 << 20, dtype=torch.uint8, device="cuda")
try:
    torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    refused = False
except torch.OutOfMemoryError:
    refused = True
print(json.dumps({"total": total, "refused": refused, "sum": int(small[:1 << 20].sum().item())}))
"""
            result = run_python(code, launcher.client_environment(socket_path), timeout=300)
            assert result.returncode == 0, result.stderr
            answer = json.loads(result.stdout.splitlines()[-1])
            assert answer == {"total": 1 << 30, "refused": True, "sum": 1 << 20}
        finally:
            launcher.down(socket_path)
    finally:
        host.stop()
