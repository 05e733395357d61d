"""`vgpu install` / `vgpu uninstall` on staged trees: what goes where, idempotence, exact undo."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vgpu.launcher import library_path

MULTIARCH = f"usr/lib/{os.uname().machine}-linux-gnu"
#: making a device node needs root (CAP_MKNOD)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")


def vgpu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vgpu.cli.main", *args], capture_output=True, text=True, timeout=60)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root: its type, mode, and contents, link target or device number."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            if path.is_symlink():
                found[str(path.relative_to(root))] = ("link", os.readlink(path))
            elif path.is_dir():
                found[str(path.relative_to(root))] = ("dir", info.st_mode)
            elif stat.S_ISCHR(info.st_mode):
                found[str(path.relative_to(root))] = ("char", info.st_mode, os.major(info.st_rdev),
                                                      os.minor(info.st_rdev))
            else:
                found[str(path.relative_to(root))] = ("file", info.st_mode,
                                                      hashlib.sha256(path.read_bytes()).hexdigest())
    return found


@pytest.fixture
def debian_with_ollama(tmp_path) -> Path:
    root = tmp_path / "root"
    for folder in ("etc/systemd/system", MULTIARCH, "usr/local/bin", "usr/local/lib/ollama/cuda_v12",
                   "usr/local/lib/ollama/cuda_v13"):
        (root / folder).mkdir(parents=True)
    (root / "etc/os-release").write_text('ID=ubuntu\nID_LIKE="debian"\n')
    (root / "usr/local/bin/ollama").write_text("#!/bin/sh\n")
    (root / "etc/systemd/system/ollama.service").write_text("[Service]\nExecStart=/usr/local/bin/ollama serve\n")
    (root / "usr/local/lib/ollama/cuda_v13/libcuda.so.1").write_text("an operator's earlier attempt\n")
    return root


def test_install_places_libraries_links_and_units(debian_with_ollama):
    root = debian_with_ollama
    done = vgpu("install", "--root", str(root), "--gpus", "2xh100")
    assert done.returncode == 0, done.stderr
    libdir = root / MULTIARCH
    for library, names in (("libvgpu-cuda.so", ("libcuda.so.1", "libcuda.so")),
                           ("libvgpu-nvml.so", ("libnvidia-ml.so.1", "libnvidia-ml.so"))):
        assert (libdir / library).read_bytes() == library_path(library).read_bytes()
        assert all(os.readlink(libdir / name) == library for name in names)
    for version in ("cuda_v12", "cuda_v13"):
        folder = root / "usr/local/lib/ollama" / version
        assert os.readlink(folder / "libcuda.so.1") == f"/{MULTIARCH}/libvgpu-cuda.so"
        assert os.readlink(folder / "libnvidia-ml.so.1") == f"/{MULTIARCH}/libvgpu-nvml.so"
    unit = (root / "etc/systemd/system/vgpud.service").read_text()
    assert "-m vgpu.server.main --gpus 2xh100 --socket /run/vgpu/vgpud.sock" in unit
    dropin = (root / "etc/systemd/system/ollama.service.d/vgpu.conf").read_text()
    assert "After=vgpud.service" in dropin and "Environment=VGPU_SOCKET=/run/vgpu/vgpud.sock" in dropin
    assert (root / "etc/ld.so.cache").exists(), "ldconfig ran for the tree"
    assert "kept in /var/lib/vgpu/backup" in done.stdout
    assert (root / "var/lib/vgpu/backup/usr/local/lib/ollama/cuda_v13/libcuda.so.1").read_text() == \
        "an operator's earlier attempt\n"


def test_second_install_changes_nothing_and_uninstall_restores_exactly(debian_with_ollama):
    root = debian_with_ollama
    before = snapshot(root)
    assert vgpu("install", "--root", str(root)).returncode == 0
    installed = snapshot(root)
    again = vgpu("install", "--root", str(root))
    assert again.returncode == 0 and "nothing to change" in again.stdout
    assert snapshot(root) == installed
    undone = vgpu("uninstall", "--root", str(root))
    assert undone.returncode == 0, undone.stderr
    assert snapshot(root) == before


def test_dry_run_changes_nothing(debian_with_ollama):
    before = snapshot(debian_with_ollama)
    done = vgpu("install", "--root", str(debian_with_ollama), "--dry-run")
    assert done.returncode == 0 and "dry run, nothing changed" in done.stdout
    assert f"link /{MULTIARCH}/libcuda.so.1 -> libvgpu-cuda.so" in done.stdout
    assert snapshot(debian_with_ollama) == before


def test_rhel_family_uses_lib64(tmp_path):
    root = tmp_path / "rhel"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text('ID="rocky"\nID_LIKE="rhel centos fedora"\n')
    done = vgpu("install", "--root", str(root), "--ollama", "none")
    assert done.returncode == 0, done.stderr
    assert os.readlink(root / "usr/lib64/libcuda.so.1") == "libvgpu-cuda.so"
    assert not (root / "usr/local/lib/ollama").exists()


def fake_driver(path: Path) -> None:
    """A library that looks like NVIDIA's driver: SONAME libcuda.so.1, no vgpu identity."""
    subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(path), "-x", "c", "-"],
                   input="int cuInit(unsigned f) { return 0; }\n", text=True, check=True)


