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

from tests.conftest import Vgpud, run_python
from vgpu import launcher


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
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    from vgpu.remote.tokens import TokenStore

    token = TokenStore(tmp_path / "state").create("gpu-tests")
    host = start_cuda_backend(tmp_path / "host", ("--listen", f"127.0.0.1:{port}", "--tls-cert",
                                                   str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"),
                                                   "--state-dir", str(tmp_path / "state")))
    try:
        socket_path, pid, _ = launcher.up_remote(f"localhost:{port}", token, tmp_path / "ca.pem", 5.0,
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
