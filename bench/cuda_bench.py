"""The CUDA driver through libvgpu-cuda.so against floors measured in the same run:

- a synchronous driver call (cuCtxSynchronize on an idle context) against a raw
  Unix-socket round trip between two processes;
- host-to-device and device-to-host bandwidth for 4 KiB, 1 MiB, 64 MiB and 1 GiB, from
  page-locked memory (cuMemAllocHost: vgpud maps it) and from ordinary memory (through the
  socket), against plain memcpy in the same process;
- start-up: process start to the first cudaGetDeviceCount returning 8 GPUs (a program built
  with nvcc, when nvcc is on the machine).

    python bench/cuda_bench.py [--calls N] [--no-gib]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness import median_seconds, pinned_vgpud, socket_floor

from vgpu import launcher

SIZES = {"4KiB": 4 << 10, "1MiB": 1 << 20, "64MiB": 64 << 20, "1GiB": 1 << 30}
COUNT_PROGRAM = r"""
#include <cstdio>
#include <cuda_runtime.h>
int main() { int n = 0; cudaGetDeviceCount(&n); printf("%d\n", n); return n == 8 ? 0 : 1; }
"""


def check(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{what} answered {rc}")


def host_buffer(cuda: ctypes.CDLL, memory: str, size: int) -> ctypes.c_void_p:
    """Page-locked memory from the driver (which vgpud maps), or ordinary memory."""
    if memory == "pageable":
        return ctypes.cast(ctypes.create_string_buffer(size), ctypes.c_void_p)
    pointer = ctypes.c_void_p()
    check(cuda.cuMemAllocHost_v2(ctypes.byref(pointer), ctypes.c_size_t(size)), "cuMemAllocHost")
    return pointer


def bandwidth(cuda: ctypes.CDLL, memory: str, names: list[str]) -> dict[str, dict[str, float]]:
    figures = {}
    for name in names:
        size = SIZES[name]
        repeats = max(3, min(200, (256 << 20) // size))
        host, other = host_buffer(cuda, memory, size), host_buffer(cuda, memory, size)
        ctypes.memset(host, 0x5A, size)
        dptr = ctypes.c_uint64()
        check(cuda.cuMemAlloc_v2(ctypes.byref(dptr), ctypes.c_size_t(size)), "cuMemAlloc")
        memcpy = median_seconds(lambda: ctypes.memmove(other, host, size), repeats)
        h2d = median_seconds(lambda: check(cuda.cuMemcpyHtoD_v2(dptr, host, ctypes.c_size_t(size)), "HtoD"), repeats)
        d2h = median_seconds(lambda: check(cuda.cuMemcpyDtoH_v2(other, dptr, ctypes.c_size_t(size)), "DtoH"), repeats)
        check(cuda.cuMemFree_v2(dptr), "cuMemFree")
        if memory == "pinned":
            check(cuda.cuMemFreeHost(host), "cuMemFreeHost")
            check(cuda.cuMemFreeHost(other), "cuMemFreeHost")
        figures[name] = {"memcpy_GBps": round(size / memcpy / 1e9, 2),
                         "h2d_GBps": round(size / h2d / 1e9, 3), "d2h_GBps": round(size / d2h / 1e9, 3),
                         "h2d_ratio": round(memcpy / h2d, 3), "d2h_ratio": round(memcpy / d2h, 3)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--no-gib", action="store_true", help="skip the 1 GiB transfers")
    args = parser.parse_args()
    results: dict[str, object] = {}
    with pinned_vgpud("8xh100") as daemon:
        cuda = ctypes.CDLL(str(launcher.library_path("libvgpu-cuda.so")))
        check(cuda.cuInit(0), "cuInit")
        ctx = ctypes.c_void_p()
        check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0), "cuDevicePrimaryCtxRetain")
        check(cuda.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        floor = socket_floor(args.calls)
        sync = median_seconds(lambda: cuda.cuCtxSynchronize(), args.calls)
        results["sync_call"] = {"floor_us": round(floor * 1e6, 2), "cuCtxSynchronize_us": round(sync * 1e6, 2),
                                "ratio": round(sync / floor, 2)}
        for memory in ("pinned", "pageable"):
            results[f"bandwidth_{memory}"] = bandwidth(cuda, memory, [n for n in SIZES if n != "1GiB" or not args.no_gib])
        nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
        if Path(nvcc).exists():
            folder = Path(tempfile.mkdtemp())
            (folder / "count.cu").write_text(COUNT_PROGRAM)
            subprocess.run([nvcc, "-o", str(folder / "count"), str(folder / "count.cu")], check=True)
            env = daemon.env
            startup = median_seconds(lambda: subprocess.run([str(folder / "count")], env=env, check=True,
                                                            capture_output=True), 10)
            bare = median_seconds(lambda: subprocess.run(["true"], check=True), 10)
            results["startup"] = {"first_cudaGetDeviceCount_8_gpus_ms": round(startup * 1e3, 1),
                                  "floor_process_start_ms": round(bare * 1e3, 2)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
