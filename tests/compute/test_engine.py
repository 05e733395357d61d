"""The in-process engine's own behaviour: compiled kernels cached on disk, kernels whose run
cannot be seen skipped, instructions it does not know named, parameters packed as the PTX
lays them out, the lowering's scheduling of diverged lanes, barriers and spin locks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

NVCC = shutil.which("nvcc") or "/usr/local/cuda-13.0/bin/nvcc"

SOURCE = r"""
#include <cuda_fp16.h>
extern "C" __global__ void empty() {}
extern "C" __global__ void scale(float *x, __half h, double d, char c) {
  x[threadIdx.x] = x[threadIdx.x] * __half2float(h) + (float)d + c;
}
// lanes of one warp diverge four ways, loop different numbers of times, meet at a barrier
// inside a loop, and one warp returns early
extern "C" __global__ void diverge(int *out, int rounds) {
  __shared__ int total[4];
  int t = threadIdx.x;
  if (t < 4) total[t] = 0;
  __syncthreads();
  if (t >= 224) return;
  int v = 0;
#pragma unroll 1
  for (int r = 0; r < rounds; r++) {
    switch (t % 4) {
      case 0: v += t; break;
      case 1: for (int k = 0; k < t % 7; k++) v += k; break;
      case 2: v -= r; break;
      default: v ^= t << r;
    }
    __syncthreads();
    if (t % 32 == 0) atomicAdd(&total[r % 4], 1);
    __syncthreads();
  }
  out[t] = v + total[t % 4];
}
// a spin lock every thread takes: in a warp, the lane holding it runs ahead of those spinning
extern "C" __global__ void locked(int *lock, int *counter) {
  while (atomicCAS(lock, 0, 1) != 0) {}
  *counter += 1;
  __threadfence();
  atomicExch(lock, 0);
}
// a half-precision tensor-core product: not in the engine yet
#include <mma.h>
extern "C" __global__ void tensor(half *a, float *c) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, half, nvcuda::wmma::row_major> fa;
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, half, nvcuda::wmma::col_major> fb;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> fc;
  nvcuda::wmma::fill_fragment(fc, 0.0f);
  nvcuda::wmma::load_matrix_sync(fa, a, 16);
  nvcuda::wmma::load_matrix_sync(fb, a, 16);
  nvcuda::wmma::mma_sync(fc, fa, fb, fc);
  nvcuda::wmma::store_matrix_sync(c, fc, 16, nvcuda::wmma::mem_row_major);
}
"""


@pytest.fixture(scope="module")
def ptx(tmp_path_factory) -> str:
    if not Path(NVCC).exists():
        pytest.skip("nvcc is not on this machine")
    folder = tmp_path_factory.mktemp("engine")
    (folder / "k.cu").write_text(SOURCE)
    subprocess.run([NVCC, "-ptx", "-arch=compute_90", "-O3", "-o", str(folder / "k.ptx"), str(folder / "k.cu")],
                   check=True, capture_output=True)
    return (folder / "k.ptx").read_text()


@pytest.fixture
def engine(tmp_path, monkeypatch):
    monkeypatch.setenv("VGPU_COMPUTE_CACHE", str(tmp_path / "cache"))
    from vgpu.compute import engine
    return engine


def test_compiled_kernels_come_back_from_the_disk_cache(engine, ptx, tmp_path):
    from vgpu.compute import compiler

    engine.Program.from_ptx(ptx).kernel("scale").compile()
    assert len(list((tmp_path / "cache").glob("*.kernel"))) == 1
    compiled = []
    original = compiler.compile_object
    try:
        compiler.compile_object = lambda module: compiled.append(module) or original(module)
        x = np.ones(32, np.float32)
        engine.Program.from_ptx(ptx).kernel("scale").launch((1,), (32,), [x, np.float16(2.5), 0.25, 3])
    finally:
        compiler.compile_object = original
    assert compiled == [] and (x == 1 * 2.5 + 0.25 + 3).all()


def test_parameters_are_packed_as_the_ptx_lays_them_out(engine, ptx):
    kernel = engine.Program.from_ptx(ptx).kernel("scale")
    packed = kernel.pack([0x1122334455667788, np.float16(-2.0), 1.5, -1])
    assert packed[:8] == (0x1122334455667788).to_bytes(8, "little")
    assert packed[8:10] == np.float16(-2.0).tobytes()
    assert np.frombuffer(packed[16:24], np.float64)[0] == 1.5 and packed[24:25] == b"\xff"
    with pytest.raises(TypeError):
        kernel.pack([1, 2])


def test_a_kernel_whose_run_cannot_be_seen_is_not_run(engine, ptx):
    result = engine.Program.from_ptx(ptx).kernel("empty").launch((1 << 20,), (1024,), [])
    assert result.seconds == 0.0


def test_diverged_lanes_meet_at_barriers_in_loops(engine, ptx):
    out = np.zeros(256, np.int32)
    rounds = 5
    engine.Program.from_ptx(ptx).kernel("diverge").launch((1,), (256,), [out, rounds])
    expected = np.zeros(256, np.int64)
    for t in range(224):
        v = 0
        for r in range(rounds):
            v = [v + t, v + sum(range(t % 7)), v - r, v ^ (t << r)][t % 4]
        expected[t] = v + [14, 7, 7, 7][t % 4]  # seven warps add 1 to total[r % 4] in each of the rounds 0-4
    assert out[:224].tolist() == expected[:224].tolist()
    assert (out[224:] == 0).all()


def test_kernels_compile_on_several_threads_at_once(engine, ptx):
    """vgpud compiles the kernels of different processes on a pool of threads: each thread
    has a target machine of its own, and every kernel comes out right."""
    import threading

    program = engine.Program.from_ptx(ptx)
    names = ["scale", "diverge", "locked"]
    failures: list[BaseException] = []

    def compile_one(name: str) -> None:
        try:
            program.kernel(name).compile()
        except BaseException as error:  # noqa: B036 (reported below)
            failures.append(error)

    threads = [threading.Thread(target=compile_one, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    x = np.ones(32, np.float32)
    program.kernel("scale").launch((1,), (32,), [x, np.float16(2.0), 0.5, 1])
    assert (x == 3.5).all()


def test_a_spin_lock_held_by_a_lane_of_the_same_warp_is_let_go(engine, ptx):
    """Lanes spinning on a lock run first (they are behind), but now and then the lane
    holding it runs, as a GPU's independent thread scheduling lets it."""
    lock, counter = np.zeros(1, np.int32), np.zeros(1, np.int32)
    engine.Program.from_ptx(ptx).kernel("locked").launch((4,), (64,), [lock, counter])
    assert counter[0] == 256 and lock[0] == 0


def test_instructions_not_in_the_engine_are_named(engine, ptx):
    from vgpu.compute.lower.registry import Unsupported

    with pytest.raises(Unsupported, match="wmma"):
        engine.Program.from_ptx(ptx).kernel("tensor").compile()
