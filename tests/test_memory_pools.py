"""Memory pools beyond the default one (cuda-python) and the legacy v1 memory entry points
(ctypes on libcuda.so.1 with their 32-bit prototypes): contents byte for byte, values read
back, and the documented refusals."""

from __future__ import annotations

import pytest

from tests.conftest import CUDA_PYTHON, run_json
from vgpu.api.manifest import load

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)
C = load("cuda").constants

POOLS = CUDA_PYTHON + """
ok(cu.cuInit(0))
dev0, dev1 = ok(cu.cuDeviceGet(0)), ok(cu.cuDeviceGet(1))
ok(cu.cuCtxSetCurrent(ok(cu.cuDevicePrimaryCtxRetain(dev0))))
out = {}
def props(ordinal, alloc_type=cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED):
    p = cu.CUmemPoolProps()
    p.allocType = alloc_type
    p.handleTypes = cu.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_NONE
    p.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    p.location.id = ordinal
    return p
def location(ordinal):
    l = cu.CUmemLocation()
    l.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    l.id = ordinal
    return l
USED = cu.CUmemPool_attribute.CU_MEMPOOL_ATTR_USED_MEM_CURRENT
PINNED = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
pool = ok(cu.cuMemPoolCreate(props(0)))
stream = ok(cu.cuStreamCreate(0))
ptr = ok(cu.cuMemAllocFromPoolAsync(3000, pool, stream))
data = bytes(random.Random(3).getrandbits(8) for _ in range(3000))
ok(cu.cuMemcpyHtoDAsync(ptr, data, 3000, stream))
back = bytearray(3000)
ok(cu.cuMemcpyDtoHAsync(back, ptr, 3000, stream)); ok(cu.cuStreamSynchronize(stream))
out["contents"] = bytes(back) == data
out["used"] = int(ok(cu.cuMemPoolGetAttribute(pool, USED)))
ok(cu.cuMemFreeAsync(ptr, stream)); ok(cu.cuStreamSynchronize(stream))
out["used_after_free"] = int(ok(cu.cuMemPoolGetAttribute(pool, USED)))
# access from another device, read back; the pool's own device always has read-write
desc = cu.CUmemAccessDesc()
desc.location = location(1)
desc.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
before = int(ok(cu.cuMemPoolGetAccess(pool, location(1))))
ok(cu.cuMemPoolSetAccess(pool, [desc], 1))
out["access"] = [before, int(ok(cu.cuMemPoolGetAccess(pool, location(1)))), int(ok(cu.cuMemPoolGetAccess(pool, location(0))))]
own = cu.CUmemAccessDesc(); own.location = location(0); own.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_NONE
out["own_none"] = code(cu.cuMemPoolSetAccess(pool, [own], 1))
# the device's current pool: cuMemAllocAsync draws from it
default = ok(cu.cuDeviceGetDefaultMemPool(dev0))
out["current_is_default"] = int(ok(cu.cuDeviceGetMemPool(dev0))) == int(default)
ok(cu.cuDeviceSetMemPool(dev0, pool))
out["current_is_pool"] = int(ok(cu.cuDeviceGetMemPool(dev0))) == int(pool)
out["generic_current"] = int(ok(cu.cuMemGetMemPool(location(0), PINNED))) == int(pool)
out["generic_default"] = int(ok(cu.cuMemGetDefaultMemPool(location(0), PINNED))) == int(default)
p2 = ok(cu.cuMemAllocAsync(1 << 20, stream)); ok(cu.cuStreamSynchronize(stream))
out["async_counted"] = int(ok(cu.cuMemPoolGetAttribute(pool, USED)))
ok(cu.cuMemFreeAsync(p2, stream)); ok(cu.cuStreamSynchronize(stream))
out["wrong_device"] = code(cu.cuDeviceSetMemPool(dev1, pool))
ok(cu.cuMemSetMemPool(location(0), PINNED, default))
out["generic_set_back"] = int(ok(cu.cuDeviceGetMemPool(dev0))) == int(default)
# refusals cuda.h documents
bad = props(0); bad.allocType = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_INVALID
out["bad_type"] = code(cu.cuMemPoolCreate(bad))
out["bad_device"] = code(cu.cuMemPoolCreate(props(99)))
out["destroy_default"] = code(cu.cuMemPoolDestroy(default))
# destroying the current pool returns the device to its default pool; live memory stays
ok(cu.cuDeviceSetMemPool(dev0, pool))
live = ok(cu.cuMemAllocFromPoolAsync(64, pool, stream)); ok(cu.cuStreamSynchronize(stream))
ok(cu.cuMemPoolDestroy(pool))
out["after_destroy"] = int(ok(cu.cuDeviceGetMemPool(dev0))) == int(default)
ok(cu.cuMemsetD8(live, 0x5A, 64)); small = bytearray(64); ok(cu.cuMemcpyDtoH(small, live, 64))
out["live_after_destroy"] = bytes(small) == b"\\x5a" * 64
out["free_live"] = code(cu.cuMemFree(live))
print(json.dumps(out))
"""


def served_by_simulator(vgpud) -> None:
    if vgpud.through == "cuda-backend":
        pytest.skip("the cuda backend serves only the default pool and no 32-bit (legacy) allocations")


