"""Starting and stopping vgpud, and the environment that makes programs find the vgpu libraries.

``vgpu run`` starts a private vgpud for one command; ``vgpu up`` / ``down`` manage a
long-lived one at the default socket.  Programs find the libraries through a folder
of ``libnvidia-ml.so.1`` and ``libcuda.so.1`` links put first on ``LD_LIBRARY_PATH``; nothing is installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vgpu.launcher import devices
from vgpu.wire import protocol
from vgpu.wire.client import Client, DaemonUnavailable

NATIVE_DIR = Path(__file__).resolve().parent.parent / "_native"
#: library file in the package -> the names applications dlopen
LIBRARIES = {"libvgpu-nvml.so": ("libnvidia-ml.so.1", "libnvidia-ml.so"),
             "libvgpu-cuda.so": ("libcuda.so.1", "libcuda.so")}
#: each of those names -> the library file in the package
LIBRARY_OF = {name: library for library, names in LIBRARIES.items() for name in names}


class LaunchError(RuntimeError):
    pass


def runtime_dir() -> Path:
    path = Path(f"/tmp/vgpu-{os.getuid()}")
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def library_path(name: str = "libvgpu-nvml.so") -> Path:
    path = NATIVE_DIR / name
    if not path.exists():
        raise LaunchError(f"{path} is missing; reinstall vgpu (`pip install .`) so the native libraries are built")
    return path


def link_dir(folder: Path | None = None) -> Path:
    """A folder of links with the driver libraries' names, pointing at the vgpu libraries.

    Each installation gets its own folder, so two checkouts or virtual environments never
    point each other's programs at the wrong library."""
    install = hashlib.sha256(str(NATIVE_DIR).encode()).hexdigest()[:12]
    folder = folder or runtime_dir() / f"lib-{install}"
    folder.mkdir(parents=True, exist_ok=True)
    for library, names in LIBRARIES.items():
        target = library_path(library)
        for name in names:
            link = folder / name
            if link.is_symlink() and os.readlink(link) == str(target):
                continue
            tmp = folder / f".{name}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            tmp.replace(link)
    return folder


def client_environment(socket_path: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    libs = str(link_dir())
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libs, env.get("LD_LIBRARY_PATH", "")]))
    env[protocol.SOCKET_ENV] = str(socket_path)
    return env


