"""`vgpu ps` and the library identification behind it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vgpu.diagnose.libraries import identify
from vgpu.launcher import library_path

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def foreign_libcuda(tmp_path_factory) -> Path:
    """A libcuda.so.1 that is not vgpu's (as NVIDIA's driver would be)."""
    folder = tmp_path_factory.mktemp("foreign")
    source = folder / "cuda.c"
    source.write_text("int cuInit(unsigned flags) { return flags ? 1 : 100; }\n")
    library = folder / "libcuda.so.1"
    subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(library), str(source)], check=True)
    return library


def test_identify_reads_the_file_not_its_name(tmp_path, foreign_libcuda):
    ours = identify(library_path("libvgpu-cuda.so"))
    assert (ours.kind, ours.soname) == ("vgpu", "libcuda.so.1") and ours.detail.startswith("vgpu libvgpu-cuda.so")
    assert identify(library_path("libvgpu-nvml.so")).detail.startswith("vgpu libvgpu-nvml.so")
    renamed = tmp_path / "libcuda.so.1"
    renamed.symlink_to(library_path("libvgpu-nvml.so"))
    assert identify(renamed).soname == "libnvidia-ml.so.1", "a link's name says nothing: its file does"
    assert identify(foreign_libcuda).kind == "driver"
    junk = tmp_path / "libcudart.so.12"
    junk.write_bytes(b"not an ELF file")
    assert identify(junk).kind == "unreadable"


HOLD = """
import ctypes, sys, time
ctypes.CDLL(sys.argv[1])
import pynvml
pynvml.nvmlInit()
print("ready", flush=True)
time.sleep(30)
"""


def test_ps_shows_what_each_process_has_mapped(vgpud, foreign_libcuda):
    ours = subprocess.Popen([sys.executable, "-c", HOLD, str(library_path("libvgpu-cuda.so"))], env=vgpud.env,
                            stdout=subprocess.PIPE, text=True)
    foreign = subprocess.Popen([sys.executable, "-c", "import ctypes, sys, time\nctypes.CDLL(sys.argv[1])\n"
                                "print('ready', flush=True)\ntime.sleep(30)", str(foreign_libcuda)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert ours.stdout.readline().strip() == foreign.stdout.readline().strip() == "ready"
        env = {**os.environ, "VGPU_SOCKET": str(vgpud.socket)}
        listed = json.loads(subprocess.run([str(BIN / "vgpu"), "ps", "--json"], env=env, capture_output=True,
                                           text=True, timeout=60).stdout)
        by_pid = {entry["pid"]: entry for entry in listed}
        assert {lib["kind"] for lib in by_pid[ours.pid]["libraries"]} == {"vgpu"}
        assert {lib["soname"] for lib in by_pid[ours.pid]["libraries"]} == {"libcuda.so.1", "libnvidia-ml.so.1"}
        assert by_pid[ours.pid]["session"]["pid"] == ours.pid, "the process's vgpud session"
        assert [lib["kind"] for lib in by_pid[foreign.pid]["libraries"]] == ["driver"]
        assert by_pid[foreign.pid]["session"] is None
    finally:
        for process in (ours, foreign):
            process.kill()
            process.wait()


def test_watch_catches_short_lived_children(vgpud):
    env = {**os.environ, "VGPU_SOCKET": str(vgpud.socket)}
    watcher = subprocess.Popen([str(BIN / "vgpu"), "ps", "--watch", "--json", "--seconds", "4", "--interval", "0.02"],
                               env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)  # the watcher is up
    children = [subprocess.Popen([sys.executable, "-c", "import pynvml, time\npynvml.nvmlInit()\ntime.sleep(0.3)"],
                                 env=vgpud.env) for _ in range(3)]
    for child in children:
        child.wait(20)
    out, _ = watcher.communicate(timeout=30)
    seen = {json.loads(line)["pid"] for line in out.splitlines() if line.strip()}
    assert {child.pid for child in children} <= seen
