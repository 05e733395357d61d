"""CuPy 14.2 (cupy-cuda13x with the CUDA 13.5 wheels: cuBLAS 13.10, cuFFT 12.5, NVRTC 13.5) on a
simulated H100, in the cupy-onnxruntime stack environment (tests/stack_envs.py).

Kernels are recorded, not computed: the tests check start-up, exact copies (the Default
kind of unified addressing included), kernels in vgpud's launch log, and no error or crash."""

from __future__ import annotations

import pytest

from tests.stack_envs import answer

VGPUD_GPUS = "h100"  # the vgpud fixture's GPUs (tests/conftest.py)

PROLOGUE = """
import json, os
import numpy as np
import cupy as cp
out = {"pid": os.getpid(), "version": cp.__version__, "count": cp.cuda.runtime.getDeviceCount()}
rng = np.random.default_rng(12)
"""


def run(vgpud, tmp_path, body: str) -> dict:
    out = answer("cupy-onnxruntime", PROLOGUE + body + "\nprint(json.dumps(out))\n", vgpud, tmp_path)
    assert out["version"].startswith("14.2") and out["count"] == 1
    return out


def launched(vgpud, pid: int) -> list[dict]:
    return vgpud.control("launches", pid=pid)["launches"]


def test_copies_are_exact(vgpud, tmp_path):
    out = run(vgpud, tmp_path, """
host = rng.integers(0, 256, 3 << 20, dtype=np.uint8)
on_gpu = cp.asarray(host)
out["round_trip"] = bool((cp.asnumpy(on_gpu) == host).all())
copy = cp.empty_like(on_gpu)  # ndarray.copy() is a kernel: copy with the runtime instead
cp.cuda.runtime.memcpy(copy.data.ptr, on_gpu.data.ptr, host.nbytes, cp.cuda.runtime.memcpyDeviceToDevice)
out["device_copy"] = bool((copy.get() == host).all())
pinned = cp.cuda.alloc_pinned_memory(host.nbytes)
staged = np.frombuffer(pinned, np.uint8, host.nbytes)
stream = cp.cuda.Stream(non_blocking=True)
on_gpu.get(stream=stream, out=staged)
stream.synchronize()
out["pinned_async"] = bool((staged == host).all())
""")
    assert out["round_trip"] and out["device_copy"] and out["pinned_async"]


def test_default_kind_copies(vgpud, tmp_path):
    """cudaMemcpy(..., cudaMemcpyDefault): the driver tells host from device by the address."""
    out = run(vgpud, tmp_path, """
runtime = cp.cuda.runtime
host = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
first = cp.empty(host.nbytes, cp.uint8)
second = cp.empty(host.nbytes, cp.uint8)
back = np.zeros_like(host)
runtime.memcpy(first.data.ptr, host.ctypes.data, host.nbytes, runtime.memcpyDefault)
runtime.memcpy(second.data.ptr, first.data.ptr, host.nbytes, runtime.memcpyDefault)
runtime.memcpy(back.ctypes.data, second.data.ptr, host.nbytes, runtime.memcpyDefault)
out["sync_default"] = bool((back == host).all())
stream = cp.cuda.Stream(non_blocking=True)
again = np.zeros_like(host)
runtime.memcpyAsync(again.ctypes.data, first.data.ptr, host.nbytes, runtime.memcpyDefault, stream.ptr)
stream.synchronize()
out["async_default"] = bool((again == host).all())
third = cp.empty_like(first)
third.data.copy_from_device(first.data, host.nbytes)  # how CuPy copies between its buffers
out["copy_from_device"] = bool((third.get() == host).all())
""")
    assert out["sync_default"], "host -> device -> device -> host with the Default kind is exact"
    assert out["async_default"] and out["copy_from_device"]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_matmul(vgpud, tmp_path, dtype):
    out = run(vgpud, tmp_path, f"""
a = cp.asarray(rng.standard_normal((256, 512)).astype(np.{dtype}))
b = cp.asarray(rng.standard_normal((512, 128)).astype(np.{dtype}))
c = a @ b
cp.cuda.Device().synchronize()
out["shape"] = list(c.shape)
out["dtype"] = str(c.dtype)
""")
    assert out["shape"] == [256, 128] and out["dtype"] == dtype
    assert launched(vgpud, out["pid"]), "cuBLAS's GEMM kernel reaches vgpud's launch log"


def test_fft(vgpud, tmp_path):
    out = run(vgpud, tmp_path, """
x = cp.asarray(rng.standard_normal((4, 1024)).astype(np.complex64))
spectrum = cp.fft.fft(x)
half = cp.fft.rfft(cp.asarray(rng.standard_normal(4096).astype(np.float32)))
cp.cuda.Device().synchronize()
out["shapes"] = [list(spectrum.shape), list(half.shape)]
""")
    assert out["shapes"] == [[4, 1024], [2049]]
    assert launched(vgpud, out["pid"]), "cuFFT's kernels reach vgpud's launch log"


def test_raw_kernel(vgpud, tmp_path):
    out = run(vgpud, tmp_path, """
scale = cp.RawKernel(r'''
extern "C" __global__ void scale_by(const float *x, float *y, float factor, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = factor * x[i];
}''', "scale_by")
x = cp.asarray(np.arange(5000, dtype=np.float32))
y = cp.empty_like(x)
scale((20,), (256,), (x, y, np.float32(2.5), np.int32(5000)))
cp.cuda.Device().synchronize()
out["pointers"] = [x.data.ptr, y.data.ptr]
out["inputs_exact"] = bool((x.get() == np.arange(5000, dtype=np.float32)).all())
""")
    assert out["inputs_exact"]
    launches = [launch for launch in launched(vgpud, out["pid"]) if launch["kernel"] == "scale_by"]
    assert len(launches) == 1
    assert launches[0]["grid"] == [20, 1, 1] and launches[0]["block"] == [256, 1, 1]
    args = bytes.fromhex(launches[0]["args_hex"])
    assert args[:16] == out["pointers"][0].to_bytes(8, "little") + out["pointers"][1].to_bytes(8, "little")
    assert args[16:24] == bytes.fromhex("0000204088130000"), "2.5f and 5000 follow the pointers"