def test_created_pools_and_current_pool(vgpud):
    served_by_simulator(vgpud)
    out = run_json(POOLS, vgpud.env)
    assert out["contents"] and out["used"] >= 3000 and out["used_after_free"] == 0
    rw = C["CU_MEM_ACCESS_FLAGS_PROT_READWRITE"]
    assert out["access"] == [0, rw, rw] and out["own_none"] == C["CUDA_ERROR_INVALID_VALUE"]
    assert out["current_is_default"] and out["current_is_pool"]
    assert out["generic_current"] and out["generic_default"] and out["generic_set_back"]
    assert out["async_counted"] == 1 << 20
    assert out["wrong_device"] == C["CUDA_ERROR_INVALID_VALUE"]
    assert out["bad_type"] == C["CUDA_ERROR_INVALID_VALUE"] and out["bad_device"] == C["CUDA_ERROR_INVALID_VALUE"]
    assert out["destroy_default"] == C["CUDA_ERROR_INVALID_VALUE"]
    assert out["after_destroy"] and out["live_after_destroy"] and out["free_live"] == 0


LEGACY = CUDA_PYTHON + """
from ctypes import c_uint, c_int, c_ubyte, c_ushort, c_size_t, c_void_p, byref
lib = ctypes.CDLL("libcuda.so.1")
ok(cu.cuInit(0))
ok(cu.cuCtxSetCurrent(ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(0))))))
CANARY = 0xA5A5A5A5
class Out32(ctypes.Structure):  # a v1 out-parameter followed by 4 bytes the driver must not touch
    _fields_ = [("value", c_uint), ("canary", c_uint)]
def out32():
    return Out32(0, CANARY)
out = {}
LEGACY_ALLOC = os.environ.get("LEGACY_ALLOC") == "1"
total, free = out32(), out32()
out["info"] = lib.cuMemGetInfo(byref(free), byref(total))
wide_free, wide_total = ok(cu.cuMemGetInfo())
out["info_values"] = [free.value == min(int(wide_free), 0xFFFFFFFF), total.value == min(int(wide_total), 0xFFFFFFFF)]
out["info_canaries"] = [free.canary, total.canary]
mem = out32()
out["total_mem"] = lib.cuDeviceTotalMem(byref(mem), c_int(0))
out["total_mem_value"] = [mem.value, int(ok(cu.cuDeviceTotalMem(0))), mem.canary]
stream = ok(cu.cuStreamCreate(0)); event = ok(cu.cuEventCreate(0))
out["stream_destroy"] = [lib.cuStreamDestroy(c_void_p(int(stream))), code(cu.cuStreamQuery(stream))]
out["event_destroy"] = [lib.cuEventDestroy(c_void_p(int(event))), code(cu.cuEventQuery(event))]
if LEGACY_ALLOC:
    ptr = out32()
    out["alloc"] = lib.cuMemAlloc(byref(ptr), c_uint(4096))
    out["alloc_ptr"] = [ptr.value, ptr.canary]
    p = ptr.value
    out["memset"] = [lib.cuMemsetD8(c_uint(p), c_ubyte(0x11), c_uint(4)),
                     lib.cuMemsetD16(c_uint(p + 4), c_ushort(0x2233), c_uint(2)),
                     lib.cuMemsetD32(c_uint(p + 8), c_uint(0xDEADBEEF), c_uint(2))]
    back = bytearray(16); ok(cu.cuMemcpyDtoH(back, p, 16))
    out["memset_bytes"] = back.hex()
    base, size = out32(), out32()
    out["range"] = [lib.cuMemGetAddressRange(byref(base), byref(size), c_uint(p + 100)), base.value == p, size.value, base.canary, size.canary]
    wide = ok(cu.cuMemAlloc(64))
    low = int(wide) & 0xFFFFFFFF  # a 64-bit allocation cannot be named by a 32-bit pointer
    out["range_of_wide"] = [lib.cuMemGetAddressRange(byref(base), byref(size), c_uint(low)), code(cu.cuMemGetAddressRange(low))]
    pitched, pitch = out32(), out32()
    out["pitch"] = [lib.cuMemAllocPitch(byref(pitched), byref(pitch), c_uint(100), c_uint(3), c_uint(4)), pitch.value, pitched.value < 1 << 32 and pitched.value != p]
    out["free"] = [lib.cuMemFree(c_uint(p)), lib.cuMemFree(c_uint(p)), lib.cuMemFree(c_uint(pitched.value))]
print(json.dumps(out))
"""


def test_legacy_size_queries_and_destroys(vgpud):
    """The v1 names a real 64-bit driver serves: 32-bit outputs saturated at 4 GiB - 1."""
    out = run_json(LEGACY, vgpud.env)
    canary = 0xA5A5A5A5
    assert out["info"] == 0 and out["info_values"] == [True, True] and out["info_canaries"] == [canary, canary]
    value, wide, canary_after = out["total_mem_value"]
    assert out["total_mem"] == 0 and value == min(wide, 0xFFFFFFFF) == 0xFFFFFFFF and canary_after == canary
    assert out["stream_destroy"] == [0, C["CUDA_ERROR_INVALID_HANDLE"]]
    assert out["event_destroy"] == [0, C["CUDA_ERROR_INVALID_HANDLE"]]


def test_legacy_allocations_below_4_gib(vgpud):
    served_by_simulator(vgpud)
    out = run_json(LEGACY, dict(vgpud.env, LEGACY_ALLOC="1"))
    canary = 0xA5A5A5A5
    assert out["alloc"] == 0 and 0 < out["alloc_ptr"][0] < 1 << 32 and out["alloc_ptr"][1] == canary
    assert out["memset"] == [0, 0, 0] and out["memset_bytes"] == "11111111" + "33223322" + "efbeadde" * 2
    assert out["range"] == [0, True, 4096, canary, canary]
    legacy_code, wide_code = out["range_of_wide"]
    assert legacy_code == wide_code != 0  # as the _v2 function answers for an address of no allocation
    assert out["pitch"] == [0, 512, True]
    assert out["free"] == [0, C["CUDA_ERROR_INVALID_VALUE"], 0]
