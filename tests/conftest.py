"""Shared fixtures: vgpud instances on private sockets, and an NVML client through the vgpu library."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vgpu import launcher
from vgpu.device import gpuset
from vgpu.remote.tokens import TokenStore
from vgpu.wire.client import Client


@dataclass
class Vgpud:
    process: subprocess.Popen
    socket: Path
    log: Path
    #: where the GPUs' own vgpud answers tools (control requests): the same socket, or behind a
    #: relay the GPU host's own
    control_socket: Path | None = None
    #: processes to stop with it (a relay's GPU host)
    others: tuple[subprocess.Popen, ...] = ()
    #: "relay" when clients reach the GPUs through a relay and a GPU host over TLS; "joined"
    #: through a relay that joins two GPU hosts into one device list
    through: str = "local"
    #: the GPUs clients see, in their order (identities as their hosts made them: ``index``
    #: is the GPU's on its host)
    gpus: tuple[gpuset.GpuIdentity, ...] = ()

    @property
    def remote(self) -> bool:
        """Clients reach the GPUs through a relay (and GPU hosts over TLS)."""
        return self.through in ("relay", "joined")

    def local_only(self, why: str) -> None:
        """Skip a test that checks what only a local vgpud does (shared memory, control holds)."""
        if self.remote:
            pytest.skip(f"not through a relay: {why}")

    @property
    def env(self) -> dict[str, str]:
        """Environment for a client process: the library links first, this daemon's socket."""
        return launcher.client_environment(self.socket)

    def client(self) -> Client:
        return Client(self.control_socket or self.socket)

    def control(self, cmd: str, **args):
        with self.client() as client:
            return client.control(cmd, **args)

    def stop(self) -> None:
        for process in (self.process, *self.others):
            if process.poll() is None:
                process.terminate()
                process.wait(10)


def start_vgpud(gpus: str, folder: Path, through: str = "local") -> Vgpud:
    """A vgpud for the tests; ``through="relay"``: a GPU host vgpud serving the GPUs over TLS
    on loopback, and a relay vgpud (backend remote) in front of it for the clients."""
    folder.mkdir(parents=True, exist_ok=True)
    socket_path, log = folder / "vgpud.sock", folder / "vgpud.log"
    if through in ("relay", "joined"):
        return _start_behind_relay(gpus, folder, joined=through == "joined")
    if through == "cuda-backend":
        return _start_cuda_backend_on_simulator(gpus, folder)
    process = launcher.start_daemon(gpus, socket_path, log, detach=False)
    return Vgpud(process, socket_path, log, gpus=gpuset.parse(gpus).gpus)


def tls_files(folder: Path, *names: str) -> Path:
    """A CA and a certificate for ``names`` (trustme): ca.pem, cert.pem and key.pem in folder."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert(*(names or ("localhost",)))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    return folder / "ca.pem"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listen_options(folder: Path, address: str) -> tuple[str, ...]:
    """vgpud's options for a TLS listener with the files of tls_files and a state folder."""
    return ("--listen", address, "--tls-cert", str(folder / "cert.pem"), "--tls-key", str(folder / "key.pem"),
            "--state-dir", str(folder / "state"))


def _start_behind_relay(gpus: str, folder: Path, joined: bool = False) -> Vgpud:
    """GPU hosts on loopback over TLS and a relay in front of them: one host with all of
    ``gpus``, or (``joined``) the first half of them on one host and the rest on another,
    joined by the relay into one device list."""
    tls_files(folder)
    token = TokenStore(folder / "state").create("suite")
    keys = [gpu.profile.key for gpu in gpuset.parse(gpus).gpus]
    halves = [keys[:(len(keys) + 1) // 2], keys[(len(keys) + 1) // 2:]] if joined else [keys]
    hosts, connect, seen = [], [], []
    for domain, half in enumerate(halves):
        seen += gpuset.parse(",".join(half), domain).gpus
        port = free_port()
        hosts.append(launcher.start_daemon(
            ",".join(half), folder / f"host{domain}.sock", folder / f"host{domain}.log", detach=False,
            options=(*listen_options(folder, f"127.0.0.1:{port}"), "--pci-domain", str(domain))))
        connect += ["--connect", f"localhost:{port}"]
    relay = launcher.start_daemon(gpus, folder / "vgpud.sock", folder / "vgpud.log", detach=False, options=(
        "--backend", "remote", *connect, "--ca", str(folder / "ca.pem"), "--timeout", "5"),
        env={**os.environ, "VGPU_TOKEN": token})
    return Vgpud(relay, folder / "vgpud.sock", folder / "vgpud.log",
                 control_socket=None if joined else folder / "host0.sock", others=tuple(hosts),
                 through="joined" if joined else "relay", gpus=tuple(seen))


def _start_cuda_backend_on_simulator(gpus: str, folder: Path) -> Vgpud:
    """The cuda backend (cuda-python's driver bindings) with vgpu's own libcuda.so.1 for its
    driver, in front of a simulator: how the suites check the real-GPU backend without a GPU."""
    simulator = launcher.start_daemon(gpus, folder / "sim.sock", folder / "sim.log", detach=False)
    backend = launcher.start_daemon(gpus, folder / "vgpud.sock", folder / "vgpud.log", detach=False,
                                    options=("--backend", "cuda"),
                                    env=launcher.client_environment(folder / "sim.sock"))
    return Vgpud(backend, folder / "vgpud.sock", folder / "vgpud.log", others=(simulator,), through="cuda-backend",
                 gpus=gpuset.parse(gpus).gpus)


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


def pytest_generate_tests(metafunc):
    """Modules that set EVERY_WAY = True run their tests four times: against a local vgpud,
    through a relay and a GPU host over TLS, through a relay joining two GPU hosts (the CUDA
    and NVML suites over the network), and on the cuda backend with vgpu's own driver over a
    simulator (the real-GPU backend's code without a GPU). VGPU_SUITE_MODES picks some."""
    if "vgpud" in metafunc.fixturenames and getattr(metafunc.module, "EVERY_WAY", False):
        modes = os.environ.get("VGPU_SUITE_MODES", "local,relay,joined,cuda-backend").split(",")
        metafunc.parametrize("vgpud", modes, indirect=True, scope="module")


@pytest.fixture(scope="module")
def vgpud(request, tmp_path_factory):
    """A daemon shared by a test module: a mixed set, or the module's VGPUD_GPUS."""
    gpus = getattr(request.module, "VGPUD_GPUS", "2xh100,l4,rtx4090")
    daemon = start_vgpud(gpus, tmp_path_factory.mktemp("vgpud"), getattr(request, "param", "local"))
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


#: the head of a cuda-python client: the driver bindings, ``ok(call)`` (asserts success, gives
#: the call's outputs) and ``code(call)`` (its CUresult as an int)
CUDA_PYTHON = """
import ctypes, json, os, random
from cuda.bindings import driver as cu
def ok(result):
    err = result[0] if isinstance(result, tuple) else result
    assert int(err) == 0, err
    if not isinstance(result, tuple) or len(result) == 1:
        return None
    return result[1] if len(result) == 2 else result[1:]
def code(result):
    return int(result[0] if isinstance(result, tuple) else result)
"""


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
