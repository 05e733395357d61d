"""`vgpu run` gives its command NVIDIA's device nodes in a /dev of its own, as root and not,
with the rest of /dev working as before; without namespaces it runs the command anyway."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from vgpu.launcher import devices

BIN = Path(sys.executable).parent
SRC = Path(devices.__file__).parent

#: what the command reports: the nodes, and the rest of /dev at work (null, shm, pts)
PROBE = r"""
import os, stat, sys
from multiprocessing import shared_memory
print(os.path.exists("/dev/nvidiactl"), os.path.exists("/dev/nvidia1"), os.path.exists("/dev/null"))
print(*(f"{name}={os.major(st.st_rdev)}:{os.minor(st.st_rdev)}:{stat.S_ISCHR(st.st_mode)}:{oct(st.st_mode & 0o777)}"
        for name in ("nvidiactl", "nvidia0", "nvidia1", "nvidia-uvm") for st in [os.stat(f"/dev/{name}")]))
print("nvidia2", os.path.exists("/dev/nvidia2"))
with open("/dev/null", "w") as sink:
    sink.write("discarded")
with open("/dev/null") as source:
    assert source.read() == ""
memory = shared_memory.SharedMemory(create=True, size=4096)
memory.buf[:5] = b"hello"
again = shared_memory.SharedMemory(memory.name)
assert bytes(again.buf[:5]) == b"hello"
again.close(); memory.close(); memory.unlink()
primary, secondary = os.openpty()
os.write(primary, b"typed\n")
print("pty", os.ttyname(secondary), os.read(secondary, 64))
try:
    open("/dev/nvidiactl")
except OSError as error:
    print("open", error.errno)
