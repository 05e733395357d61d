"""Where the dynamic loader would find a library for a given consumer, and why, without loading it.

A model of glibc's search (ld.so(8)): a name with a slash is used as it is; otherwise
DT_RPATH of the consumer (when it has no DT_RUNPATH), ``LD_LIBRARY_PATH``, DT_RUNPATH,
``ld.so.cache``, then the system folders; in each folder the glibc-hwcaps subfolders
first.  A candidate that is missing, a dangling link, not ELF, or built for another
class or machine is skipped, as the loader skips it.  ``vgpu doctor`` asks it where
``libcuda.so.1`` would resolve; tests/test_loader_model.py checks it against the real
loader as `vgpu trace` records it.

>>> resolve("libcuda.so.1", Path("/usr/lib/ollama/cuda_v13/libggml-cuda.so"),
...         ["/usr/lib/ollama", "/usr/lib/ollama/cuda_v13"]).path   # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
import re
import struct
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

CACHE_MAGIC = b"glibc-ld.so.cache1.1"
_HEADER_SIZE = 48  # magic, nlibs, string table length, flags, extension offset, unused
_ENTRY = struct.Struct("<iIIIQ")  # flags, key, value, osversion, hwcap
#: ld.so.cache flags for this machine's libraries (FLAG_ELF_LIBC6 with FLAG_X8664_LIB64 or FLAG_AARCH64_LIB64)
_CACHE_FLAGS = {"x86_64": 0x0303, "aarch64": 0x0A03}
_ELF_MACHINE = {"x86_64": "EM_X86_64", "aarch64": "EM_AARCH64"}


@dataclass(frozen=True)
class Candidate:
    path: str
    via: str        # "RPATH", "LD_LIBRARY_PATH", "RUNPATH", "ld.so.cache", "system folder", "path"
    problem: str    # "" when usable


@dataclass
class Resolution:
    name: str
    path: str | None = None  # the file the loader would open, None when nothing fits
    tried: list[Candidate] = field(default_factory=list)
    #: a candidate that ends the search with an error instead of being skipped (a file
    #: that is not ELF: the loader reports "invalid ELF header" or "file too short")
    stopped_at: str | None = None


@dataclass(frozen=True)
class ElfFacts:
    elf_class: int
    machine: str
    soname: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]


def elf_facts(path: Path) -> ElfFacts | None:
    """Class, machine, SONAME, DT_NEEDED and search paths of an ELF file; None if it is not one."""
    try:
        with open(path, "rb") as handle:
            elf = ELFFile(handle)
            tags: dict[str, list[str]] = {"DT_SONAME": [], "DT_NEEDED": [], "DT_RPATH": [], "DT_RUNPATH": []}
            for section in elf.iter_sections():
                if isinstance(section, DynamicSection):
                    for tag in section.iter_tags():
                        if tag.entry.d_tag == "DT_SONAME":
                            tags["DT_SONAME"].append(tag.soname)
                        elif tag.entry.d_tag == "DT_NEEDED":
                            tags["DT_NEEDED"].append(tag.needed)
                        elif tag.entry.d_tag == "DT_RPATH":
                            tags["DT_RPATH"] += tag.rpath.split(":")
                        elif tag.entry.d_tag == "DT_RUNPATH":
                            tags["DT_RUNPATH"] += tag.runpath.split(":")
            return ElfFacts(elf.elfclass, elf["e_machine"], next(iter(tags["DT_SONAME"]), None),
                            tuple(tags["DT_NEEDED"]), tuple(tags["DT_RPATH"]), tuple(tags["DT_RUNPATH"]))
    except (OSError, ELFError):
        return None


def read_cache(path: Path, machine: str | None = None) -> dict[str, str]:
    """This machine's entries of an ld.so.cache (glibc 2.32+ format): name -> path, first wins."""
    data = path.read_bytes()
    if not data.startswith(CACHE_MAGIC):
        raise ValueError(f"{path} is not an ld.so.cache in the glibc-ld.so.cache1.1 format")
    wanted = _CACHE_FLAGS.get(machine or platform.machine())
    count = struct.unpack_from("<I", data, len(CACHE_MAGIC))[0]
    entries: dict[str, str] = {}

    def text(offset: int) -> str:
        return data[offset:data.index(b"\0", offset)].decode(errors="replace")

    for index in range(count):
        flags, key, value, _, _ = _ENTRY.unpack_from(data, _HEADER_SIZE + index * _ENTRY.size)
        if wanted is None or flags == wanted:
            entries.setdefault(text(key), text(value))
    return entries


