"""vgpud computes kernels: in stream order, with long kernels that do not look like a lost
daemon, queries that say "not ready" meanwhile, sticky launch failures, launch records that
say what was computed and why not, and --compute off. Kernels come as PTX (nvcc -ptx) or a
cubin, loaded through cuda-python's driver bindings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CUDA_PYTHON, Vgpud
from vgpu import launcher
from vgpu.device import gpuset

EVERY_WAY = True
VGPUD_GPUS = "2xh100"  # two: the joined way gives each GPU host one
NVCC = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"

SOURCE = r"""
extern "C" __global__ void spin(long long cycles, int *out) {
  long long start = clock64();
  while (clock64() - start < cycles) {}
  out[threadIdx.x] = threadIdx.x + 1;
}
extern "C" __global__ void fill(int *out, int value) { out[blockIdx.x * blockDim.x + threadIdx.x] = value; }
extern "C" __global__ void add_one(int *out) { out[blockIdx.x * blockDim.x + threadIdx.x] += 1; }
extern "C" __global__ void fail(int *out) { if (threadIdx.x == 5) __trap(); out[threadIdx.x] = 1; }
"""

#: the client: loads the image, then runs the steps named on its command line
CLIENT = CUDA_PYTHON + r"""
import sys, time
ok(cu.cuInit(0))
ctx = ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(0))))
ok(cu.cuCtxSetCurrent(ctx))
module = ok(cu.cuModuleLoadData(open(sys.argv[1], "rb").read()))
fn = lambda name: ok(cu.cuModuleGetFunction(module, name.encode()))
buf = ok(cu.cuMemAlloc(4096))
stream = ok(cu.cuStreamCreate(0))
def launch(name, grid, block, *args, on=None):
    types = [ctypes.c_longlong if isinstance(a, int) and a > 2**31 else ctypes.c_int if isinstance(a, int)
             else ctypes.c_void_p for a in args]
    values = [t(int(a)) for t, a in zip(types, args)]
    pointers = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
    return code(cu.cuLaunchKernel(fn(name), grid, 1, 1, block, 1, 1, 0, on or stream, ctypes.addressof(pointers), 0))
def read(n):
    host = (ctypes.c_int * n)()
    rc = code(cu.cuMemcpyDtoH(ctypes.addressof(host), buf, 4 * n))
    return rc, list(host)
out = {}
for step in sys.argv[2:]:
    if step == "order":  # fill, then add one twice, then a copy: stream order with computed kernels
        launch("fill", 4, 256, int(buf), 41)
        launch("add_one", 4, 256, int(buf))
        launch("add_one", 4, 256, int(buf))
        rc, values = read(1024)
        out["order"] = [rc, sorted(set(values))]
    elif step.startswith("cycles="):
        pass  # the spin's length (read by "long")
    elif step == "long":  # a kernel longer than the client's wait for an answer
        launch("spin", 1, 32, int(sys.argv[-1].split("=")[1]), int(buf))
        out["query"] = code(cu.cuStreamQuery(stream))
        started = time.monotonic()
        out["sync"] = code(cu.cuStreamSynchronize(stream))
        out["waited"] = time.monotonic() - started
        out["spin"] = read(32)
    elif step == "host":  # managed and mapped page-locked memory, written by kernels
        managed = ok(cu.cuMemAllocManaged(1024 * 4, 1))
        pinned = ok(cu.cuMemHostAlloc(1024 * 4, 2))  # CU_MEMHOSTALLOC_DEVICEMAP
        views = [(ctypes.c_int * 1024).from_address(int(managed)), (ctypes.c_int * 1024).from_address(int(pinned))]
        for view, start in zip(views, (100, 200)):
            view[:] = [start] * 1024
        launch("add_one", 4, 256, int(managed))
        launch("add_one", 4, 256, int(ok(cu.cuMemHostGetDevicePointer(pinned, 0))))
        out["sync"] = code(cu.cuStreamSynchronize(stream))
        out["host"] = [sorted(set(view)) for view in views]
    elif step == "held":  # a kernel behind a stream memory wait computes once the wait is met
        flag, copy = ok(cu.cuMemAlloc(4)), ok(cu.cuMemAlloc(4096))
        ok(cu.cuMemsetD32(flag, 0, 1))
        ok(cu.cuMemsetD32(buf, 5, 1024))
        held, other = ok(cu.cuStreamCreate(1)), ok(cu.cuStreamCreate(1))  # non-blocking: the legacy stream goes on
        ok(cu.cuStreamWaitValue32(held, flag, 1, 0))  # until *flag >= 1
        out["launch"] = launch("add_one", 4, 256, int(buf), on=held)
        ok(cu.cuMemcpyDtoDAsync(copy, buf, 4096, held))  # kept behind the kernel
        ok(cu.cuMemsetD32(buf, 10, 1024))  # what the kernel must see: the memory when the wait is met
        out["query"] = code(cu.cuStreamQuery(held))
        ok(cu.cuStreamWriteValue32(other, flag, 1, 0))
        out["sync"] = code(cu.cuStreamSynchronize(held))
        values = (ctypes.c_int * 1024)()
        ok(cu.cuMemcpyDtoH(ctypes.addressof(values), copy, 4096))
        out["copy"] = sorted(set(values))
        rc, values = read(1024)
        out["buf"] = [rc, sorted(set(values))]
    elif step == "fail":
        out["launch"] = launch("fail", 1, 32, int(buf))
        out["sync"] = code(cu.cuCtxSynchronize())
        out["after"] = code(cu.cuMemAlloc(64)[0])
        out["device"] = code(cu.cuDeviceGetCount()[0])
