"""numba-cuda 0.30 (with its cu13 extra: cuda-bindings, NVVM 13.5) on a simulated H100, in the
cupy-onnxruntime stack environment (tests/stack_envs.py): start-up, exact copies, a compiled
kernel and a cooperative one (grid sync) reaching vgpud's launch log. Kernels are recorded,
not computed, so results are not checked."""

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


def test_cooperative_kernel(vgpud, tmp_path):
    out, launches = run(vgpud, tmp_path, SCRIPT + COOPERATIVE)
    synced = [launch for launch in launches if "grid_synced" in launch["kernel"]]
    assert len(synced) == 1 and synced[0]["cooperative"], "a grid-synchronising kernel launches cooperatively"
    assert synced[0]["grid"] == [8, 1, 1] and synced[0]["block"] == [128, 1, 1]
