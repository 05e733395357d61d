"""NVIDIA's device nodes: their numbers, and a private /dev that has them for `vgpu run`.

Programs probe for ``/dev/nvidiactl`` or ``/dev/nvidia0`` before they try CUDA (JAX skips
its CUDA backend without either); vgpu's libraries never open them.  ``vgpu install``
creates the nodes on the host (``vgpu.install``); ``vgpu run`` gives its command a /dev of
its own that has them, in a private mount namespace, without touching the host's.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

NVIDIA_MAJOR = 195
CONTROL_MINOR = 255
#: majors the kernel's device list sets aside for local use and never hands out dynamically;
#: nvidia-uvm's major is dynamic, so its node takes the first of these the running kernel
#: has not registered (or the real module's, when it is loaded)
LOCAL_MAJORS = range(120, 128)
#: set to 0 to run `vgpu run`'s command without the private /dev
NODES_ENV = "VGPU_DEVICE_NODES"
#: set to 1 to silence the note that the private /dev could not be made
QUIET_ENV = "VGPU_QUIET"
#: where the host's whole /dev stays reachable inside the private one: the host's /dev/ptmx
#: works only through a path whose mount holds its folder (the kernel looks for "pts" beside
#: it), and an entry that cannot be bind-mounted becomes a link to its place there
HOST_VIEW = ".vgpu-host-dev"


@dataclass(frozen=True)
class DeviceNode:
    path: str
    major: int
    minor: int
    mode: int = 0o666     # as NVIDIA's driver makes them: every user may open a GPU

    @property
    def number(self) -> str:
        return f"{self.major}:{self.minor}"


def registered_majors(proc_devices: Path = Path("/proc/devices")) -> dict[str, int]:
    """The running kernel's character-device drivers and their majors."""
    try:
        text = proc_devices.read_text()
    except OSError:
        return {}
    section, found = "", {}
    for line in text.splitlines():
        if line.endswith(":"):
            section = line
        elif section.startswith("Character") and len(fields := line.split()) == 2 and fields[0].isdigit():
            found[fields[1]] = int(fields[0])
    return found


def uvm_major(proc_devices: Path = Path("/proc/devices")) -> int:
    majors = registered_majors(proc_devices)
    if "nvidia-uvm" in majors:
        return majors["nvidia-uvm"]
    taken = set(majors.values())
    return next((major for major in LOCAL_MAJORS if major not in taken), LOCAL_MAJORS[0])


def nvidia_nodes(gpu_count: int, dev: str = "/dev") -> list[DeviceNode]:
    """The nodes NVIDIA's driver makes for ``gpu_count`` GPUs: nvidiactl, nvidia-uvm, nvidiaN."""
    return [DeviceNode(f"{dev}/nvidiactl", NVIDIA_MAJOR, CONTROL_MINOR),
            DeviceNode(f"{dev}/nvidia-uvm", uvm_major(), 0),
            *(DeviceNode(f"{dev}/nvidia{index}", NVIDIA_MAJOR, index) for index in range(gpu_count))]


def make_node(path: Path, major: int, minor: int, mode: int = 0o666) -> None:
    """A character device with that number and mode (mknod needs root)."""
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
    os.chmod(path, mode)  # past the umask