print(json.dumps(out))
"""


def _image(tmp_path_factory, kind: str) -> Path:
    if not Path(NVCC).exists():
        pytest.skip("nvcc is not on this machine")
    folder = tmp_path_factory.mktemp("compute")
    source = folder / "kernels.cu"
    source.write_text(SOURCE)
    image = folder / f"kernels.{kind}"
    flag = ["-ptx", "-arch=compute_90"] if kind == "ptx" else ["-cubin", "-arch=sm_90"]
    subprocess.run([NVCC, *flag, "-O3", "-o", str(image), str(source)], check=True, capture_output=True)
    return image


@pytest.fixture(scope="module")
def ptx(tmp_path_factory) -> Path:
    return _image(tmp_path_factory, "ptx")


@pytest.fixture(scope="module")
def cubin(tmp_path_factory) -> Path:
    return _image(tmp_path_factory, "cubin")


def _launches(vgpud: Vgpud, kernel: str) -> list[dict]:
    return [launch for launch in vgpud.control("launches")["launches"] if launch["kernel"] == kernel]


def test_kernels_compute_in_stream_order(vgpud, ptx):
    out = _run(vgpud, ptx, "order")
    assert out["order"] == [0, [43]]
    outcomes = [launch["compute"] for launch in _launches(vgpud, "add_one")]
    on_a_gpu = vgpud.through == "cuda-backend"  # (a GPU runs them: no host time)
    assert outcomes and all(o["status"] == "computed" and (on_a_gpu or o["host_us"] > 0) for o in outcomes), outcomes


def simulator_only(vgpud: Vgpud) -> None:
    if vgpud.through == "cuda-backend":
        pytest.skip("the cuda backend's GPU runs the kernels: this is the simulator's computing")


def _run(vgpud: Vgpud, image: Path, *steps: str, env: dict[str, str] | None = None) -> dict:
    result = subprocess.run([sys.executable, "-c", CLIENT, str(image), *steps],
                            env=vgpud.env | (env or {}), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_kernels_reach_managed_and_mapped_page_locked_memory(vgpud, ptx):
    vgpud.local_only("managed and page-locked memory are the client's own, on its host")
    simulator_only(vgpud)
    out = _run(vgpud, ptx, "host")
    assert out["sync"] == 0 and out["host"] == [[101], [201]]


def test_a_long_kernel_is_waited_for_and_queries_say_not_ready(vgpud, ptx):
    """The client waits at most 700 ms for an answer; the kernel spins for about 2 s: vgpud's
    busy notices keep the wait going, and cuStreamQuery answers at once: not ready."""
    simulator_only(vgpud)
    out = _run(vgpud, ptx, "long", "cycles=6000000000", env={"VGPU_TIMEOUT_MS": "700"})
    assert out["query"] == 600  # CUDA_ERROR_NOT_READY
    assert out["sync"] == 0 and out["waited"] > 0.7
    assert out["spin"] == [0, list(range(1, 33))]


def test_a_kernel_behind_a_stream_memory_wait_computes_when_the_wait_is_met(vgpud, ptx):
    """cuStreamWaitValue32 holds a stream: a kernel launched behind it runs once another
    stream's write meets the condition, on the memory as it is then (the host rewrote it
    meanwhile), and the copy behind the kernel sees the kernel's results."""
    simulator_only(vgpud)
    out = _run(vgpud, ptx, "held")
    assert out == {"launch": 0, "query": 600, "sync": 0, "copy": [11], "buf": [0, [11]]}


def test_a_trap_is_sticky_for_the_process(vgpud, ptx):
    simulator_only(vgpud)
    out = _run(vgpud, ptx, "fail")
    assert out["launch"] == 0  # launches are asynchronous: the failure comes at the next synchronisation
    assert out["sync"] == 715 and out["after"] == 715  # CUDA_ERROR_ILLEGAL_INSTRUCTION, and it stays
    assert out["device"] == 0  # device queries still answer
    assert _run(vgpud, ptx, "order")["order"] == [0, [43]]  # another process is not affected
    failed = _launches(vgpud, "fail")[-1]["compute"]
    assert failed["status"] == "failed"


def test_sass_only_launches_say_why_they_are_not_computed(vgpud, cubin):
    simulator_only(vgpud)
    out = _run(vgpud, cubin, "order")
    assert out["order"][0] == 0  # the launch itself succeeds: only its results are missing
    outcome = _launches(vgpud, "fill")[-1]["compute"]
    assert outcome == {"status": "not computed", "reason": "SASS only, sm_90", "host_us": 0.0}


def test_compute_off_records_and_times_only(tmp_path, ptx):
    folder = tmp_path / "off"
    folder.mkdir()
    process = launcher.start_daemon("h100", folder / "vgpud.sock", folder / "vgpud.log", detach=False,
                                    options=("--compute", "off"))
    daemon = Vgpud(process, folder / "vgpud.sock", folder / "vgpud.log", gpus=gpuset.parse("h100").gpus)
    try:
        out = _run(daemon, ptx, "order")
        assert out["order"] == [0, [0]]  # nothing computed: the memory stays as cuMemAlloc left it
        assert _launches(daemon, "fill")[-1]["compute"]["status"] == "off"
        assert "--compute off" in daemon.control("launches")["note"]
    finally:
        daemon.stop()
