"""cuDeviceGetAttribute's answers for a GPU: per-architecture values (profiles/architectures.toml)
plus the card's own (SM count, clocks, memory bus, L2, PCI location, ECC).

>>> from vgpu.device.gpuset import parse
>>> attributes(parse("h100").gpus[0])["MULTIPROCESSOR_COUNT"]
132
"""

from __future__ import annotations

import tomllib
from functools import cache

from vgpu.device.gpuset import GpuIdentity
from vgpu.device.profiles import ARCHITECTURES


@cache
def _architectures() -> dict[str, dict[str, int]]:
    return tomllib.loads(ARCHITECTURES.read_text())


def attributes(ident: GpuIdentity) -> dict[str, int]:
    """Attribute name (without CU_DEVICE_ATTRIBUTE_) -> value; names not present read 0."""
    p = ident.profile
    major, minor = p.compute_capability
    table = _architectures()
    values = dict(table["common"])
    values.update(table[f"{major}.{minor}"])
    values.update({
        "MULTIPROCESSOR_COUNT": p.sm_count,
        "CLOCK_RATE": p.max_sm_clock_mhz * 1000,
        "MEMORY_CLOCK_RATE": p.max_mem_clock_mhz * 1000,
        "GLOBAL_MEMORY_BUS_WIDTH": p.bus_width,
        "L2_CACHE_SIZE": p.l2_cache_mib << 20,
        "MAX_PERSISTING_L2_CACHE_SIZE": (p.l2_cache_mib << 20) * 3 // 4 if major >= 8 else 0,
        "ECC_ENABLED": int(p.ecc),
        "PCI_BUS_ID": ident.pci_bus,
        "PCI_DEVICE_ID": ident.pci_device,
        "PCI_DOMAIN_ID": ident.pci_domain,
        "COMPUTE_CAPABILITY_MAJOR": major,
        "COMPUTE_CAPABILITY_MINOR": minor,
        "GPU_PCI_DEVICE_ID": p.pci_device_id,
        "GPU_PCI_SUBSYSTEM_ID": p.pci_subsystem_id,
        "COOPERATIVE_MULTI_DEVICE_LAUNCH": 0,
        "MULTI_GPU_BOARD_GROUP_ID": ident.index,
    })
    return values