def start_daemon(gpus: str, socket_path: Path, log_path: Path, detach: bool, options: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start vgpud (with more command-line ``options``) and wait until it answers; raise
    LaunchError with its log otherwise."""
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "vgpu.server.main", "--gpus", gpus, "--socket", str(socket_path), *options],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=detach, close_fds=True, env=env,
    )
    log.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LaunchError(f"vgpud exited with status {process.returncode}:\n{log_path.read_text().strip()}")
        try:
            with Client(socket_path, timeout=1):
                return process
        except (DaemonUnavailable, OSError):
            time.sleep(0.05)
    process.kill()
    raise LaunchError(f"vgpud did not answer at {socket_path} within 15 s; see {log_path}")


def run(gpus: str, command: list[str], device_nodes: bool = True) -> int:
    """Run a command against a private vgpud; returns the command's exit status.  With
    ``device_nodes`` (unless ``$VGPU_DEVICE_NODES`` is 0) the command sees NVIDIA's device
    nodes for the GPUs, in a /dev of its own where the host lacks them."""
    if not command:
        raise LaunchError("nothing to run: give a command after --, as in `vgpu run -- vgpu smi`")
    private = Path(tempfile.mkdtemp(prefix="run-", dir=runtime_dir()))
    socket_path = private / "vgpud.sock"
    try:
        daemon = start_daemon(gpus, socket_path, private / "vgpud.log", detach=False)
        try:
            setup = None
            if device_nodes:
                with Client(socket_path) as client:
                    gpu_count = len(client.control("status")["gpus"])
                setup = devices.private_dev(gpu_count, private / "dev", dict(os.environ))
            return _wait_for(command, client_environment(socket_path), setup)
        finally:
            _stop(daemon)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _wait_for(command: list[str], env: dict[str, str], setup: Callable[[], None] | None = None) -> int:
    """Run the command (``setup`` runs in the child just before it), passing SIGINT and
    SIGTERM on to it; its exit status as a shell reports it."""
    try:
        child = subprocess.Popen(command, env=env, preexec_fn=setup)
    except FileNotFoundError:
        raise LaunchError(f"command not found: {command[0]}") from None
    forwarded = {sig: signal.signal(sig, lambda s, _f: child.send_signal(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = child.wait()
    finally:
        for sig, handler in forwarded.items():
            signal.signal(sig, handler)
    return status if status >= 0 else 128 - status


def _stop(daemon: subprocess.Popen) -> None:
    daemon.terminate()
    try:
        daemon.wait(5)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def up(gpus: str, socket_path: Path | None = None) -> tuple[Path, int]:
    """Start a long-lived vgpud (if none answers there); returns its socket and pid."""
    socket_path = socket_path or protocol.default_socket_path()
    try:
        with Client(socket_path, timeout=2) as client:
            status = client.control("status")
        if status["spec"] != gpus:
            raise LaunchError(f"a vgpud (pid {status['pid']}) already serves {status['spec']!r} at {socket_path}; "
                              "`vgpu down` first to change its GPUs")
        return socket_path, status["pid"]
    except DaemonUnavailable:
        pass
    socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    process = start_daemon(gpus, socket_path, socket_path.with_suffix(".log"), detach=True)
    return socket_path, process.pid


def up_remote(connect: list[str], tokens: list[str], ca: Path | None, timeout: float,
              socket_path: Path | None = None) -> tuple[Path, int, list[dict]]:
    """Start a vgpud that forwards to GPU hosts (several are joined into one device list),
    after checking each connection, host certificate and token (LaunchError saying which
    failed); its socket, pid and each GPU host's status as the tenant sees it."""
    from vgpu.remote.relay import TOKEN_ENV, RemoteError, check, upstreams

    try:
        statuses = [check(host.address, host.token, ca, timeout) for host in upstreams(connect, tokens)]
    except (RemoteError, ValueError) as error:
        raise LaunchError(str(error)) from None
    socket_path = socket_path or protocol.default_socket_path()
    try:
        with Client(socket_path, timeout=2) as client:
            running = client.control("status")["pid"]
        raise LaunchError(f"a vgpud (pid {running}) already serves {socket_path}; `vgpu down` first")
    except DaemonUnavailable:
        pass
    socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    options = ("--backend", "remote", *(x for address in connect for x in ("--connect", address)),
               "--timeout", str(timeout), *(("--ca", str(ca)) if ca else ()))
    # the tokens travel in the environment, not on a command line other users can read
    process = start_daemon("h100", socket_path, socket_path.with_suffix(".log"), detach=True, options=options,
                           env={**os.environ, TOKEN_ENV: ",".join(tokens)})
    return socket_path, process.pid, statuses


def down(socket_path: Path | None = None, timeout: float = 10) -> int | None:
    """Stop the vgpud at the socket; returns its pid, or None when none was running."""
    socket_path = socket_path or protocol.default_socket_path()
    try:
        with Client(socket_path, timeout=2) as client:
            pid = client.control("stop")["stopping"]
    except DaemonUnavailable:
        return None
    deadline = time.monotonic() + timeout
    while socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid


def env_lines(socket_path: Path | None = None) -> list[str]:
    """``export`` lines for a POSIX shell (``eval "$(vgpu env)"``)."""
    env = client_environment(socket_path or protocol.default_socket_path(), base={
        "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH", "")})
    return [f"export {key}={_quote(env[key])}" for key in ("LD_LIBRARY_PATH", protocol.SOCKET_ENV)]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"
