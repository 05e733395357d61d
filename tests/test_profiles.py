"""Profiles carry the values of shared/facts/gpu-profiles.md; GPU sets give stable, distinct identities."""

from __future__ import annotations

import pytest

from vgpu.device import gpuset
from vgpu.device.profiles import all_profiles, get

# (profile, NVML name, NVML total MiB, reserved MiB or None, SMs, CC, max SM MHz, power W, PCI device id)
FACTS = [
    ("h100", "NVIDIA H100 80GB HBM3", 81559, 479, 132, (9, 0), 1980, 700, 0x233010DE),
    ("h200", "NVIDIA H200", 143771, 614, 132, (9, 0), 1980, 700, 0x233510DE),
    ("a100-40gb", "NVIDIA A100-SXM4-40GB", 40960, None, 108, (8, 0), 1410, 400, 0x20B010DE),
    ("a100-80gb", "NVIDIA A100-SXM4-80GB", 81920, None, 108, (8, 0), 1410, 400, 0x20B210DE),
    ("l4", "NVIDIA L4", 23034, None, 58, (8, 9), 2040, 72, 0x27B810DE),
    ("l40s", "NVIDIA L40S", 46068, None, 142, (8, 9), 2520, 350, 0x26B910DE),
    ("t4", "Tesla T4", 15360, None, 40, (7, 5), 1590, 70, 0x1EB810DE),
    ("rtx4090", "NVIDIA GeForce RTX 4090", 24564, None, 128, (8, 9), 3105, 450, 0x268410DE),
]


@pytest.mark.parametrize("key,name,total,reserved,sms,cc,clock,power,pci", FACTS)
def test_profile_values(key, name, total, reserved, sms, cc, clock, power, pci):
    p = get(key)
    assert (p.name, p.memory_total_mib, p.sm_count, p.compute_capability, p.max_sm_clock_mhz, p.power_limit_w,
            p.pci_device_id) == (name, total, sms, cc, clock, power, pci)
    if reserved is not None:
        assert p.memory_reserved_mib == reserved
    else:
        assert "memory_reserved_mib" in p.unverified
    assert p.cuda_total_mib < p.memory_total_mib


def test_unverified_values_are_marked():
    assert "sm_count" in get("l4").unverified and "sm_count" in get("l40s").unverified
    assert "bus_width" in get("h200").unverified
    assert "sm_count" not in get("h100").unverified


def test_gpu_sets():
    assert [g.profile.key for g in gpuset.parse("2xh100").gpus] == ["h100", "h100"]
    assert [g.profile.key for g in gpuset.parse("h100,l4").gpus] == ["h100", "l4"]
    assert [g.profile.key for g in gpuset.parse("2xrtx4090,t4").gpus] == ["rtx4090", "rtx4090", "t4"]
    with pytest.raises(KeyError, match="vgpu profiles"):
        gpuset.parse("h1000")
    with pytest.raises(ValueError):
        gpuset.parse("0xh100")


def test_identities_are_stable_and_distinct():
    first, again = gpuset.parse("8xh200"), gpuset.parse("8xh200")
    assert first.gpus == again.gpus
    for attribute in ("uuid", "serial", "pci_bus"):
        assert len({getattr(g, attribute) for g in first.gpus}) == 8
    assert gpuset.parse("h100,l4").gpus[0].uuid != gpuset.parse("h100").gpus[0].uuid
    uuid = first.gpus[0].uuid
    assert uuid.startswith("GPU-") and len(uuid) == 40
    assert first.gpus[0].pci_bus_id.startswith("00000000:") and first.gpus[0].pci_bus_id_legacy.startswith("0000:")


def test_config_file(tmp_path):
    config = tmp_path / "lab.toml"
    config.write_text('driver_version = "580.95.05"\ncuda_version = 13000\n'
                      '[[gpus]]\nprofile = "h100"\ncount = 2\n[[gpus]]\nprofile = "t4"\n')
    gpus = gpuset.parse(str(config))
    assert [g.profile.key for g in gpus.gpus] == ["h100", "h100", "t4"]
    assert gpus.driver_version == "580.95.05" and gpus.cuda_version == 13000


def test_every_profile_loads():
    assert len(all_profiles()) == 8
