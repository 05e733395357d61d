"""The Ollama case end to end on a staged tree: install, `vgpu doctor` clean, one break at a
time reported with its fix, uninstall back to the original tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_install import MULTIARCH, fake_driver, snapshot

OLLAMA = "usr/local/lib/ollama"
#: what the vgpud fixture serves: the install is made for the same GPUs
FIXTURE_GPUS = "2xh100,l4,rtx4090"
NODES = ["/dev/nvidiactl", *(f"/dev/nvidia{index}" for index in range(4))]


def wheel_cudart(major: int) -> Path:
    import nvidia

    folder = "cuda_runtime" if major == 12 else f"cu{major}"
    for root in nvidia.__path__:
        found = Path(root) / folder / "lib" / f"libcudart.so.{major}"
        if found.exists():
            return found
    pytest.skip(f"cudart {major} wheel not installed")


def doctor(root: Path, socket: Path) -> tuple[int, list[dict]]:
    done = subprocess.run([sys.executable, "-m", "vgpu.cli.main", "doctor", "--root", str(root), "--json"],
                          env=dict(os.environ, VGPU_SOCKET=str(socket)), capture_output=True, text=True, timeout=120)
    return done.returncode, json.loads(done.stdout)


def problems(findings: list[dict]) -> list[dict]:
    return [finding for finding in findings if finding["kind"] == "problem"]


@pytest.fixture
def ollama_tree(tmp_path) -> tuple[Path, dict]:
    """An Ollama layout with real cudart 12 and 13 and a stand-in libggml-cuda.so that needs libcuda.so.1,
    before and after `vgpu install`."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\n")
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/ollama").write_text("#!/bin/sh\n")
    source = tmp_path / "ggml.c"
    source.write_text("int cuInit(unsigned); int cuDeviceGetCount(int *);\n"
                      "int ggml_backend_cuda_probe(int *n) { return cuInit(0) || cuDeviceGetCount(n); }\n")
    stub = tmp_path / "stub"
    stub.mkdir()
    subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(stub / "libcuda.so.1"),
                    "-x", "c", "-"], input="int cuInit(unsigned f){return 0;} int cuDeviceGetCount(int *n){return 0;}",
                   text=True, check=True)
    for major in (12, 13):
        folder = root / OLLAMA / f"cuda_v{major}"
        folder.mkdir(parents=True)
        (folder / f"libcudart.so.{major}").write_bytes(wheel_cudart(major).read_bytes())
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(folder / "libggml-cuda.so"), str(source), f"-L{stub}",
                        "-l:libcuda.so.1"], check=True)
    if os.geteuid() != 0:  # mknod needs root: stand-ins there already, which the install keeps
        (root / "dev").mkdir()
        for node in NODES:
            (root / node.lstrip("/")).touch()
    before = snapshot(root)
    done = subprocess.run([sys.executable, "-m", "vgpu.cli.main", "install", "--root", str(root), "--gpus",
                           FIXTURE_GPUS], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return root, before


def test_clean_install_then_uninstall(vgpud, ollama_tree):
    root, before = ollama_tree
    status, findings = doctor(root, vgpud.socket)
    assert status == 0 and not problems(findings), problems(findings)
    texts = [finding["text"] for finding in findings if finding["kind"] == "verified"]
    for major in (12, 13):
        assert f"/{OLLAMA}/cuda_v{major}/libggml-cuda.so loads libcuda.so.1 from /{OLLAMA}/cuda_v{major}/" \
               "libcuda.so.1 (vgpu's)" in texts
    assert "cuInit -> 0 (CUDA_SUCCESS)" in texts and "cuDeviceGetCount -> 0 (CUDA_SUCCESS): 4 devices" in texts
    assert texts.count("cudaGetDeviceCount -> 0 (cudaSuccess): 4 devices") == 2, "through cudart 12 and 13"
    if os.geteuid() == 0:
        assert all(f"{node} is vgpu's: `vgpu install` made it" in texts for node in NODES), texts
    assert all(finding["how"] for finding in findings)
    done = subprocess.run([sys.executable, "-m", "vgpu.cli.main", "uninstall", "--root", str(root)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert snapshot(root) == before


BREAKS = {
    "dangling link": (lambda root: _relink(root / OLLAMA / "cuda_v13/libcuda.so.1", f"/{MULTIARCH}/libvgpu-cuda.so.old"),
                      f"/{OLLAMA}/cuda_v13/libcuda.so.1 points to a missing file /{MULTIARCH}/libvgpu-cuda.so.old",
                      "run `vgpu install` again"),
    "a driver earlier on the path": (lambda root: fake_driver(root / OLLAMA / "libcuda.so.1"),
                                     f"/{OLLAMA}/cuda_v13/libggml-cuda.so would load libcuda.so.1 from "
                                     f"/{OLLAMA}/libcuda.so.1, driver library, not vgpu's",
                                     f"remove or rename /{OLLAMA}/libcuda.so.1"),
    "missing link in cuda_v13": (lambda root: (root / OLLAMA / "cuda_v13/libcuda.so.1").unlink(),
                                 f"/{OLLAMA}/cuda_v13/libcuda.so.1 is missing: Ollama's runners would look past "
                                 "this folder", "run `vgpu install` again"),
    "stale ld.so.cache": (lambda root: (root / MULTIARCH / "libcuda.so.1").unlink(),
                          f"ld.so.cache lists libcuda.so.1 at /{MULTIARCH}/libcuda.so.1, which no longer exists: "
                          "the cache is stale", "run `ldconfig`"),
    "a missing device node": (lambda root: (root / "dev/nvidia3").unlink(),
                              "/dev/nvidia3 is missing: programs that look for it before they use CUDA (JAX) skip "
                              "the GPUs", "run `vgpu install` (with --gpus as vgpud serves them), or use `vgpu run`"),
}


def _relink(path: Path, target: str) -> None:
    path.unlink()
    path.symlink_to(target)


@pytest.mark.parametrize("name", BREAKS)
def test_each_break_is_reported_with_its_fix(vgpud, ollama_tree, name):
    root, _ = ollama_tree
    breaking, text, fix = BREAKS[name]
    breaking(root)
    status, findings = doctor(root, vgpud.socket)
    assert status == 1
    matching = [finding for finding in problems(findings) if finding["text"] == text]
    assert matching, [finding["text"] for finding in problems(findings)]
    assert fix in matching[0]["advice"] and matching[0]["how"]


def test_no_vgpud(ollama_tree, tmp_path):
    root, _ = ollama_tree
    socket = tmp_path / "nobody.sock"
    status, findings = doctor(root, socket)
    assert status == 1
    texts = {finding["text"]: finding for finding in problems(findings)}
    daemon = next(finding for text, finding in texts.items() if text.startswith(f"vgpud does not answer at {socket}"))
    assert "vgpu up" in daemon["advice"]
    assert "cuInit -> 100 (CUDA_ERROR_NO_DEVICE)" in texts
    assert "cudaGetDeviceCount -> 100 (cudaErrorNoDevice): 0 devices" in texts, "cudart names its own code"


def test_a_symbol_the_vgpu_library_lacks(vgpud, ollama_tree, tmp_path):
    root, _ = ollama_tree
    source = tmp_path / "future.c"
    source.write_text("int cuFutureCallNobodyHas(void);\nint probe(void) { return cuFutureCallNobodyHas(); }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(root / OLLAMA / "cuda_v13/libggml-cuda.so"), str(source)],
                   check=True)
    status, findings = doctor(root, vgpud.socket)
    assert status == 1
    assert any(f["text"] == f"/{OLLAMA}/cuda_v13/libggml-cuda.so needs cuFutureCallNobodyHas, which the vgpu "
               "libraries do not export" for f in problems(findings))


def test_this_python_environments_cudart_on_the_running_system(vgpud):
    """With --root /, the cudart libraries of this interpreter's wheels are consumers, searched
    with this environment's LD_LIBRARY_PATH, and the self-test goes through each."""
    done = subprocess.run([sys.executable, "-m", "vgpu.cli.main", "doctor", "--json"], env=vgpud.env,
                          capture_output=True, text=True, timeout=120)
    findings = json.loads(done.stdout)
    cudart = str(wheel_cudart(12))
    loads = [f for f in findings if f["text"].startswith(f"{cudart} loads libcuda.so.1 from ")]
    assert loads and loads[0]["kind"] == "verified" and "of this environment" in loads[0]["how"]
    assert any(f["text"] == "cudaGetDeviceCount -> 0 (cudaSuccess): 4 devices" and cudart in f["how"]
               for f in findings)


def test_a_toolkit_cudart_on_the_system(vgpud, ollama_tree):
    root, _ = ollama_tree
    toolkit = root / "usr/local/cuda-13.0/lib64"
    toolkit.mkdir(parents=True)
    (toolkit / "libcudart.so.13").write_bytes(wheel_cudart(13).read_bytes())
    (root / "usr/local/cuda").symlink_to("cuda-13.0")
    status, findings = doctor(root, vgpud.socket)
    assert status == 0, problems(findings)
    texts = [f["text"] for f in findings]
    assert texts.count(f"/usr/local/cuda/lib64/libcudart.so.13 loads libcuda.so.1 from /{MULTIARCH}/libcuda.so.1 "
                       "(vgpu's)") + texts.count(f"/usr/local/cuda-13.0/lib64/libcudart.so.13 loads libcuda.so.1 "
                                                 f"from /{MULTIARCH}/libcuda.so.1 (vgpu's)") == 1, "once, however reached"
    assert texts.count("cudaGetDeviceCount -> 0 (cudaSuccess): 4 devices") == 3


def test_a_virtual_environment_in_a_home_folder(vgpud, ollama_tree):
    root, _ = ollama_tree
    wheel = root / "home/ada/.venv/lib/python3.12/site-packages/nvidia/cuda_runtime/lib"
    wheel.mkdir(parents=True)
    (wheel / "libcudart.so.12").write_bytes(wheel_cudart(12).read_bytes())
    status, findings = doctor(root, vgpud.socket)
    assert status == 0, problems(findings)
    path = "/home/ada/.venv/lib/python3.12/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12"
    assert f"{path} loads libcuda.so.1 from /{MULTIARCH}/libcuda.so.1 (vgpu's)" in [f["text"] for f in findings]
    assert any(f["text"] == "cudaGetDeviceCount -> 0 (cudaSuccess): 4 devices" and path in f["how"] for f in findings)


def test_device_nodes_of_a_loaded_nvidia_driver(vgpud, ollama_tree):
    root, _ = ollama_tree
    (root / "proc/driver/nvidia").mkdir(parents=True)
    status, findings = doctor(root, vgpud.socket)
    assert status == 0, problems(findings)
    verified = [f["text"] for f in findings if f["kind"] == "verified"]
    assert all(f"{node} is NVIDIA's: its driver is loaded" in verified for node in NODES), verified


def test_device_nodes_under_vgpu_run():
    """On the running system inside `vgpu run`: the nodes of the command's own /dev, for the
    GPUs of its vgpud."""
    if os.path.lexists("/dev/nvidiactl"):
        pytest.skip("this host has /dev/nvidiactl: vgpu run keeps its /dev as it is")
    done = subprocess.run([str(Path(sys.executable).parent / "vgpu"), "run", "--gpus", "2xh100", "--", sys.executable,
                           "-m", "vgpu.cli.main", "doctor", "--json"], capture_output=True, text=True, timeout=180)
    findings = json.loads(done.stdout)
    nodes = {f["text"]: f["kind"] for f in findings if f["text"].startswith("/dev/nvidia")}
    assert nodes == {f"/dev/nvidia{name} is vgpu's: `vgpu run` gave this process a /dev of its own": "verified"
                     for name in ("ctl", "0", "1")}, nodes
    plain = subprocess.run([sys.executable, "-m", "vgpu.cli.main", "doctor", "--json"], capture_output=True, text=True,
                           timeout=180, env=dict(os.environ, VGPU_SOCKET="/nonexistent/vgpud.sock"))
    missing = [f for f in json.loads(plain.stdout) if f["text"].startswith("/dev/nvidia")]
    assert [(f["kind"], f["text"].split(" is ")[0]) for f in missing] == [("problem", "/dev/nvidiactl"),
                                                                         ("problem", "/dev/nvidia0")]
    assert all("use `vgpu run`" in f["advice"] for f in missing)
