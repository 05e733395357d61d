"""`vgpu trace`: the Ollama discovery pattern and the failures a trace must explain."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CUDA_LIB, build_ollama_pattern
from tests.test_loader_model import dangling, wrong_machine
from vgpu.launcher import library_path

CLIENTS = Path(__file__).parent / "clients" / "ollama_pattern"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
GO = shutil.which("go")


def vgpu_trace(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vgpu.cli.main", "trace", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def traced_json(tmp_path: Path, command: list[str], env: dict[str, str]) -> dict:
    done = vgpu_trace("-o", str(tmp_path / "records"), "--json", "--", *command, env=env)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def ollama_like(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A server, a runner, and a bundle folder with the backend library, cudart 13 and a
    libcuda.so.1 symlink to the vgpu library, laid out as an operator did for Ollama."""
    if not (CUDA_LIB / "libcudart.so.13").exists():
        pytest.skip("cudart 13 is not on this machine")
    return build_ollama_pattern(tmp_path_factory.mktemp("ollama"))


def test_discovery_in_short_lived_children(vgpud, ollama_like, tmp_path):
    server, runner, bundle = ollama_like
    env = dict(vgpud.env)
    env.pop("LD_LIBRARY_PATH", None)  # only the runners' own bundle folder leads to libcuda.so.1
    report = traced_json(tmp_path, [str(server), str(bundle), str(runner), "3"], env)
    root = next(p for p in report["processes"] if p["pid"] in report["roots"])
    runners = [p for p in report["processes"] if p["exe"] == str(runner)]
    assert root["exe"] == str(server) and len(runners) == 3
    assert not root["gpu_loads"], "the server itself never loads a GPU library"
    for child in runners:
        assert child["ppid"] == root["pid"] and child["lifetime_ms"] < 100
        assert child["ld_library_path"].split(":")[0] == str(bundle), "the server's rewrite is recorded"
        loads = {Path(load["path"]).name: load for load in child["gpu_loads"]}
        assert loads["libcuda.so.1"]["path"] == str(bundle / "libcuda.so.1")
        assert loads["libcuda.so.1"]["file"] == str(library_path("libvgpu-cuda.so").resolve())
        assert loads["libcuda.so.1"]["kind"] == "vgpu"
        assert loads["libcudart.so.13"]["path"] == str(bundle / "libcudart.so.13")
        probe = next(load for load in child["loads"] if load["name"] == "libggml-probe.so")
        assert probe["path"] == str(bundle / "libggml-probe.so")
        assert loads["libcuda.so.1"]["t"] >= probe["t"], "loaded as the backend library's dependency"
        calls = {call["call"]: call for call in child["calls"]}
        assert calls["cuInit"]["result_name"] == "CUDA_SUCCESS"
        assert calls["cuDeviceGetCount"]["count"] == 4  # the vgpud fixture's 2xh100,l4,rtx4090
        assert calls["cuInit"]["args"] == [0] and calls["cuDeviceGetCount"]["args"] == [4]
        device_gets = [call["args"] for call in child["calls"] if call["call"] == "cuDeviceGet"]
        assert device_gets and all(args[0] == args[1] for args in device_gets), "ordinal in, device out"
    diagnosis = "\n".join(report["diagnosis"])
    assert "libcuda.so.1 was loaded by 3 processes" in diagnosis
    assert f"never in the process you started (pid {root['pid']}): GPU discovery happened in the children" \
        in diagnosis
    assert "initialised, 4 devices reported" in diagnosis
    assert "first failure" not in diagnosis


@pytest.mark.skipif(GO is None, reason="no Go toolchain (.ci/run installs Debian's golang-go)")
def test_discovery_from_a_static_go_server(vgpud, ollama_like, tmp_path):
    """A pure Go server is statically linked: the loader never audits it, the report still
    places it, from the outside, at the root of its traced runners."""
    _, runner, bundle = ollama_like
    server = tmp_path / "server-go"
    subprocess.run([GO, "build", "-o", str(server), str(CLIENTS / "server.go")], check=True,
                   env=dict(os.environ, CGO_ENABLED="0", GOCACHE=str(tmp_path / "gocache"), HOME=str(tmp_path)))
    env = dict(vgpud.env)
    env.pop("LD_LIBRARY_PATH", None)
    report = traced_json(tmp_path, [str(server), str(bundle), str(runner), "2"], env)
    root = next(p for p in report["processes"] if p["pid"] in report["roots"])
    assert root["traced"] is False and root["exe"] == str(server) and len(root["children"]) == 2
    runners = [p for p in report["processes"] if p["ppid"] == root["pid"]]
    assert all(p["exe"] == str(runner) and p["ld_library_path"].startswith(str(bundle)) for p in runners)
    assert all(c["count"] == 4 for p in runners for c in p["calls"] if c["call"] == "cuDeviceGetCount")
    diagnosis = "\n".join(report["diagnosis"])
    assert f"pid {root['pid']} (server-go) was not traced: a statically linked program" in diagnosis
    assert "GPU discovery happened in the children" in diagnosis


