"""GPU profiles: what a model of GPU reports, one TOML file per model in ``profiles/``.

>>> get("h100").name
'NVIDIA H100 80GB HBM3'
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from functools import cache
from pathlib import Path

PROFILE_DIR = Path(__file__).with_name("profiles")
#: per-architecture CUDA attributes live beside the profiles (vgpu.device.cuda_attributes)
ARCHITECTURES = PROFILE_DIR / "architectures.toml"


@dataclass(frozen=True)
class Profile:
    key: str
    model: str
    name: str
    brand: str
    architecture: str
    compute_capability: tuple[int, int]
    sm_count: int
    memory_total_mib: int
    memory_reserved_mib: int
    cuda_total_mib: int
    l2_cache_mib: int
    bus_width: int
    max_sm_clock_mhz: int
    max_mem_clock_mhz: int
    idle_sm_clock_mhz: int
    power_limit_w: int
    power_min_w: int
    idle_power_w: int
    pci_device_id: int
    pci_subsystem_id: int
    pcie_generation: int
    pcie_width: int
    bar1_mib: int
    ecc: bool
    fan: bool
    mig: bool
    nvlinks: int
    temp_slowdown_c: int
    temp_shutdown_c: int
    #: fields whose value comes from a single or unofficial source
    unverified: tuple[str, ...] = field(default=())
    #: bytes of the card this GPU is limited to (a slice, ``h100:20g``), or 0 for all of it
    slice_bytes: int = 0

    @property
    def memory_total(self) -> int:
        return self.slice_bytes or self.memory_total_mib << 20

    @property
    def memory_reserved(self) -> int:
        return 0 if self.slice_bytes else self.memory_reserved_mib << 20

    @property
    def cuda_total(self) -> int:
        """What CUDA reports as the device's total (cuDeviceTotalMem, cuMemGetInfo)."""
        return self.slice_bytes or self.cuda_total_mib << 20

    def sliced(self, size: int) -> "Profile":
        """This card limited to ``size`` bytes of memory: NVML and CUDA report and enforce it."""
        if not 0 < size <= self.cuda_total_mib << 20:
            raise ValueError(f"a slice of {size >> 20} MiB does not fit a {self.key} "
                             f"({self.cuda_total_mib} MiB usable)")
        return replace(self, slice_bytes=size)


def _load(path: Path) -> Profile:
    data = tomllib.loads(path.read_text())
    known = {f.name for f in fields(Profile)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{path}: unknown profile fields {sorted(unknown)}")
    data["compute_capability"] = tuple(data["compute_capability"])
    data["unverified"] = tuple(data.get("unverified", ()))
    missing = set(data["unverified"]) - known
    if missing:
        raise ValueError(f"{path}: 'unverified' names unknown fields {sorted(missing)}")
    return Profile(**data)


@cache
def all_profiles() -> dict[str, Profile]:
    """Every profile, by key, in file-name order."""
    return {p.key: p for p in map(_load, sorted(set(PROFILE_DIR.glob("*.toml")) - {ARCHITECTURES}))}


def get(key: str) -> Profile:
    try:
        return all_profiles()[key.lower()]
    except KeyError:
        raise KeyError(f"no GPU profile {key!r}; known: {', '.join(all_profiles())} (`vgpu profiles` lists them)") from None
