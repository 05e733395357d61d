"""Copies that name memory by address alone (cuMemcpy, cuMemcpyAsync, cudaMemcpyDefault) and
device-to-device copies between two GPUs, through cudart (nvcc) and cuda-python, checked byte
for byte; bad addresses refused without touching the process."""

from __future__ import annotations

from tests.conftest import CUDA_PYTHON, run_json
from tests.test_cudart import build, run_report

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)


def test_cudart_copies_by_address_alone_and_between_devices(vgpud, tmp_path_factory):
    report = run_report(build(tmp_path_factory, "unified_copies"), vgpud.env)
    names = ["h2d", "d2h", "d2d", "d2pinned_then_h2h", "dev0_to_dev1", "dev0_to_dev1_async", "dev1_to_dev0_default"]
    assert {name: (report.get(name), report.get(f"equal_{name}")) for name in names} == \
        {name: ("0", "1") for name in names}, report["_output"]
    assert report["enable_peer"] == "0" and report["enable_peer_back"] == "0" and report["synced"] == "0"
    assert report["last_error"] == "0"


DRIVER = CUDA_PYTHON + """
ok(cu.cuInit(0))
ok(cu.cuCtxSetCurrent(ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(0))))))
size = 1 << 20
data = bytes((i * 13) % 251 for i in range(size))
source = ctypes.create_string_buffer(data, size)
target = ctypes.create_string_buffer(size)
device = ok(cu.cuMemAlloc(size))
out = {}
out["h2d"] = code(cu.cuMemcpy(device, ctypes.addressof(source), size))
out["d2h"] = code(cu.cuMemcpy(ctypes.addressof(target), device, size))
out["equal"] = target.raw == data
stream = ok(cu.cuStreamCreate(0))
ctypes.memset(target, 0, size)
out["h2h_async"] = code(cu.cuMemcpyAsync(ctypes.addressof(target), ctypes.addressof(source), size, stream))
ok(cu.cuStreamSynchronize(stream))
out["equal_h2h"] = target.raw == data
out["zero_bytes"] = code(cu.cuMemcpy(device, ctypes.addressof(source), 0))
out["null"] = code(cu.cuMemcpy(0, device, 16))
freed = ok(cu.cuMemAlloc(size))
ok(cu.cuMemFree(freed))
out["freed"] = code(cu.cuMemcpy(freed, ctypes.addressof(source), 16))
out["unmapped"] = code(cu.cuMemcpy(ctypes.addressof(target), 0x10, 16))
out["still_works"] = code(cu.cuMemcpy(ctypes.addressof(target), device, size))
print(json.dumps(out))
"""


def test_driver_copies_by_address_alone(vgpud):
    out = run_json(DRIVER, vgpud.env)
    assert out == {"h2d": 0, "d2h": 0, "equal": True, "h2h_async": 0, "equal_h2h": True, "zero_bytes": 0,
                   "null": 1, "freed": 1, "unmapped": 1, "still_works": 0}


TORCH_TWO_DEVICES = """
import json, torch
cpu = torch.randint(0, 1 << 30, (1 << 20,), dtype=torch.int32, generator=torch.Generator().manual_seed(5))
x = cpu.cuda(0)
y = x.to("cuda:1")
z = x.to("cuda:1", non_blocking=True)
torch.cuda.synchronize(1)
back = y.to("cuda:0")
print(json.dumps({"peer": torch.cuda.can_device_access_peer(0, 1),
                  "equal": [torch.equal(t.cpu(), cpu) for t in (y, z, back)],
                  "devices": [y.device.index, back.device.index]}))
"""


def test_pytorch_copies_a_tensor_between_two_devices(vgpud):
    out = run_json(TORCH_TWO_DEVICES, vgpud.env, timeout=120)
    assert out == {"peer": True, "equal": [True, True, True], "devices": [1, 0]}
