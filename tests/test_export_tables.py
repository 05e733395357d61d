"""The driver's private export tables as NVIDIA's closed libraries use them: cuBLASLt's
half-precision matmul (1734dc26), cuFFT's plans (6e163fbe TOOLS_MODULE), CUPTI (7cb63f9b),
cudart's error log (f8cff951), each in a process of its own under vgpud.

The libraries come from the wheels the test extra installs (pinned by torch 2.14.1: cuBLAS 13.1,
cuFFT 12.0, CUPTI 13.0) and from today's stack environments (tests/stack_envs.py): torch 2.15's
(cuBLAS 13.4, cuFFT 12.2, CUPTI 13.2) and JAX's (cuBLAS 13.10, cuFFT 12.5, CUPTI 13.5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import stack_envs

CLIENTS = Path(__file__).parent / "clients"


def pinned_libraries() -> Path:
    import nvidia

    return Path(next(iter(nvidia.__path__))) / "cu13" / "lib"


@pytest.fixture(params=["pinned", "torch", "jax"])
def libraries(request) -> Path:
    """The folder holding libcublasLt, libcufft and libcupti of one stack."""
    if request.param == "pinned":
        return pinned_libraries()
    found = stack_envs.nvidia_libraries(request.param)
    if found is None:
        pytest.skip(stack_envs.missing_reason(request.param))
    return found


def run_library(what: str, libraries: Path, env: dict[str, str]) -> tuple[dict, str]:
    result = subprocess.run([sys.executable, str(CLIENTS / "nvidia_libraries.py"), what, str(libraries)],
                            env={**env, "VGPU_LOG": "info"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout), result.stderr


@pytest.mark.parametrize("what", ["cublaslt-f16", "cublaslt-bf16"])
def test_cublaslt_half_precision_matmul(vgpud, libraries, what):
    """cuBLASLt 13.1 and later ask for 1734dc26 in their heuristics and call its slot 4 (a NULL
    table crashed them); its answer "not supported" leaves them to go on without the layout."""
    out, log = run_library(what, libraries, vgpud.env)
    assert out["create"] == 0 and out["desc"] == 0 and out["layouts"] == [0, 0, 0]
    assert out["heuristic"] == 0 and out["algorithms"] >= 1
    assert out["matmul"] == 0 and out["destroy"] == 0
    assert "1734dc26 GPU_LAYOUT slot 4 called" in log


def test_cufft_plan_and_transform(vgpud, libraries):
    """cuFFT loads its kernels as modules of one function (LZ4-compressed fat binaries) and finds
    each CUfunction through TOOLS_MODULE's iterator; the transform launches them."""
    out, _ = run_library("cufft", libraries, vgpud.env)
    assert out["version_rc"] == 0 and out["plan"] == 0 and out["exec"] == 0 and out["destroy"] == 0
    assert any("fft" in launch["kernel"] for launch in vgpud.control("launches")["launches"])


def test_cupti_version_and_activity(vgpud, libraries):
    """With CUPTI's table served, cuptiGetVersion answers; activity tracing, which needs the tools
    tables vgpu refuses, fails with a CUPTI error code and does not crash."""
    out, _ = run_library("cupti", libraries, vgpud.env)
    assert out["version_rc"] == 0 and out["version"] >= 130000
    CUPTI_ERROR_UNKNOWN = 999
    for call in ("register", "enable", "flush", "disable"):
        assert out[call] in (0, CUPTI_ERROR_UNKNOWN), (call, out)


def test_tables_through_the_driver(vgpud):
    """Each new table has its size slot and no NULL slot; an id vgpu does not serve is refused
    with no table; TOOLS_MODULE's [7] calls back once per function of a module, in order, and
    answers 1 (0 for a handle that is no module)."""
    result = subprocess.run([sys.executable, str(CLIENTS / "export_tables.py")], env=vgpud.env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["sizes"] == {"runtime_log": [0, 24, True], "gpu_layout": [0, 112, True],
                            "tools_module": [0, 776, True], "tools_cupti": [0, 488, True],
                            "torch_69a28e9f": [0, 272, True]}
    assert out["refused"] == [1, False]  # CUDA_ERROR_INVALID_VALUE, *table = NULL
    assert out["iterate"] == 1 and out["users"] == [1234, 1234] and out["functions"] == ["twice", "zero"]
    assert out["iterate_bad_module"] == 0


CUDART_ERROR = """
import ctypes, json, sys
rt = ctypes.CDLL(sys.argv[1])
count = ctypes.c_int()
print(json.dumps({"count": rt.cudaGetDeviceCount(ctypes.byref(count)), "set": rt.cudaSetDevice(99)}))
"""


def test_cudart_reports_errors_to_the_runtime_log(vgpud):
    """cudart 13 writes the message of a failed call through f8cff951's slot 1 (a printf format
    and its arguments); vgpu logs it."""
    cudart = pinned_libraries() / "libcudart.so.13"
    result = subprocess.run([sys.executable, "-c", CUDART_ERROR, str(cudart)], env={**vgpud.env, "VGPU_LOG": "info"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"count": 0, "set": 101}  # cudaErrorInvalidDevice
    assert "CUDA: Invalid device number 99 provided, must be in the range of 0 to 3" in result.stderr
