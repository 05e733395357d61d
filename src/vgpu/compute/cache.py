"""Compiled kernels on disk, so a second run starts without compiling: one file per kernel,
keyed by the PTX text, the kernel's name, the code generator and the host's CPU
(``compiler.host_id``) and the engine's own source (``engine_version``).

Where: ``$VGPU_COMPUTE_CACHE``, else ``$XDG_CACHE_HOME/vgpu/compute`` (``~/.cache/vgpu/compute``).
``VGPU_COMPUTE_CACHE=off`` turns it off.  A file that cannot be read is compiled again.  A file holds ``{u32 n}``, n bytes of JSON
(the kernel's facts), then the object code: nothing in it is executed before the object is
loaded, as any compiled code is.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

from vgpu.compute.lower.kernel import KernelFacts



@functools.cache
def engine_version() -> str:
    """A digest of the code generator's own source (the lowering, its instruction families,
    the launch record): a changed engine never takes an object an older one compiled."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*package.glob("lower/**/*.py"), package / "launch.py", package / "compiler.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def directory() -> Path | None:
    configured = os.environ.get("VGPU_COMPUTE_CACHE")
    if configured == "off":
        return None
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vgpu" / "compute"


def key(ptx: str, kernel: str, host: str) -> str:
    digest = hashlib.sha256()
    for part in (engine_version(), host, kernel, ptx):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def load(name: str) -> tuple[KernelFacts, bytes] | None:
    folder = directory()
    if folder is None:
        return None
    try:
        data = (folder / f"{name}.kernel").read_bytes()
        (size,) = struct.unpack_from("<I", data)
        fields = json.loads(data[4:4 + size])
        fields["param_types"] = tuple(fields["param_types"])
        fields["symbols"] = tuple(tuple(pair) for pair in fields["symbols"])
        return KernelFacts(**fields), data[4 + size:]
    except (OSError, ValueError, TypeError, KeyError, struct.error):
        return None


def store(name: str, facts: KernelFacts, object_code: bytes) -> None:
    folder = directory()
    if folder is None:
        return
    head = json.dumps(dataclasses.asdict(facts)).encode()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, delete=False) as file:
            file.write(struct.pack("<I", len(head)) + head + object_code)
        os.replace(file.name, folder / f"{name}.kernel")
    except OSError:
        pass  # a read-only or full disk costs a compile next time, nothing else
