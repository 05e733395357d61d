"""numba-cuda 0.30 on a simulated H100. With its cu13 extra (cupy-onnxruntime stack
environment, tests/stack_envs.py), nvJitLink links kernels to SASS: start-up, exact copies,
a compiled kernel and a cooperative one (grid sync) reach vgpud's launch log, not computed,
and say why. Without nvJitLink (numba-driver-link environment) numba links through the
driver, which gets its PTX: elementwise, shared-memory and atomic kernels compute, checked
against numpy (a grid-synchronising kernel needs the device runtime library, whose link
through the driver is not served yet)."""

from __future__ import annotations

from tests.stack_envs import answer

VGPUD_GPUS = "h100"  # the vgpud fixture's GPUs (tests/conftest.py)

SCRIPT = """
import json, os
import numpy as np
from numba import cuda

out = {"pid": os.getpid(), "available": cuda.is_available(), "name": cuda.get_current_device().name.decode()
       if isinstance(cuda.get_current_device().name, bytes) else cuda.get_current_device().name}
host = np.random.default_rng(9).integers(0, 256, 1 << 20, dtype=np.uint8)
on_gpu = cuda.to_device(host)
out["round_trip"] = bool((on_gpu.copy_to_host() == host).all())

@cuda.jit
def double_it(x, y):
    i = cuda.grid(1)
    if i < x.size:
        y[i] = 2 * x[i]

y = cuda.device_array_like(on_gpu)
double_it[4096, 256](on_gpu, y)
cuda.synchronize()
out["input_exact"] = bool((on_gpu.copy_to_host() == host).all())
"""

COOPERATIVE = """
@cuda.jit
def grid_synced(x):
    i = cuda.grid(1)
    cuda.cg.this_grid().sync()
    if i < x.size:
        x[i] += 1

grid_synced[8, 128](y)
cuda.synchronize()
"""


def run(vgpud, tmp_path, script: str) -> tuple[dict, list[dict]]:
    """The client's answer and its launches, after checking it started and copied exactly."""
    out = answer("cupy-onnxruntime", script + "\nprint(json.dumps(out))\n", vgpud, tmp_path)
    assert out["available"] and out["name"] == "NVIDIA H100 80GB HBM3"
    assert out["round_trip"] and out["input_exact"]
    return out, vgpud.control("launches", pid=out["pid"])["launches"]


def test_kernel_and_copies(vgpud, tmp_path):
    out, launches = run(vgpud, tmp_path, SCRIPT)
    doubled = [launch for launch in launches if "double_it" in launch["kernel"]]
    assert len(doubled) == 1 and doubled[0]["grid"] == [4096, 1, 1] and not doubled[0]["cooperative"]
    assert doubled[0]["compute"] == {"status": "not computed", "reason": "SASS only, sm_90", "host_us": 0.0}


def test_cooperative_kernel(vgpud, tmp_path):
    out, launches = run(vgpud, tmp_path, SCRIPT + COOPERATIVE)
    synced = [launch for launch in launches if "grid_synced" in launch["kernel"]]
    assert len(synced) == 1 and synced[0]["cooperative"], "a grid-synchronising kernel launches cooperatively"
    assert synced[0]["grid"] == [8, 1, 1] and synced[0]["block"] == [128, 1, 1]


COMPUTED = """
import json, os
import numpy as np
from numba import cuda, float32, int32

rng = np.random.default_rng(3)
out = {"pid": os.getpid()}

@cuda.jit
def axpy(r, a, x, y):
    i = cuda.grid(1)
    if i < r.size:
        r[i] = a * x[i] + y[i]

@cuda.jit
def block_sums(out, x):
    s = cuda.shared.array(256, float32)
    t = cuda.threadIdx.x
    i = cuda.grid(1)
    s[t] = x[i] if i < x.size else 0
    cuda.syncthreads()
    k = 128
    while k > 0:
        if t < k:
            s[t] += s[t + k]
        cuda.syncthreads()
        k //= 2
    if t == 0:
        out[cuda.blockIdx.x] = s[0]

@cuda.jit
def histogram(bins, data):
    i = cuda.grid(1)
    if i < data.size:
        cuda.atomic.add(bins, data[i] % bins.size, 1)

@cuda.jit
def votes(out, x):
    i = cuda.grid(1)
    above = 1 if x[i] > 0.5 else 0
    out[i, 0] = cuda.syncthreads_count(above)
    out[i, 1] = cuda.syncthreads_and(above)
    out[i, 2] = cuda.syncthreads_or(above)

x, y = rng.random(10_000, dtype=np.float32), rng.random(10_000, dtype=np.float32)
r = cuda.device_array_like(x)
axpy[40, 256](r, np.float32(2.5), cuda.to_device(x), cuda.to_device(y))
fused = (np.float64(2.5) * x.astype(np.float64) + y).astype(np.float32)  # NVVM contracts a * x + y to an fma
out["axpy"] = bool((r.copy_to_host() == fused).all())
data = rng.random(64 * 256, dtype=np.float32)
sums = cuda.device_array(64, np.float32)
block_sums[64, 256](sums, cuda.to_device(data))
out["block_sums"] = float(np.abs(sums.copy_to_host() - data.reshape(64, 256).sum(1)).max())
values = rng.integers(0, 1000, 50_000).astype(np.int32)
bins = cuda.to_device(np.zeros(17, np.int32))
histogram[200, 256](bins, cuda.to_device(values))
out["histogram"] = bool((bins.copy_to_host() == np.bincount(values % 17, minlength=17)).all())
cast = rng.random(4 * 128, dtype=np.float32)
cast[128:256] = 0.75  # a CTA whose threads all agree
answers = cuda.device_array((4 * 128, 3), np.int32)
votes[4, 128](answers, cuda.to_device(cast))
ctas = (cast > 0.5).reshape(4, 128)
want = np.repeat(np.stack([ctas.sum(1), ctas.all(1), ctas.any(1)], 1), 128, axis=0)
out["votes"] = bool((answers.copy_to_host() == want).all())
"""


def test_kernels_compute_when_numba_links_through_the_driver(vgpud, tmp_path):
    out = answer("numba-driver-link", COMPUTED + "\nprint(json.dumps(out))\n", vgpud, tmp_path)
    assert out["axpy"] and out["histogram"] and out["votes"], out
    assert out["block_sums"] < 1e-3  # the tree adds in another order than numpy's pairwise sum
    launches = vgpud.control("launches", pid=out["pid"])["launches"]
    assert launches and all(launch["compute"]["status"] == "computed" for launch in launches), launches
