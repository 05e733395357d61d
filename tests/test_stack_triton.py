"""Triton 3.9 (as torch 2.15 brings it) on a simulated H100, in the torch stack environment
(tests/stack_envs.py): Triton asks the driver for the GPU's architecture, compiles for it,
loads the cubin and launches it; a TMA kernel takes a descriptor the driver encoded on the
host (cuTensorMapEncodeTiled). Kernels are recorded, not computed: the tests check the
launches vgpud records and that inputs stay exact, not the results."""

from __future__ import annotations

from tests.stack_envs import answer

VGPUD_GPUS = "h100"  # the vgpud fixture's GPUs (tests/conftest.py)

PROLOGUE = """
import json, os
import torch, triton
import triton.language as tl
out = {"pid": os.getpid(), "version": triton.__version__}
out["target"] = list(map(str, triton.runtime.driver.active.get_current_target().__dict__.values()))
"""


def run(vgpud, tmp_path, body: str) -> dict:
    out = answer("torch", PROLOGUE + body + "\nprint(json.dumps(out))\n", vgpud, tmp_path, timeout=400)
    assert out["version"].startswith("3.9") and out["target"] == ["cuda", "90", "32"], out
    return out


def launched(vgpud, pid: int) -> list[dict]:
    return vgpud.control("launches", pid=pid)["launches"]


def test_plain_kernel(vgpud, tmp_path):
    out = run(vgpud, tmp_path, """
@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(out_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) + tl.load(y_ptr + offsets, mask=mask), mask=mask)

x = torch.arange(10000, dtype=torch.float32).cuda()  # made on the host: kernels do not compute yet
y = torch.ones(10000, dtype=torch.float32).cuda()
result = torch.empty_like(x)
add_kernel[(triton.cdiv(10000, 1024),)](x, y, result, 10000, BLOCK=1024)
torch.cuda.synchronize()
out["inputs_exact"] = torch.equal(x.cpu(), torch.arange(10000, dtype=torch.float32))
out["pointers"] = [x.data_ptr(), y.data_ptr(), result.data_ptr()]
""")
    assert out["inputs_exact"]
    launches = [launch for launch in launched(vgpud, out["pid"]) if "add_kernel" in launch["kernel"]]
    assert len(launches) == 1, launched(vgpud, out["pid"])
    assert launches[0]["grid"] == [10, 1, 1]
    args = bytes.fromhex(launches[0]["args_hex"])
    for pointer in out["pointers"]:
        assert pointer.to_bytes(8, "little") in args, "the kernel's arguments carry the tensors' addresses"


def test_tma_descriptor_kernel(vgpud, tmp_path):
    out = run(vgpud, tmp_path, """
from triton.tools.tensor_descriptor import TensorDescriptor

@triton.jit
def copy_tiles(source, target, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M
    n = tl.program_id(1) * BLOCK_N
    target.store([m, n], source.load([m, n]))

x = torch.arange(256 * 128, dtype=torch.float16).reshape(256, 128).cuda()
y = torch.zeros_like(x)
source = TensorDescriptor.from_tensor(x, block_shape=[64, 64])
target = TensorDescriptor.from_tensor(y, block_shape=[64, 64])
copy_tiles[(4, 2)](source, target, BLOCK_M=64, BLOCK_N=64)
torch.cuda.synchronize()
out["inputs_exact"] = torch.equal(x.cpu(), torch.arange(256 * 128, dtype=torch.float16).reshape(256, 128))
""")
    assert out["inputs_exact"]
    launches = [launch for launch in launched(vgpud, out["pid"]) if "copy_tiles" in launch["kernel"]]
    assert len(launches) == 1, launched(vgpud, out["pid"])
    assert launches[0]["grid"] == [4, 2, 1]
    assert launches[0]["args_size"] >= 2 * 128, "two 128-byte tensor maps travel as kernel parameters"
