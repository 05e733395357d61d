"""Where the vgpu libraries go on a system, and what else must point at them.

Paths in a plan are those of the installed system (``/usr/lib64/libvgpu-cuda.so``);
``root`` is where that system's tree is (``/``, or a staged tree in the tests).
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from vgpu.device import gpuset
from vgpu.diagnose.libraries import DRIVER_SONAMES
from vgpu.launcher import LIBRARIES, LIBRARY_OF, library_path
from vgpu.launcher.devices import DeviceNode, nvidia_nodes
from vgpu.wire import protocol

#: the folders Ollama is looked for in when --ollama is auto: PREFIX/bin/ollama beside PREFIX/lib/ollama
OLLAMA_PREFIXES = ("/usr/local", "/usr")
#: the driver names Ollama's runners resolve through their cuda_v* folder
OLLAMA_LINKS = DRIVER_SONAMES
SYSTEMD_DIR = "/etc/systemd/system"
UNIT_NAME = "vgpud.service"
#: /dev is rebuilt at every boot: systemd-tmpfiles makes the device nodes again from this
TMPFILES = "/etc/tmpfiles.d/vgpu.conf"


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


def tmpfiles_text(nodes: list[DeviceNode]) -> str:
    """systemd-tmpfiles lines making each node at boot where nothing is there ("c", not "c+":
    a node of NVIDIA's driver is never replaced)."""
    lines = [f"c {node.path} {node.mode:04o} root root - {node.number}" for node in nodes]
    return "# Written by `vgpu install`: NVIDIA's device nodes for vgpud's GPUs, which programs look for\n" \
           "# before they use CUDA; made at boot where nothing is there already.\n" + "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Change:
    """One path to make what the plan wants: a copy of a file, a link, a text file or a device node."""
    path: str                 # on the installed system
    kind: str                 # "file", "link", "text", "node"
    source: str = ""          # file: the file to copy; link: the target; text: the contents; node: major:minor

    def describe(self) -> str:
        return {"file": f"copy {self.source} to {self.path}", "link": f"link {self.path} -> {self.source}",
                "text": f"write {self.path}",
                "node": f"create the character device {self.path} ({self.source}, mode 0666)"}[self.kind]


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
    try:
        nodes = nvidia_nodes(len(gpuset.parse(gpus).gpus))
    except (ValueError, KeyError) as error:
        raise ValueError(f"--gpus {gpus}: {error.args[0]}") from None
    changes.append(Change(TMPFILES, "text", tmpfiles_text(nodes)))
    changes += [Change(node.path, "node", node.number) for node in nodes]
    if any((root / d.lstrip("/") / "ollama.service").exists() for d in (SYSTEMD_DIR, "/usr/lib/systemd/system",
                                                                       "/lib/systemd/system")):
        changes.append(Change(f"{SYSTEMD_DIR}/ollama.service.d/vgpu.conf", "text", ollama_dropin_text()))
    return changes
