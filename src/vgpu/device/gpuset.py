"""GPU sets: which GPUs a vgpud serves, from ``--gpus 2xh100``, ``--gpus h100,l4`` or a TOML file.

Identities (UUID, serial, PCI bus id) follow from the set's description and the
GPU's position, so the same set always yields the same GPUs and no two GPUs share one.

>>> s = parse("2xh100")
>>> [g.profile.key for g in s.gpus], s.gpus[0].uuid != s.gpus[1].uuid
(['h100', 'h100'], True)
"""

from __future__ import annotations

import hashlib
import json
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

from vgpu.api.manifest import HERE as MANIFESTS
from vgpu.device.profiles import Profile, get

DEFAULT_DRIVER_VERSION = "590.48.01"
#: the CUDA version of the cuda.h the library exports (CUDA_VERSION), so what cuDriverGetVersion,
#: NVML and the smi table report matches the functions cuGetProcAddress finds
DEFAULT_CUDA_VERSION: int = json.loads((MANIFESTS / "cuda.json").read_text())["defines"]["CUDA_VERSION"]
#: PCI buses of the eight GPUs of an HGX H100 board; later GPUs continue past them.
_BUSES = [0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB]


@dataclass(frozen=True)
class GpuIdentity:
    index: int
    profile: Profile
    uuid: str           #: "GPU-xxxxxxxx-...", NVML's spelling of the 16 bytes
    uuid_bytes: bytes
    serial: str
    pci_bus: int
    #: a real device's PCI domain and device (the cuda backend); simulated GPUs have 0 and 0
    pci_domain: int = 0
    pci_device: int = 0

    @property
    def pci_location(self) -> tuple[int, int, int]:
        return self.pci_domain, self.pci_bus, self.pci_device

    @property
    def pci_bus_id(self) -> str:
        """NVML's spelling: 8-digit domain."""
        return f"{self.pci_domain:08X}:{self.pci_bus:02X}:{self.pci_device:02X}.0"

    @property
    def pci_bus_id_legacy(self) -> str:
        return f"{self.pci_domain:04X}:{self.pci_bus:02X}:{self.pci_device:02X}.0"


@dataclass(frozen=True)
class GpuSet:
    spec: str
    gpus: tuple[GpuIdentity, ...]
    driver_version: str = DEFAULT_DRIVER_VERSION
    cuda_version: int = DEFAULT_CUDA_VERSION


def with_identities(gpu_set: GpuSet, devices: list[tuple[bytes, tuple[int, int, int]]]) -> GpuSet:
    """The set's GPUs, one per real device (the first profile repeated as needed), wearing the
    real devices' UUIDs and PCI buses: what NVML reports then matches what CUDA reports on a
    real GPU (the cuda backend)."""
    profiles = [gpu_set.gpus[min(i, len(gpu_set.gpus) - 1)].profile for i in range(len(devices))]
    base = build(profiles, gpu_set.spec, gpu_set.driver_version, gpu_set.cuda_version)
    gpus = tuple(GpuIdentity(g.index, g.profile, f"GPU-{uuid.UUID(bytes=raw)}", raw, g.serial, bus, domain, device)
                 for g, (raw, (domain, bus, device)) in zip(base.gpus, devices))
    return GpuSet(gpu_set.spec, gpus, gpu_set.driver_version, gpu_set.cuda_version)


def parse_pci_bus_id(text: bytes) -> tuple[int, int, int] | None:
    """(domain, bus, device) from "0000:18:00.0", "00000000:18:00.0" or "18:00.0", any case."""
    try:
        parts = text.decode().strip().lower().split(":")
        if len(parts) == 2:
            parts.insert(0, "0")
        domain, bus, rest = parts
        return int(domain, 16), int(bus, 16), int(rest.split(".")[0], 16)
    except (ValueError, UnicodeDecodeError):
        return None


def _bus(index: int) -> int:
    return _BUSES[index] if index < len(_BUSES) else 0xE0 + index - len(_BUSES)


def build(profiles: list[Profile], spec: str, driver_version: str = DEFAULT_DRIVER_VERSION,
          cuda_version: int = DEFAULT_CUDA_VERSION, pci_domain: int = 0) -> GpuSet:
    if not profiles:
        raise ValueError("a GPU set needs at least one GPU")
    if len(profiles) > 32:
        raise ValueError(f"{len(profiles)} GPUs asked for; a vgpud serves at most 32")
    canonical = ",".join(p.key + (f":{p.slice_bytes}" if p.slice_bytes else "") for p in profiles)
    gpus = []
    for index, profile in enumerate(profiles):
        seed = f"vgpu:{canonical}:{index}" + (f":{pci_domain}" if pci_domain else "")
        digest = hashlib.sha256(seed.encode()).digest()
        ident = uuid.UUID(bytes=digest[:16], version=4)
        serial = str(1650000000000 + int.from_bytes(digest[16:24], "little") % 10**10)
        gpus.append(GpuIdentity(index, profile, f"GPU-{ident}", ident.bytes, serial, _bus(index), pci_domain))
    return GpuSet(spec, tuple(gpus), driver_version, cuda_version)


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from ``20g``, ``512m``, ``20GiB``, ``20gb`` or a plain number (binary units)."""
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    number, unit = cleaned.rstrip("kmgt"), cleaned[len(cleaned.rstrip("kmgt")):]
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise ValueError(f"{text!r} is not a size; write it as 20g, 512m or a number of bytes") from None
    if value <= 0:
        raise ValueError(f"{text!r}: a size must be positive")
    return int(value)


def _profile(key: str) -> Profile:
    """A profile by key, sliced when the key says so (``h100:20g``)."""
    name, _, size = key.partition(":")
    profile = get(name)
    return profile.sliced(parse_size(size)) if size else profile


def parse(spec: str, pci_domain: int = 0) -> GpuSet:
    """``2xh100``, ``h100,l4``, ``8xh200``, ``h100:20g`` (a slice: 20 GiB of an H100) or the
    path of a TOML file (see docs/configuration.md); the GPUs sit in PCI domain ``pci_domain``
    (simulators joined behind one relay need different ones), which their identities follow."""
    path = Path(spec)
    if spec.endswith(".toml") or path.is_file():
        return _from_file(path, pci_domain)
    profiles: list[Profile] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        count, _, key = part.partition("x")
        if not count.isdigit():
            count, key = "1", part
        if int(count) < 1:
            raise ValueError(f"bad GPU count in {part!r}; write it as 2xh100")
        profiles.extend([_profile(key)] * int(count))
    return build(profiles, spec, pci_domain=pci_domain)


def _from_file(path: Path, pci_domain: int = 0) -> GpuSet:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"GPU set file {path} does not exist") from None
    profiles: list[Profile] = []
    for entry in data.get("gpus", []):
        profile = get(entry["profile"])
        if "memory" in entry:
            profile = profile.sliced(parse_size(str(entry["memory"])))
        profiles.extend([profile] * int(entry.get("count", 1)))
    return build(profiles, str(path), data.get("driver_version", DEFAULT_DRIVER_VERSION),
                 int(data.get("cuda_version", DEFAULT_CUDA_VERSION)), pci_domain)
