"""PyTorch's CUDA build (torch 2.14.1, CUDA 13) on the simulated GPUs."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_python
from vgpu.device.gpuset import parse

pytest.importorskip("torch")
SET = parse("2xh100,l4,rtx4090")

SCRIPT = """
import json, os, torch, pynvml
out = {"available": torch.cuda.is_available(), "count": torch.cuda.device_count(),
       "name0": torch.cuda.get_device_name(0)}
p = torch.cuda.get_device_properties(2)
out["props2"] = [p.name, p.total_memory, p.major, p.minor, p.multi_processor_count]
free, total = torch.cuda.mem_get_info(1)
out["mem_info1"] = [free, total]
empty = torch.empty((1024, 1024), device="cuda")
out["empty"] = [list(empty.shape), str(empty.device)]
x = torch.arange(10**7, dtype=torch.float32)
start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
y = x.cuda()
stop.record()
torch.cuda.synchronize()
out["round_trip"] = torch.equal(y.cpu(), x)
out["elapsed_ms"] = start.elapsed_time(stop)
noise = torch.randint(0, 256, (64 << 20,), dtype=torch.uint8)
out["bytes_round_trip"] = torch.equal(noise.to("cuda:3").cpu(), noise)
torch.cuda.synchronize()
out["pinned"] = [torch.empty(1000).pin_memory().is_pinned(), torch.ones(3).is_pinned()]
pynvml.nvmlInit()
handle = pynvml.nvmlDeviceGetHandleByIndex(0)
mine = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == os.getpid()]
out["nvml_used0"] = mine
out["reserved0"] = torch.cuda.memory_reserved(0)
print(json.dumps(out))
"""


def test_pytorch_sees_and_uses_the_gpus(vgpud):
    result = run_python(SCRIPT, vgpud.env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["available"] is True and out["count"] == 4
    assert out["name0"] == "NVIDIA H100 80GB HBM3"
    l4 = SET.gpus[2].profile
    assert out["props2"] == [l4.name, l4.cuda_total_mib << 20, 8, 9, l4.sm_count]
    assert out["mem_info1"][1] == SET.gpus[1].profile.cuda_total_mib << 20
    assert out["empty"] == [[1024, 1024], "cuda:0"]
    assert out["round_trip"] is True and out["bytes_round_trip"] is True
    assert 0 < out["elapsed_ms"] < 10, "a 40 MB copy over PCIe 5 takes about 0.8 ms in the model"
    assert out["nvml_used0"] == [out["reserved0"]] and out["reserved0"] >= 40_000_000
    assert out["pinned"] == [True, False], "pointer attributes tell page-locked memory apart"