@lru_cache(maxsize=1)
def system_search() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The loader's own system folders and supported glibc-hwcaps subfolders, from `ld.so --help`."""
    loader = next((p for p in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1") if Path(p).exists()), None)
    if loader is None:
        return ("/lib", "/usr/lib"), ()
    text = subprocess.run([loader, "--help"], capture_output=True, text=True).stdout
    folders = tuple(re.findall(r"^\s+(/\S+) \(system search path\)", text, re.MULTILINE))
    hwcaps = tuple(re.findall(r"^\s+(\S+) \(supported, searched\)", text, re.MULTILINE))
    return folders or ("/lib", "/usr/lib"), hwcaps


def link_chain(root: Path, path: str, depth: int = 40) -> tuple[list[str], Path | None]:
    """A path of the system at ``root`` and the targets its links name, in order, with the
    file they end at inside that tree (an absolute target is the tree's); None for a
    missing file or a dangling or looping link."""
    chain = [path]
    current = root / path.lstrip("/")
    for _ in range(depth):
        if not current.is_symlink():
            return chain, current if current.exists() else None
        target = os.readlink(current)
        chain.append(target)
        current = root / target.lstrip("/") if target.startswith("/") else current.parent / target
    return chain, None


def follow(root: Path, path: str) -> Path | None:
    """The file a path of the system at ``root`` ends at (see link_chain)."""
    return link_chain(root, path)[1]


def host_mismatch(facts: ElfFacts, machine: str | None = None) -> str:
    """Why the loader of this host would skip a library: "wrong ELF class", "wrong machine", or ""."""
    if facts.elf_class != 64:
        return "wrong ELF class"
    if facts.machine != _ELF_MACHINE.get(machine or platform.machine(), facts.machine):
        return "wrong machine"
    return ""


def _problem(root: Path, path: str, machine: str) -> str:
    disk = root / path.lstrip("/")
    real = follow(root, path)
    if real is None:
        return "dangling symlink" if disk.is_symlink() else "missing"
    facts = elf_facts(real)
    return "not an ELF file" if facts is None else host_mismatch(facts, machine)


def _expand(entries: tuple[str, ...], origin: Path) -> list[str]:
    return [re.sub(r"\$(\{ORIGIN\}|ORIGIN)", str(origin), entry) for entry in entries if entry]


def resolve(name: str, consumer: Path | None, ld_library_path: list[str], root: Path = Path("/"),
            machine: str | None = None) -> Resolution:
    """Where the loader would find ``name`` for ``consumer`` (paths are the system's; ``root``
    is where its tree is, and its ld.so.cache is used)."""
    machine = machine or platform.machine()
    resolution = Resolution(name)

    def attempt(path: str, via: str) -> bool:
        """Whether the search ends here: found, or stopped by a file that is not ELF."""
        problem = _problem(root, path, machine)
        resolution.tried.append(Candidate(path, via, problem))
        if not problem:
            resolution.path = path
        elif problem == "not an ELF file":
            resolution.stopped_at = path
        return not problem or resolution.stopped_at is not None

    if "/" in name:
        attempt(name, "path")
        return resolution
    facts = elf_facts(root / str(consumer).lstrip("/")) if consumer else None
    origin = consumer.parent if consumer else Path("/")
    folders, hwcaps = system_search()
    groups = []
    if facts and not facts.runpath:
        groups.append(("RPATH", _expand(facts.rpath, origin)))
    groups.append(("LD_LIBRARY_PATH", [entry for entry in ld_library_path if entry]))
    if facts:
        groups.append(("RUNPATH", _expand(facts.runpath, origin)))
    for via, entries in groups:
        for folder in entries:
            if not (root / folder.lstrip("/")).is_dir():
                continue
            subfolders = [f"{folder}/glibc-hwcaps/{level}" for level in hwcaps
                          if (root / folder.lstrip("/") / "glibc-hwcaps" / level).is_dir()]
            for candidate in [*subfolders, folder]:
                if attempt(os.path.join(candidate, name), via):
                    return resolution
    cache = root / "etc/ld.so.cache"
    if cache.exists():
        cached = read_cache(cache, machine).get(name)
        if cached and attempt(cached, "ld.so.cache"):
            return resolution
    for folder in folders:
        if attempt(os.path.join(folder, name), "system folder"):
            return resolution
    return resolution
