"""Where the vgpu libraries go on a system, and what else must point at them.

Paths in a plan are those of the installed system (``/usr/lib64/libvgpu-cuda.so``);
``root`` is where that system's tree is (``/``, or a staged tree in the tests).
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from vgpu.diagnose.libraries import DRIVER_SONAMES
from vgpu.launcher import LIBRARIES, LIBRARY_OF, library_path
from vgpu.wire import protocol

#: the folders Ollama is looked for in when --ollama is auto: PREFIX/bin/ollama beside PREFIX/lib/ollama
OLLAMA_PREFIXES = ("/usr/local", "/usr")
#: the driver names Ollama's runners resolve through their cuda_v* folder
OLLAMA_LINKS = DRIVER_SONAMES
SYSTEMD_DIR = "/etc/systemd/system"
UNIT_NAME = "vgpud.service"


def os_release(root: Path) -> dict[str, str]:
    for name in ("etc/os-release", "usr/lib/os-release"):
        path = root / name
        if path.exists():
            pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
            return {key: value.strip().strip('"') for key, value in pairs}
    return {}


def system_libdir(root: Path, machine: str | None = None) -> str:
    """The distribution family's library folder: /usr/lib64 (RHEL-like, SUSE) or the
    Debian multiarch folder; a tree that says neither is judged by which folder it has."""
    machine = machine or platform.machine()
    release = os_release(root)
    family = " ".join([release.get("ID", ""), release.get("ID_LIKE", "")]).split()
    multiarch = f"/usr/lib/{machine}-linux-gnu"
    if any(name in family for name in ("debian", "ubuntu")):
        return multiarch
    if any(name in family for name in ("rhel", "fedora", "centos", "suse", "opensuse", "amzn")):
        return "/usr/lib64"
    return multiarch if (root / multiarch.lstrip("/")).is_dir() else "/usr/lib64"


def ollama_cuda_folders(root: Path, choice: str) -> list[str]:
    """Every lib/ollama/cuda_v* folder of the Ollama installations chosen: "auto" (the default
    prefixes), "none", or the path of an ollama executable or of its prefix."""
    if choice == "none":
        return []
    if choice == "auto":
        prefixes = [Path(prefix) for prefix in OLLAMA_PREFIXES]
    else:
        given = Path(choice)
        prefixes = [given.parent.parent if given.name == "ollama" else given]
    folders = []
    for prefix in prefixes:
        if not (root / prefix.relative_to("/") / "bin" / "ollama").exists():
            continue
        library = root / prefix.relative_to("/") / "lib" / "ollama"
        folders += ["/" + str(p.relative_to(root)) for p in sorted(library.glob("cuda_v*")) if p.is_dir()]
    return folders


def unit_text(gpus: str) -> str:
    return f"""[Unit]
Description=vgpu: simulated NVIDIA GPUs for applications on this machine
Documentation=https://pypi.org/project/vgpu/

[Service]
ExecStart={sys.executable} -m vgpu.server.main --gpus {gpus} --socket {protocol.SYSTEM_SOCKET}
RuntimeDirectory=vgpu
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""


def ollama_dropin_text() -> str:
    return f"""# Written by `vgpu install`: Ollama starts after vgpud and finds its socket.
[Unit]
After={UNIT_NAME}
Wants={UNIT_NAME}

[Service]
Environment={protocol.SOCKET_ENV}={protocol.SYSTEM_SOCKET}
"""


@dataclass(frozen=True)
class Change:
    """One path to make what the plan wants: a copy of a file, a link, or a text file."""
    path: str                 # on the installed system
    kind: str                 # "file", "link", "text"
    source: str = ""          # file: the file to copy; link: the target; text: the contents

    def describe(self) -> str:
        return {"file": f"copy {self.source} to {self.path}", "link": f"link {self.path} -> {self.source}",
                "text": f"write {self.path}"}[self.kind]


def plan(root: Path, libdir: str | None, ollama: str, gpus: str) -> list[Change]:
    """Every change an install makes, in order."""
    libdir = libdir or system_libdir(root)
    changes = []
    for library, names in LIBRARIES.items():
        installed = f"{libdir}/{library}"
        changes.append(Change(installed, "file", str(library_path(library))))
        changes += [Change(f"{libdir}/{name}", "link", library) for name in names]
    for folder in ollama_cuda_folders(root, ollama):
        changes += [Change(f"{folder}/{name}", "link", f"{libdir}/{LIBRARY_OF[name]}") for name in OLLAMA_LINKS]
    changes.append(Change(f"{SYSTEMD_DIR}/{UNIT_NAME}", "text", unit_text(gpus)))
    if any((root / d.lstrip("/") / "ollama.service").exists() for d in (SYSTEMD_DIR, "/usr/lib/systemd/system",
                                                                       "/lib/systemd/system")):
        changes.append(Change(f"{SYSTEMD_DIR}/ollama.service.d/vgpu.conf", "text", ollama_dropin_text()))
    return changes