def is_node(path: Path, major: int, minor: int) -> bool:
    """Whether ``path`` is a character device with that number."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(major, minor)


CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_NOSUID = 0x2
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _mount(source: str | None, target: str | Path, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = (lambda text: None if text is None else os.fsencode(text))
    _check(_libc.mount(encode(source), encode(str(target)), encode(fstype), flags, encode(data)),
           f"mount {source or fstype} on {target}")


class PrivateDev:
    """Gives the calling process a mount namespace whose /dev has the missing nodes.

    Meant for subprocess's ``preexec_fn``: it runs in the child between fork and exec, so
    the command starts inside.  As root a mount namespace is enough and the nodes are real
    character devices.  Otherwise a user namespace maps the caller's uid and gid to
    themselves (its capabilities go at exec as usual); there the kernel lets no one make a
    device number but 0:0, so the nodes are character devices 0:0 (which, like NVIDIA's
    without the driver, cannot be opened).  /dev becomes a tmpfs holding every entry of the
    host's /dev, bind-mounted (folders such as pts and shm with what is mounted below them)
    or, for links, copied.  It is built aside and moved over /dev last: until then the
    command's /dev is the host's, and when anything fails the command runs with that.
    """

    def __init__(self, nodes: list[DeviceNode], staging: Path, quiet: bool = False) -> None:
        self.nodes = nodes
        self.staging = staging
        self.quiet = quiet

    def __call__(self) -> None:
        try:
            self.enter()
        except OSError as error:
            if not self.quiet:
                os.write(2, f"vgpu: no private /dev with NVIDIA's device nodes ({error.strerror or error}); the "
                            f"command runs without them (programs that look for /dev/nvidiactl may not use CUDA; "
                            f"`vgpu install` creates them on the host; {QUIET_ENV}=1 hides this note)\n".encode())

    def enter(self) -> None:
        user_namespace = self._unshare()
        _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here reaches the host
        _mount("tmpfs", self.staging, "tmpfs", MS_NOSUID, "mode=755,size=1m")
        host = self.staging / HOST_VIEW
        host.mkdir()
        _mount("/dev", host, None, MS_BIND | MS_REC)
        for entry in os.scandir("/dev"):
            self._copy(entry, self.staging / entry.name)
        for node in self.nodes:
            path = self.staging / Path(node.path).name
            if user_namespace:
                os.mknod(path, stat.S_IFCHR | node.mode, 0)
                os.chmod(path, node.mode)
            else:
                make_node(path, node.major, node.minor, node.mode)
        _mount(str(self.staging), "/dev", None, MS_MOVE)

    def _unshare(self) -> bool:
        """Enter new namespaces; whether they include a user namespace."""
        uid, gid = os.geteuid(), os.getegid()
        if uid == 0 and _libc.unshare(CLONE_NEWNS) == 0:
            return False
        _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as handle:
                handle.write(text)
        return True

    @staticmethod
    def _copy(entry: os.DirEntry, target: Path) -> None:
        if entry.is_symlink():
            target.symlink_to(os.readlink(entry.path))
            return
        if entry.name == "ptmx":
            target.symlink_to(_ptmx())
            return
        folder = entry.is_dir(follow_symlinks=False)
        if folder:
            target.mkdir(mode=0o755)
        else:
            target.touch(mode=0o600)
        try:
            _mount(entry.path, target, None, MS_BIND | (MS_REC if folder else 0))
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOENT):
                raise
            (target.rmdir if folder else target.unlink)()
            target.symlink_to(f"{HOST_VIEW}/{entry.name}")


def _ptmx() -> str:
    """Where /dev/ptmx points: pts/ptmx as in containers (new terminals are then named
    /dev/pts/N) where the caller may open it, else the host's own /dev/ptmx."""
    try:
        usable = os.geteuid() == 0 or os.stat("/dev/pts/ptmx").st_mode & 0o006 == 0o006
    except OSError:
        usable = False
    return "pts/ptmx" if usable else f"{HOST_VIEW}/ptmx"


def missing_nodes(nodes: list[DeviceNode]) -> list[DeviceNode]:
    return [node for node in nodes if not os.path.lexists(node.path)]


def private_dev(gpu_count: int, staging: Path, environ: dict[str, str]) -> PrivateDev | None:
    """What `vgpu run` gives subprocess as ``preexec_fn``: None when every node exists
    already or ``$VGPU_DEVICE_NODES`` is 0."""
    if environ.get(NODES_ENV, "1") == "0":
        return None
    nodes = missing_nodes(nvidia_nodes(gpu_count))
    if not nodes:
        return None
    staging.mkdir(mode=0o700, exist_ok=True)
    return PrivateDev(nodes, staging, quiet=environ.get(QUIET_ENV, "") not in ("", "0"))
