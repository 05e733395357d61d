"""The NVIDIA stack as ``pip install`` gives it today, in virtual environments the stack tests
(tests/test_stack_*.py) run their clients in.

Libraries whose nvidia-* wheels pin different versions live apart: torch brings its own
cuBLAS, cuDNN and triton; CuPy, ONNX Runtime and numba-cuda take the newest CUDA wheels;
JAX its plugin's. Each environment is built once per machine, outside the repository, under
``$VGPU_STACK_ENVS`` (default ``~/.cache/vgpu-ci/stacks``) in a folder named after a hash of
its requirement lines and the interpreter, so a second run with the same lines installs
nothing and a changed line builds afresh. ``.ci/run`` builds them all
(``python -m tests.stack_envs``); a developer who has not built one sees its tests skipped,
with the command that builds it.

pip's configuration on some machines caps torch through a constraints file; these installs
name ``os.devnull`` as their constraints file, so they get what a plain ``pip install`` on
PyPI gives whatever the machine's pip configuration says.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: each environment's requirement lines: the top-level packages pinned to the releases current
#: when these tests were written (their own dependencies resolve as pip resolves them)
STACKS: dict[str, tuple[str, ...]] = {
    # torch's default Linux wheel is its CUDA 13 build (cuBLAS 13.4, cuDNN 9.26); triton comes with it
    "torch": ("torch==2.15.0", "numpy"),
    # cuda-toolkit 13.5's wheels through CuPy's ctk extra: cuBLAS 13.10, cuFFT, NVRTC; cuDNN 9.28
    # through ONNX Runtime's cudnn extra
    "cupy-onnxruntime": ("cupy-cuda13x[ctk]==14.2.0", "onnxruntime-gpu[cuda,cudnn]==1.31.1", "onnx==1.23.2",
                         "numba-cuda[cu13]==0.30.4"),
    # the CUDA 13 plugin and PJRT with their nvidia wheels
    "jax": ("jax[cuda13]==0.10.2",),
    # numba-cuda without nvJitLink: it then links through the driver (cuLink*), which hands
    # vgpud its PTX (with nvJitLink installed, as above, the driver gets SASS)
    "numba-driver-link": ("numba-cuda==0.30.4", "cuda-bindings==13.5.0", "nvidia-nvvm==13.5.37",
                          "nvidia-cuda-nvrtc==13.5.37", "nvidia-cuda-runtime==13.5.37", "numpy"),
}

#: the folder holding the environments; see the module's docstring
ROOT_VARIABLE = "VGPU_STACK_ENVS"
#: written last into an environment whose install finished
COMPLETE = "vgpu-stack-complete"


def root() -> Path:
    return Path(os.environ.get(ROOT_VARIABLE) or Path.home() / ".cache" / "vgpu-ci" / "stacks")


def _base_interpreter() -> str:
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def folder(name: str) -> Path:
    """Where environment ``name`` for its current requirement lines lives (built or not)."""
    lines = "\n".join((_base_interpreter(), sys.version, *STACKS[name]))
    return root() / f"{name}-{hashlib.sha256(lines.encode()).hexdigest()[:16]}"


def python(name: str) -> Path | None:
    """The interpreter of environment ``name`` when it is built, else None."""
    home = folder(name)
    return home / "bin" / "python" if (home / COMPLETE).exists() else None


def nvidia_libraries(name: str) -> Path | None:
    """The folder of NVIDIA's CUDA 13 libraries (cuBLAS, cuFFT, CUPTI, ...) in environment
    ``name`` when it is built, else None."""
    home = folder(name)
    found = sorted(home.glob("lib/python*/site-packages/nvidia/cu13/lib")) if (home / COMPLETE).exists() else []
    return found[0] if found else None


def missing_reason(name: str) -> str:
    """Why a test needing environment ``name`` skips."""
    return (f"the {name} stack environment is not built ({' '.join(STACKS[name])}); "
            f"build it with `python -m tests.stack_envs {name}` ({ROOT_VARIABLE} picks the folder)")


def build(name: str) -> Path:
    """Build environment ``name`` unless it is already built; its interpreter. Other
    environments of the same name (older requirement lines) are removed."""
    home = folder(name)
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two CI runs on one machine build it once
        if (home / COMPLETE).exists():
            print(f"{name}: cached at {home}", flush=True)
            return home / "bin" / "python"
        for stale in home.parent.glob(f"{name}-*"):
            shutil.rmtree(stale)
        started = time.monotonic()
        subprocess.run([_base_interpreter(), "-m", "venv", str(home)], check=True)
        pip = [str(home / "bin" / "python"), "-m", "pip"]
        env = {**os.environ, "PIP_CONSTRAINT": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        subprocess.run([*pip, "install", "--no-cache-dir", "--progress-bar", "off", *STACKS[name]], check=True,
                       env=env)
        (home / COMPLETE).write_text("\n".join(STACKS[name]) + "\n")
        print(f"{name}: built at {home} in {time.monotonic() - started:.0f} s", flush=True)
        return home / "bin" / "python"


@dataclass
class ClientRun:
    """What a client process left: its exit status, its output and the JSON of its last line."""
    returncode: int
    stdout: str
    stderr: str

    @property
    def answer(self) -> Any:
        lines = self.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else None

    def explain(self) -> str:
        """The end of the client's stderr (vgpu's log of refused calls, a fault's traceback),
        a line repeated at once shown once with its count."""
        lines: list[str] = []
        counts: list[int] = []
        for line in self.stderr.splitlines():
            if lines and line == lines[-1]:
                counts[-1] += 1
            else:
                lines.append(line)
                counts.append(1)
        text = "\n".join(line if count == 1 else f"{line}   [x{count}]" for line, count in zip(lines, counts))
        return f"exit status {self.returncode}; stderr ends:\n{text[-8000:]}"


def run_client(name: str, script: str, vgpud: Any, folder: Path, timeout: float = 300) -> ClientRun:
    """Run ``script`` with environment ``name``'s interpreter (the test skips when it is not
    built) against ``vgpud`` (tests.conftest.Vgpud) as `vgpu run` runs a command: the library
    first, and NVIDIA's device nodes for its GPUs in a /dev of the client's own where the host
    lacks them (JAX looks for them). vgpu's log of refused calls and a Python traceback on a
    fault go to stderr. The script is a file (torch.multiprocessing's spawned children import
    it); on a timeout its whole process group is killed."""
    import pytest

    from vgpu.launcher import devices

    interpreter = python(name)
    if interpreter is None:
        pytest.skip(missing_reason(name))
    path = folder / f"client_{name.replace('-', '_')}_{time.monotonic_ns()}.py"
    path.write_text(script)
    env = vgpud.env
    env.update({"VGPU_LOG": env.get("VGPU_LOG", "info"), "PYTHONFAULTHANDLER": "1", "PYTHONUNBUFFERED": "1"})
    nodes = devices.private_dev(len(vgpud.gpus), folder / "dev", env)
    process = subprocess.Popen([str(interpreter), str(path)], env=env, cwd=folder, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=nodes)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        return ClientRun(-signal.SIGKILL, stdout, f"{stderr}\n[killed after {timeout} s]")
    with contextlib.suppress(ProcessLookupError):  # nothing it started outlives it
        os.killpg(process.pid, signal.SIGKILL)
    return ClientRun(process.returncode, stdout, stderr)


def answer(name: str, script: str, vgpud: Any, folder: Path, timeout: float = 300) -> Any:
    """The JSON answer of a client run as run_client runs it, after checking it exited cleanly."""
    result = run_client(name, script, vgpud, folder, timeout)
    assert result.returncode == 0, result.explain()
    return result.answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"environments to build: {', '.join(STACKS)} (default: all)")
    names = parser.parse_args().names or list(STACKS)
    unknown = [name for name in names if name not in STACKS]
    if unknown:
        parser.error(f"no such environment: {', '.join(unknown)}")
    for name in names:
        build(name)


if __name__ == "__main__":
    main()
