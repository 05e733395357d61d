"""GPU slices, and GPUs over the network: a vgpud listening on TCP with TLS and tokens, and a
relay vgpud (backend remote) that forwards its clients to it."""

from __future__ import annotations

import pytest

from tests.conftest import run_json
from vgpu.device.gpuset import parse, parse_size

SLICE = 20 << 30


def test_sizes():
    assert parse_size("20g") == parse_size("20GiB") == parse_size("20gb") == 20 << 30
    assert parse_size("512m") == 512 << 20 and parse_size("4096") == 4096
    for bad in ("", "g", "-1g", "20x"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_slice_identities():
    whole, sliced = parse("h100").gpus[0], parse("h100:20g").gpus[0]
    assert sliced.profile.memory_total == sliced.profile.cuda_total == SLICE
    assert whole.uuid != sliced.uuid and whole.profile.name == sliced.profile.name
    with pytest.raises(ValueError, match="does not fit"):
        parse("l4:100g")


def test_slice_reported_and_enforced(vgpud_factory):
    """NVML and CUDA report a slice's total and free memory, and refuse allocations past it."""
    daemon = vgpud_factory("h100:20g,l4")
    code = """
import json, time, pynvml, torch
pynvml.nvmlInit()
handle = pynvml.nvmlDeviceGetHandleByIndex(0)
before = pynvml.nvmlDeviceGetMemoryInfo(handle)
free, total = torch.cuda.mem_get_info(0)
x = torch.empty(12 << 30, dtype=torch.uint8, device="cuda:0")
time.sleep(0.3)  # NVML's published answers are at most 100 ms old
after = pynvml.nvmlDeviceGetMemoryInfo(handle)
try:
    torch.empty(12 << 30, dtype=torch.uint8, device="cuda:0")
    oom = False
except torch.OutOfMemoryError:
    oom = True
print(json.dumps({"nvml_total": before.total, "nvml_free": before.free, "nvml_used_after": after.used,
                  "cuda_total": total, "cuda_free": free, "oom": oom,
                  "l4_total": torch.cuda.mem_get_info(1)[1]}))
"""
    report = run_json(code, daemon.env, timeout=180)
    assert report["nvml_total"] == report["nvml_free"] == SLICE
    assert report["cuda_total"] == report["cuda_free"] == SLICE
    assert report["nvml_used_after"] >= 12 << 30
    assert report["oom"]
    assert report["l4_total"] == parse("l4").gpus[0].profile.cuda_total