def test_refuses_to_hide_a_real_driver(debian_with_ollama):
    root = debian_with_ollama
    driver = root / MULTIARCH / "libcuda.so.550.54.15"
    fake_driver(driver)
    (root / MULTIARCH / "libcuda.so.1").symlink_to(driver.name)
    before = snapshot(root)
    refused = vgpu("install", "--root", str(root))
    assert refused.returncode != 0
    assert f"/{MULTIARCH}/libcuda.so.1 is /{MULTIARCH}/libcuda.so.550.54.15, a driver library that is not vgpu's" \
        in refused.stderr and "--force" in refused.stderr
    assert snapshot(root) == before
    forced = vgpu("install", "--root", str(root), "--force")
    assert forced.returncode == 0, forced.stderr
    assert os.readlink(root / MULTIARCH / "libcuda.so.1") == "libvgpu-cuda.so"
    assert vgpu("uninstall", "--root", str(root)).returncode == 0
    assert snapshot(root) == before and os.readlink(root / MULTIARCH / "libcuda.so.1") == driver.name


def test_uninstall_without_an_install_says_so(tmp_path):
    done = vgpu("uninstall", "--root", str(tmp_path))
    assert done.returncode != 0 and "no vgpu installation is recorded" in done.stderr


def node(path: Path) -> tuple[int, int, int]:
    """A character device's major, minor and permissions (an assertion error for anything else)."""
    info = path.lstat()
    assert stat.S_ISCHR(info.st_mode), f"{path} is not a character device"
    return os.major(info.st_rdev), os.minor(info.st_rdev), stat.S_IMODE(info.st_mode)


@needs_root
def test_device_nodes_for_every_gpu_and_at_boot(debian_with_ollama):
    root = debian_with_ollama
    dry = vgpu("install", "--root", str(root), "--gpus", "2xh100,l4", "--dry-run")
    assert "create the character device /dev/nvidiactl (195:255, mode 0666)" in dry.stdout
    assert "create the character device /dev/nvidia2 (195:2, mode 0666)" in dry.stdout
    assert not (root / "dev").exists()
    done = vgpu("install", "--root", str(root), "--gpus", "2xh100,l4")
    assert done.returncode == 0, done.stderr
    assert node(root / "dev/nvidiactl") == (195, 255, 0o666)
    assert [node(root / f"dev/nvidia{index}") for index in range(3)] == [(195, index, 0o666) for index in range(3)]
    assert not (root / "dev/nvidia3").exists()
    uvm_major, uvm_minor, uvm_mode = node(root / "dev/nvidia-uvm")
    assert 120 <= uvm_major <= 127 and (uvm_minor, uvm_mode) == (0, 0o666)
    registered = [line.split() for line in Path("/proc/devices").read_text().split("Block devices:")[0].splitlines()]
    assert [str(uvm_major)] not in [fields[:1] for fields in registered if len(fields) == 2], \
        "a major no loaded driver holds"
    tmpfiles = (root / "etc/tmpfiles.d/vgpu.conf").read_text().splitlines()
    assert "c /dev/nvidiactl 0666 root root - 195:255" in tmpfiles
    assert f"c /dev/nvidia-uvm 0666 root root - {uvm_major}:0" in tmpfiles
    assert "c /dev/nvidia2 0666 root root - 195:2" in tmpfiles and len(tmpfiles) == 2 + 5
    manifest = (root / "var/lib/vgpu/install.json").read_text()
    assert '"path": "/dev/nvidia1"' in manifest and '"number": "195:1"' in manifest


@needs_root
def test_nodes_already_there_are_never_replaced_nor_removed(debian_with_ollama):
    """A node NVIDIA's driver made stays: the same number (nvidiactl) or another (nvidia-uvm's
    dynamic major); uninstall removes only what the install made."""
    root = debian_with_ollama
    (root / "dev").mkdir()
    os.mknod(root / "dev/nvidiactl", stat.S_IFCHR | 0o666, os.makedev(195, 255))
    os.mknod(root / "dev/nvidia-uvm", stat.S_IFCHR | 0o666, os.makedev(511, 0))
    before = snapshot(root)
    done = vgpu("install", "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert "keep /dev/nvidia-uvm, which is there already" in done.stdout
    assert "/dev/nvidiactl" not in done.stdout, "already what the plan wants"
    assert node(root / "dev/nvidia-uvm")[:2] == (511, 0) and node(root / "dev/nvidia0") == (195, 0, 0o666)
    assert '"/dev/nvidiactl"' not in (root / "var/lib/vgpu/install.json").read_text()
    assert vgpu("install", "--root", str(root)).stdout.startswith("nothing to change")
    undone = vgpu("uninstall", "--root", str(root))
    assert undone.returncode == 0, undone.stderr
    assert snapshot(root) == before


def test_without_root_the_nodes_are_left_to_boot(debian_with_ollama):
    """Where mknod is refused (here: a user namespace, whose uid has no capability outside it)
    the rest installs and the tmpfiles.d entry stays to make the nodes at boot."""
    root = debian_with_ollama
    if os.geteuid() == 0:
        if not shutil.which("unshare") or subprocess.run(["unshare", "-U", "true"]).returncode != 0:
            pytest.skip("no user namespaces to drop the capability to make nodes")
        prefix = ["unshare", "-U"]
    else:
        prefix = []
    done = subprocess.run([*prefix, sys.executable, "-m", "vgpu.cli.main", "install", "--root", str(root)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "could not create /dev/nvidiactl (Operation not permitted: making a device node needs root); at " \
           "boot systemd-tmpfiles makes it from /etc/tmpfiles.d/vgpu.conf" in done.stdout
    assert not os.path.lexists(root / "dev/nvidiactl") and (root / "etc/tmpfiles.d/vgpu.conf").exists()
    assert "/dev/nvidiactl" not in (root / "var/lib/vgpu/install.json").read_text()