capabilities = [line.split()[1] for line in open("/proc/self/status") if line.startswith("CapEff")][0]
print("caps", int(capabilities, 16) != 0, "uid", os.getuid(), os.getgid())
"""


def vgpu(*args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, str(BIN / "vgpu"), *args], capture_output=True, text=True, timeout=90,
                          env=env or os.environ.copy())


@pytest.fixture
def host_without_nodes() -> None:
    if os.path.lexists("/dev/nvidiactl") or os.path.lexists("/dev/nvidia0"):
        pytest.skip("this host has NVIDIA's device nodes: vgpu run keeps its /dev as it is")


def pty_folder(uid: int) -> str:
    """Where the command's new terminals are named: the host's /dev/ptmx, reached through the
    host's /dev kept inside the private one, names them there unless the caller may open
    /dev/pts/ptmx (root, or a devpts mounted with ptmxmode=666)."""
    usable = uid == 0 or os.stat("/dev/pts/ptmx").st_mode & 0o006 == 0o006
    return "/dev/pts/" if usable else f"/dev/{devices.HOST_VIEW}/pts/"


def host_mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def test_run_gives_the_command_the_nodes_and_a_working_dev(host_without_nodes):
    mounts, entries = host_mounts(), sorted(os.listdir("/dev"))
    done = vgpu("run", "--gpus", "2xh100", "--", sys.executable, "-c", PROBE)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "True True True"
    assert lines[2] == "nvidia2 False", "one node per GPU"
    uid = os.getuid()
    assert lines[3].startswith(f"pty {pty_folder(uid)}") and lines[3].endswith("b'typed\\n'")
    if uid == 0:
        uvm = devices.uvm_major()
        assert lines[1] == f"nvidiactl=195:255:True:0o666 nvidia0=195:0:True:0o666 nvidia1=195:1:True:0o666 " \
                           f"nvidia-uvm={uvm}:0:True:0o666"
        assert lines[4] == "open 6", "ENXIO, as NVIDIA's node without its driver"
    else:
        assert lines[1] == "nvidiactl=0:0:True:0o666 nvidia0=0:0:True:0o666 nvidia1=0:0:True:0o666 " \
                           "nvidia-uvm=0:0:True:0o666"
        assert lines[4] == "open 13"
    assert lines[5] == f"caps {uid == 0} uid {uid} {os.getgid()}"
    assert done.stderr == ""
    assert host_mounts() == mounts and sorted(os.listdir("/dev")) == entries, "the host's /dev is untouched"


def test_exit_status_and_vgpu_libraries_inside(host_without_nodes):
    done = vgpu("run", "--gpus", "2xh100", "--", sys.executable, "-c",
                "import ctypes, os, sys; cuda = ctypes.CDLL('libcuda.so.1'); n = ctypes.c_int(); "
                "assert cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(n)) == 0; "
                "print(n.value, os.path.exists('/dev/nvidia1')); sys.exit(5)")
    assert done.returncode == 5 and done.stdout.split() == ["2", "True"], done.stderr


def test_turned_off_by_option_or_environment(host_without_nodes):
    probe = ("--", sys.executable, "-c", "import os; print(os.path.exists('/dev/nvidiactl'))")
    assert vgpu("run", "--no-device-nodes", *probe).stdout.strip() == "False"
    off = vgpu("run", *probe, env=dict(os.environ, VGPU_DEVICE_NODES="0"))
    assert off.stdout.strip() == "False" and off.stderr == ""


def user_namespaces() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-U", "true"]).returncode == 0


def test_without_namespaces_the_command_runs_and_says_so_once(host_without_nodes):
    """Inside a user namespace that does not map the caller, the kernel refuses another: the
    fallback a machine without namespaces takes."""
    if not user_namespaces():
        pytest.skip("no user namespaces here to refuse nested ones")
    probe = ("--", sys.executable, "-c", "import os, sys; print(os.path.exists('/dev/nvidiactl')); sys.exit(3)")
    done = vgpu("run", *probe, prefix=("unshare", "-U"))
    assert done.returncode == 3 and done.stdout.strip() == "False"
    assert done.stderr.count("vgpu: no private /dev with NVIDIA's device nodes (unshare: Operation not "
                             "permitted); the command runs without them") == 1, done.stderr
    quiet = vgpu("run", *probe, prefix=("unshare", "-U"), env=dict(os.environ, VGPU_QUIET="1"))
    assert quiet.returncode == 3 and quiet.stderr == ""


UNPRIVILEGED = r"""
import importlib.util, os, subprocess, sys, tempfile
from pathlib import Path
spec = importlib.util.spec_from_file_location("devices", sys.argv[1])
devices = sys.modules["devices"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(devices)
setup = devices.private_dev(2, Path(tempfile.mkdtemp()) / "dev", dict(os.environ))
sys.exit(subprocess.run([sys.executable, "-c", sys.argv[2]], preexec_fn=setup).returncode)
"""


@pytest.fixture
def readable_copy() -> Path:
    """devices.py where any user may read it."""
    folder = Path(tempfile.mkdtemp(prefix="vgpu-devices-"))
    folder.chmod(0o755)
    shutil.copy(SRC / "devices.py", folder / "devices.py")
    (folder / "devices.py").chmod(0o644)
    yield folder / "devices.py"
    shutil.rmtree(folder)


def test_as_an_unprivileged_user(host_without_nodes, readable_copy):
    """The user-namespace way, as uid 65534 (what `vgpu run` does for a user who is not root),
    with an interpreter that user may run."""
    python = Path("/usr/bin/python3")
    if os.geteuid() != 0 or not shutil.which("setpriv") or not python.exists():
        pytest.skip("needs root to become another user, setpriv and /usr/bin/python3")
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(python), "-c",
                           UNPRIVILEGED, str(readable_copy), PROBE], capture_output=True, text=True,
                          timeout=60, cwd="/", env={"PATH": os.environ["PATH"], "TMPDIR": "/tmp"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "True True True"
    assert lines[1] == "nvidiactl=0:0:True:0o666 nvidia0=0:0:True:0o666 nvidia1=0:0:True:0o666 " \
                       "nvidia-uvm=0:0:True:0o666"
    assert lines[3].startswith(f"pty {pty_folder(65534)}") and lines[3].endswith("b'typed\\n'")
    assert lines[4] == "open 13" and lines[5] == "caps False uid 65534 65534", "capabilities gone at exec"
