"""Shared fixtures: vgpud instances on private sockets, and an NVML client through the vgpu library."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vgpu import launcher
from vgpu.wire.client import Client


@dataclass
class Vgpud:
    process: subprocess.Popen
    socket: Path
    log: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment for a client process: the library links first, this daemon's socket."""
        return launcher.client_environment(self.socket)

    def client(self) -> Client:
        return Client(self.socket)

    def control(self, cmd: str, **args):
        with self.client() as client:
            return client.control(cmd, **args)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def start_vgpud(gpus: str, folder: Path) -> Vgpud:
    folder.mkdir(parents=True, exist_ok=True)
    socket_path, log = folder / "vgpud.sock", folder / "vgpud.log"
    process = launcher.start_daemon(gpus, socket_path, log, detach=False)
    return Vgpud(process, socket_path, log)


@pytest.fixture
def vgpud_factory(tmp_path_factory):
    started: list[Vgpud] = []

    def make(gpus: str = "h100") -> Vgpud:
        daemon = start_vgpud(gpus, tmp_path_factory.mktemp("vgpud"))
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture(scope="module")
def vgpud(tmp_path_factory):
    """A daemon with a mixed set, shared by a test module."""
    daemon = start_vgpud("2xh100,l4,rtx4090", tmp_path_factory.mktemp("vgpud"))
    yield daemon
    daemon.stop()


@pytest.fixture
def nvml(vgpud, monkeypatch):
    """pynvml in this process, initialised against the module's vgpud through libvgpu-nvml.so."""
    import pynvml

    from vgpu.smi.snapshot import load_library

    monkeypatch.setenv("VGPU_SOCKET", str(vgpud.socket))
    load_library()
    pynvml.nvmlInit()
    yield pynvml
    pynvml.nvmlShutdown()


def run_python(code: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


def run_json(code: str, env: dict[str, str], timeout: float = 60) -> Any:
    """Run a Python client that prints one JSON document; its answer, after checking it succeeded."""
    result = run_python(code, env, timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


#: where the machine's CUDA toolkit keeps cudart 13
CUDA_LIB = Path("/usr/local/cuda/lib64")


def build_ollama_pattern(folder: Path) -> tuple[Path, Path, Path]:
    """Ollama's discovery in miniature (tests/clients/ollama_pattern): a server, a runner, and a
    bundle folder holding cudart 13, a libcuda.so.1 link to the vgpu library and a backend
    library that needs both, as ggml-cuda does."""
    sources = Path(__file__).parent / "clients" / "ollama_pattern"
    bundle = folder / "lib" / "ollama" / "cuda_v13"
    bundle.mkdir(parents=True)
    shutil.copy(CUDA_LIB / "libcudart.so.13", bundle)
    (bundle / "libcuda.so.1").symlink_to(launcher.library_path("libvgpu-cuda.so"))
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(bundle / "libggml-probe.so"), str(sources / "probe.c"),
                    f"-L{bundle}", "-l:libcudart.so.13", "-l:libcuda.so.1"], check=True)
    for program in ("server", "runner"):
        subprocess.run(["cc", "-o", str(folder / program), str(sources / f"{program}.c")], check=True)
    return folder / "server", folder / "runner", bundle


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
