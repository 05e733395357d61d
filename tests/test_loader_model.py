"""The loader model of `vgpu doctor` against the real loader: the same search, the same answer."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from vgpu.diagnose.loader import read_cache, resolve
from vgpu.launcher import library_path

CLIENTS = Path(__file__).parent / "clients"


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("host") / "loader_host"
    subprocess.run(["cc", "-o", str(binary), str(CLIENTS / "loader_host.c"), "-ldl"], check=True)
    return binary


def consumer(folder: Path, *link_flags: str) -> Path:
    """A library with DT_NEEDED libcuda.so.1, as ggml-cuda has."""
    stub = folder / "stub"
    stub.mkdir(exist_ok=True)
    (stub / "libcuda.so.1").unlink(missing_ok=True)
    (stub / "libcuda.so.1").symlink_to(library_path("libvgpu-cuda.so"))
    source = folder / "consumer.c"
    source.write_text("int cuInit(unsigned);\nint probe(void) { return cuInit(0); }\n")
    path = folder / "libconsumer.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(path), str(source), f"-L{stub}", "-l:libcuda.so.1",
                    *link_flags], check=True)
    (stub / "libcuda.so.1").unlink()
    return path


def real_loader(host: Path, library: Path, ld_library_path: list[str]) -> tuple[str | None, str]:
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(ld_library_path))
    out = subprocess.run([str(host), str(library)], env=env, capture_output=True, text=True).stdout.strip()
    kind, _, detail = out.partition(" ")
    return (detail, "") if kind == "loaded" else (None, detail)


def good(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "libcuda.so.1").symlink_to(library_path("libvgpu-cuda.so"))
    return folder


def wrong_machine(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    image = bytearray(library_path("libvgpu-cuda.so").read_bytes())
    image[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64: a library built for another machine
    (folder / "libcuda.so.1").write_bytes(image)
    return folder


def dangling(folder: Path, target: str = "/nonexistent/libvgpu-cuda.so") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "libcuda.so.1").symlink_to(target)
    return folder


def not_elf(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "libcuda.so.1").write_text("an installer's leftover, not a library\n" * 4)
    return folder


def agree(host: Path, library: Path, ld_library_path: list[Path]) -> str | None:
    folders = [str(f) for f in ld_library_path]
    real_path, error = real_loader(host, library, folders)
    model = resolve("libcuda.so.1", library, folders)
    assert model.path == real_path, (model, error)
    if model.stopped_at:
        assert model.stopped_at in error and ("invalid ELF header" in error or "file too short" in error)
    return model.path


def test_skips_wrong_machine_and_dangling_links(host, tmp_path):
    library = consumer(tmp_path)
    path = agree(host, library, [wrong_machine(tmp_path / "a"), dangling(tmp_path / "b"), good(tmp_path / "c")])
    assert path == str(tmp_path / "c" / "libcuda.so.1")
    tried = resolve("libcuda.so.1", library, [str(tmp_path / d) for d in "abc"]).tried
    assert [c.problem for c in tried] == ["wrong machine", "dangling symlink", ""]


def test_a_file_that_is_not_elf_ends_the_search(host, tmp_path):
    library = consumer(tmp_path)
    assert agree(host, library, [not_elf(tmp_path / "a"), good(tmp_path / "b")]) is None


def test_ld_library_path_comes_before_runpath(host, tmp_path):
    good(tmp_path / "lib")
    library = consumer(tmp_path, "-Wl,--enable-new-dtags,-rpath,$ORIGIN/lib")
    assert agree(host, library, [good(tmp_path / "first")]) == str(tmp_path / "first" / "libcuda.so.1")
    assert agree(host, library, []) == str(tmp_path / "lib" / "libcuda.so.1"), "$ORIGIN expanded"


def test_rpath_comes_before_ld_library_path(host, tmp_path):
    good(tmp_path / "lib")
    library = consumer(tmp_path, "-Wl,--disable-new-dtags,-rpath,$ORIGIN/lib")
    assert agree(host, library, [good(tmp_path / "first")]) == str(tmp_path / "lib" / "libcuda.so.1")


def test_nothing_on_the_path_falls_back_to_the_cache_and_system_folders(host, tmp_path):
    library = consumer(tmp_path)
    agree(host, library, [dangling(tmp_path / "a")])


def test_reads_this_machines_ld_so_cache():
    cache = read_cache(Path("/etc/ld.so.cache"))
    listed = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    assert cache["libc.so.6"] in listed and f"libc.so.6 (libc6,{'x86-64' if os.uname().machine == 'x86_64' else 'AArch64'})" in listed
    assert len(cache) > 10