def test_terminal_and_html_reports(vgpud, ollama_like, tmp_path):
    server, runner, bundle = ollama_like
    page = tmp_path / "trace.html"
    done = vgpu_trace("--html", str(page), "--", str(server), str(bundle), str(runner), "2", env=dict(vgpud.env))
    assert done.returncode == 0, done.stderr
    assert "GPU discovery happened in the children" in done.stdout.replace("\n", " ")
    assert done.stdout.count("█") >= 3, "a timeline bar per process"
    text = page.read_text()
    assert text.count("<rect") == 3 and "libvgpu-cuda.so" in text and "<script" not in text


def colour_bands(image, colour: tuple[int, int, int]) -> int:
    """How many separate horizontal bands of the page hold pixels of exactly this colour."""
    rgb = image.convert("RGB")
    width, height = rgb.size
    pixels = rgb.load()
    rows = [any(pixels[x, y] == colour for x in range(width)) for y in range(height)]
    return sum(1 for y, hit in enumerate(rows) if hit and (y == 0 or not rows[y - 1]))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_html_page_in_headless_chromium(vgpud, ollama_like, tmp_path):
    from PIL import Image

    server, runner, bundle = ollama_like
    page, shot = tmp_path / "trace.html", tmp_path / "trace.png"
    done = vgpu_trace("--html", str(page), "--", str(server), str(bundle), str(runner), "2", env=dict(vgpud.env))
    assert done.returncode == 0, done.stderr
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1100,900", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = Image.open(shot)
    assert colour_bands(image, (0x1A, 0x7F, 0x37)) == 2, "a green bar for each runner that loaded libcuda.so.1"
    assert colour_bands(image, (0x8C, 0x95, 0x9F)) == 1, "a grey bar for the server, which loaded none"


def test_undefined_symbol(tmp_path):
    source = tmp_path / "needs.c"
    source.write_text("int vgpu_test_missing(void);\nint use(void) { return vgpu_test_missing(); }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp_path / "libcublas.so.99"), str(source)], check=True)
    code = f"import ctypes\ntry: ctypes.CDLL({str(tmp_path / 'libcublas.so.99')!r})\nexcept OSError: pass"
    report = traced_json(tmp_path, [sys.executable, "-c", code], dict(os.environ))
    assert any("undefined symbol: vgpu_test_missing" in f["text"] for f in report["failures"])


def _find_libcuda(tmp_path: Path, folder: Path, env: dict[str, str]) -> dict:
    env = dict(env, LD_LIBRARY_PATH=str(folder))
    code = "import ctypes\ntry: ctypes.CDLL('libcuda.so.1')\nexcept OSError: pass"
    return traced_json(tmp_path, [sys.executable, "-c", code], env)


def test_wrong_architecture_library(tmp_path):
    folder = wrong_machine(tmp_path / "arm64")
    report = _find_libcuda(tmp_path, folder, dict(os.environ))
    texts = [f["text"] for f in report["failures"]]
    assert any(f"{folder}/libcuda.so.1 (found through LD_LIBRARY_PATH): wrong machine; the loader skipped it" in t for t in texts)


def test_dangling_symlink(tmp_path):
    folder = dangling(tmp_path / "cuda_v13", "/usr/lib64/libvgpu-cuda.so.gone")
    report = _find_libcuda(tmp_path, folder, dict(os.environ))
    assert any(": dangling symlink to /usr/lib64/libvgpu-cuda.so.gone" in f["text"] for f in report["failures"])
    search = next(s for p in report["processes"] for s in p["searches"] if s["name"] == "libcuda.so.1")
    assert {"path": str(folder / "libcuda.so.1"), "via": "LD_LIBRARY_PATH", "problem": "dangling symlink",
            "target": "/usr/lib64/libvgpu-cuda.so.gone"} in search["candidates"]
    assert search["found"] == ""


def test_shim_without_vgpud(tmp_path):
    folder = tmp_path / "lib"
    folder.mkdir()
    (folder / "libcuda.so.1").symlink_to(library_path("libvgpu-cuda.so"))
    socket = tmp_path / "nobody.sock"
    env = dict(os.environ, VGPU_SOCKET=str(socket), LD_LIBRARY_PATH=str(folder))
    code = "import ctypes\nprint(ctypes.CDLL('libcuda.so.1').cuInit(0))"
    report = traced_json(tmp_path, [sys.executable, "-c", code], env)
    diagnosis = "\n".join(report["diagnosis"])
    assert f"could not reach vgpud at {socket}" in diagnosis, diagnosis
    assert "did not initialise: cuInit returned 100 (CUDA_ERROR_NO_DEVICE)" in diagnosis


def test_a_crashing_child_leaves_its_record(vgpud, tmp_path):
    """The child dies of SIGSEGV after cuInit: everything up to the crash is in the report."""
    crash = ("import ctypes, os, signal\nctypes.CDLL('libcuda.so.1').cuInit(0)\n"
             "os.kill(os.getpid(), signal.SIGSEGV)")
    parent = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {crash!r}])"
    report = traced_json(tmp_path, [sys.executable, "-c", parent], dict(vgpud.env))
    child = next(p for p in report["processes"] if p["pid"] not in report["roots"])
    assert not child["exited"], "no exit is recorded for a crash"
    assert [c["result_name"] for c in child["calls"] if c["call"] == "cuInit"] == ["CUDA_SUCCESS"]
    assert any(Path(load["path"]).name == "libcuda.so.1" for load in child["gpu_loads"])
    assert all(p["exited"] for p in report["processes"] if p["pid"] in report["roots"])
