"""Host memory on the device side (cuda-python): page-locked memory named as a device pointer in
copies, memsets and launches, and managed memory that the host reads and writes directly while
device-side operations see the same bytes; prefetch, advice and range attributes; isolation
between processes; memory given back when freed and when the process ends.

Both need memory that vgpud maps (docs/cuda.md, "Host memory on the device side"): through a
relay the GPU host cannot map the client's memory, and the cuda backend's driver lives in
another process, so there the tests check the documented refusals instead."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import run_json, wait_for
from tests.test_cuda_memory import PRELUDE
from vgpu.api.manifest import load

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)
C = load("cuda").constants

PINNED = PRELUDE + """
import ctypes
use(0)
rng = random.Random(11)
n = 100003
data = bytes(rng.getrandbits(8) for _ in range(n))
mapped = int(ok(cu.cuMemHostAlloc(n, cu.CU_MEMHOSTALLOC_DEVICEMAP)))
plain = int(ok(cu.cuMemAllocHost(n)))
through = int(ok(cu.cuMemHostGetDevicePointer(mapped, 0)))
ctypes.memmove(mapped, data, n)
dev = ok(cu.cuMemAlloc(n))
out = {"same_address": through == mapped, "codes": {}}
codes = out["codes"]
codes["dtod_from_pinned"] = int(cu.cuMemcpyDtoD(dev, through, n)[0])
back = bytearray(n)
ok(cu.cuMemcpyDtoH(back, dev, n))
out["dtod_from_pinned"] = bytes(back) == data
ok(cu.cuMemsetD8(dev, 0x5A, n))
codes["dtod_to_pinned"] = int(cu.cuMemcpyDtoD(plain, dev, n)[0])  # the host pointer itself
out["dtod_to_pinned"] = ctypes.string_at(plain, n) == b"\\x5a" * n
expected = bytearray(data)
codes["memset8"] = int(cu.cuMemsetD8(mapped + 1, 0x11, 5)[0])
expected[1:6] = b"\\x11" * 5
codes["memset16"] = int(cu.cuMemsetD16(mapped + 8, 0xBEEF, 4)[0])
expected[8:16] = (0xBEEF).to_bytes(2, "little") * 4
codes["memset32"] = int(cu.cuMemsetD32(through + 16, 0xDEADBEEF, 3)[0])
expected[16:28] = (0xDEADBEEF).to_bytes(4, "little") * 3
out["memsets"] = ctypes.string_at(mapped, n) == bytes(expected)
stream = ok(cu.cuStreamCreate(0))
codes["memset_async"] = int(cu.cuMemsetD32Async(plain, 0x01020304, n // 4, stream)[0])
codes["sync"] = int(cu.cuStreamSynchronize(stream)[0])
out["memset_async"] = ctypes.string_at(plain, n // 4 * 4) == (0x01020304).to_bytes(4, "little") * (n // 4)
codes["pinned_to_pinned"] = int(cu.cuMemcpyDtoD(plain, mapped, 4096)[0])
out["pinned_to_pinned"] = ctypes.string_at(plain, 4096) == bytes(expected[:4096])
codes["htod_to_pinned"] = int(cu.cuMemcpyHtoD(plain + 10, b"written by HtoD", 15)[0])
out["htod_to_pinned"] = ctypes.string_at(plain + 10, 15) == b"written by HtoD"
dtoh = bytearray(64)
codes["dtoh_from_pinned"] = int(cu.cuMemcpyDtoH(dtoh, mapped + 100, 64)[0])
out["dtoh_from_pinned"] = bytes(dtoh) == bytes(expected[100:164])
# the end of the window is the end: one byte past it is no one's memory
codes["past_end"] = int(cu.cuMemcpyDtoD(dev, mapped + n - 10, 11)[0])
# ordinary (pageable) memory is not device memory on a GPU without HMM
pageable = ctypes.create_string_buffer(4096)
codes["pageable"] = int(cu.cuMemsetD8(ctypes.addressof(pageable), 1, 16)[0])
ok(cu.cuMemFreeHost(plain))
codes["freed"] = int(cu.cuMemsetD8(plain, 1, 16)[0])
print(json.dumps(out))
"""

SHARED_HERE = {"same_address": True, "dtod_from_pinned": True, "dtod_to_pinned": True, "memsets": True,
               "memset_async": True, "pinned_to_pinned": True, "htod_to_pinned": True, "dtoh_from_pinned": True}


def test_page_locked_memory_as_a_device_pointer(vgpud):
    out = run_json(PINNED, vgpud.env)
    codes = out.pop("codes")
    refused = {"past_end": C["CUDA_ERROR_INVALID_VALUE"], "pageable": C["CUDA_ERROR_INVALID_VALUE"],
               "freed": C["CUDA_ERROR_INVALID_VALUE"]}
    if vgpud.through != "local":  # vgpud does not map the window: its address is no device memory there
        assert out["same_address"], out
        assert codes["dtod_from_pinned"] == codes["memset8"] == C["CUDA_ERROR_INVALID_VALUE"], codes
        assert all(codes[name] == code for name, code in refused.items()), codes
        return
    assert out == SHARED_HERE
    assert all(code == 0 for name, code in codes.items() if name not in refused), codes
    assert {name: codes[name] for name in refused} == refused


KERNEL = PRELUDE + """
import ctypes
from cuda.bindings import nvrtc
use(0)
source = b'extern "C" __global__ void touch(unsigned char *p, int n) { if (threadIdx.x < n) p[threadIdx.x] += 1; }'
program = ok(nvrtc.nvrtcCreateProgram(source, b"touch.cu", 0, [], []))
major = ok(cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 0))
minor = ok(cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, 0))
options = [f"--gpu-architecture=sm_{major}{minor}".encode()]
assert int(nvrtc.nvrtcCompileProgram(program, len(options), options)[0]) == 0
cubin = b" " * ok(nvrtc.nvrtcGetCUBINSize(program))
ok(nvrtc.nvrtcGetCUBIN(program, cubin))
kernel = ok(cu.cuModuleGetFunction(ok(cu.cuModuleLoadData(cubin)), b"touch"))
"""

LAUNCH = KERNEL + """
pinned = int(ok(cu.cuMemHostAlloc(256, cu.CU_MEMHOSTALLOC_DEVICEMAP)))
through = int(ok(cu.cuMemHostGetDevicePointer(pinned, 0)))
managed = cu.cuMemAllocManaged(256, cu.CUmemAttach_flags.CU_MEM_ATTACH_GLOBAL.value)
registered = ctypes.create_string_buffer(2 * 4096)
page = (ctypes.addressof(registered) + 4095) // 4096 * 4096
ok(cu.cuMemHostRegister(page, 4096, cu.CU_MEMHOSTREGISTER_DEVICEMAP))
pointers = [through, int(ok(cu.cuMemHostGetDevicePointer(page, 0)))]
pointers += [int(managed[1])] if int(managed[0]) == 0 else []
for pointer in pointers:
    values = (ctypes.c_uint64(pointer), ctypes.c_int(200))
    args = (ctypes.c_void_p * 2)(*[ctypes.addressof(v) for v in values])
    ok(cu.cuLaunchKernel(kernel, 1, 1, 1, 256, 1, 1, 0, 0, ctypes.addressof(args), 0))
ok(cu.cuCtxSynchronize())
print(json.dumps({"pid": os.getpid(), "pointers": pointers}))
"""


def test_launches_take_page_locked_and_managed_pointers(vgpud):
    """Kernels do not compute yet: a launch naming such memory (page-locked, registered, managed)
    is accepted and recorded."""
    out = run_json(LAUNCH, vgpud.env)
    assert len(out["pointers"]) == (3 if vgpud.through == "local" else 2)
    launches = [launch for launch in vgpud.control("launches")["launches"] if launch["kernel"] == "touch"]
    recorded = [int.from_bytes(bytes.fromhex(launch["args_hex"])[:8], "little") for launch in launches]
    # joined GPU hosts list their launches host by host: the order across them is not the callers'
    assert sorted(recorded[-len(out["pointers"]):]) == sorted(out["pointers"])


REGISTERED = PRELUDE + """
import ctypes, mmap
use(0)
rng = random.Random(5)
page = mmap.PAGESIZE
n = 3 * page
def aligned(size):
    raw = ctypes.create_string_buffer(size + page)
    keep.append(raw)
    return (ctypes.addressof(raw) + page - 1) // page * page
keep = []
base, frozen = aligned(n), aligned(page)
data = bytes(rng.getrandbits(8) for _ in range(n))
ctypes.memmove(base, data, n)
ctypes.memmove(frozen, data[:page], page)
out = {"codes": {}}
codes = out["codes"]
codes["bad_flags"] = int(cu.cuMemHostRegister(base, n, 0x100)[0])
ok(cu.cuMemHostRegister(base, n, cu.CU_MEMHOSTREGISTER_DEVICEMAP | cu.CU_MEMHOSTREGISTER_PORTABLE))
ok(cu.cuMemHostRegister(frozen, page, cu.CU_MEMHOSTREGISTER_DEVICEMAP | cu.CU_MEMHOSTREGISTER_READ_ONLY))
through = int(ok(cu.cuMemHostGetDevicePointer(base, 0)))
out["same_address"] = through == base
dev = ok(cu.cuMemAlloc(n))
ok(cu.cuMemsetD8(dev, 0x5A, n))
expected = bytearray(data)
stream = ok(cu.cuStreamCreate(0))
codes["dtod_from"] = int(cu.cuMemcpyDtoD(dev, through, n)[0])
back = bytearray(n)
ok(cu.cuMemcpyDtoH(back, dev, n))
out["dtod_from"] = bytes(back) == data
ok(cu.cuMemsetD8(dev, 0x5A, n))
codes["dtod_to"] = int(cu.cuMemcpyDtoD(base + page, dev, 100)[0])
expected[page:page + 100] = b"\\x5a" * 100
codes["memset8"] = int(cu.cuMemsetD8(base + 1, 0x11, 5)[0])
expected[1:6] = b"\\x11" * 5
codes["memset16"] = int(cu.cuMemsetD16(base + 8, 0xBEEF, 4)[0])
expected[8:16] = (0xBEEF).to_bytes(2, "little") * 4
codes["memset32"] = int(cu.cuMemsetD32(through + 16, 0xDEADBEEF, 3)[0])
expected[16:28] = (0xDEADBEEF).to_bytes(4, "little") * 3
codes["memset8_async"] = int(cu.cuMemsetD8Async(base + 200, 0x22, 7, stream)[0])
expected[200:207] = b"\\x22" * 7
codes["memset16_async"] = int(cu.cuMemsetD16Async(base + 300, 0x3344, 5, stream)[0])
expected[300:310] = (0x3344).to_bytes(2, "little") * 5
codes["memset32_async"] = int(cu.cuMemsetD32Async(base + 2 * page, 0x01020304, page // 4, stream)[0])
expected[2 * page:] = (0x01020304).to_bytes(4, "little") * (page // 4)
codes["htod_to"] = int(cu.cuMemcpyHtoD(base + 400, b"written by HtoD", 15)[0])
expected[400:415] = b"written by HtoD"
codes["htod_async_to"] = int(cu.cuMemcpyHtoDAsync(base + 500, b"async HtoD", 10, stream)[0])
expected[500:510] = b"async HtoD"
codes["dtod_async_to"] = int(cu.cuMemcpyDtoDAsync(base + 600, dev, 32, stream)[0])
expected[600:632] = b"\\x5a" * 32
codes["sync"] = int(cu.cuStreamSynchronize(stream)[0])
out["bytes"] = ctypes.string_at(base, n) == bytes(expected)
dtoh = bytearray(64)
codes["dtoh_from"] = int(cu.cuMemcpyDtoH(dtoh, base + 100, 64)[0])
dtoh_async = bytearray(64)
codes["dtoh_async_from"] = int(cu.cuMemcpyDtoHAsync(dtoh_async, base + 1000, 64, stream)[0])
codes["sync2"] = int(cu.cuStreamSynchronize(stream)[0])
out["dtoh_from"] = bytes(dtoh) == bytes(expected[100:164]) and bytes(dtoh_async) == bytes(expected[1000:1064])
codes["past_end"] = int(cu.cuMemcpyDtoD(dev, base + n - 10, 11)[0])
# read-only: the device reads it, writes to it are refused
codes["readonly_source"] = int(cu.cuMemcpyDtoD(dev, frozen, page)[0])
ok(cu.cuMemcpyDtoH(back, dev, page))
out["readonly_source"] = bytes(back[:page]) == data[:page]
codes["readonly_memset"] = int(cu.cuMemsetD8(frozen, 0, 16)[0])
codes["readonly_dtod"] = int(cu.cuMemcpyDtoD(frozen, dev, 16)[0])
codes["readonly_htod"] = int(cu.cuMemcpyHtoD(frozen, b"x" * 16, 16)[0])
out["readonly_kept"] = ctypes.string_at(frozen, page) == data[:page]
# unregistered: forgotten on both sides
ok(cu.cuMemHostUnregister(base))
ok(cu.cuMemHostUnregister(frozen))
before = ctypes.string_at(base, 16)
codes["unregistered_memset"] = int(cu.cuMemsetD8(base, 0, 16)[0])
codes["unregistered_dtod"] = int(cu.cuMemcpyDtoD(dev, base, 16)[0])
codes["unregistered_pointer"] = int(cu.cuMemHostGetDevicePointer(base, 0)[0])
out["untouched_after"] = ctypes.string_at(base, 16) == before
print(json.dumps(out))
"""


def test_registered_memory_as_a_device_pointer(vgpud):
    """cuMemHostRegister'd memory is device-side memory of its process where vgpud reaches the
    client's memory (read and written in place); through a relay and on the cuda backend it is
    host memory only, refused on the device side as page-locked memory is there."""
    if vgpud.through == "cuda-backend":
        pytest.skip("the cuda backend's real GPU cannot reach a client's registered memory")
    out = run_json(REGISTERED, vgpud.env)
    codes = out.pop("codes")
    invalid = C["CUDA_ERROR_INVALID_VALUE"]
    refused = {"bad_flags", "past_end", "readonly_memset", "readonly_dtod", "readonly_htod",
               "unregistered_memset", "unregistered_dtod", "unregistered_pointer"}
    synchronised = {"sync", "sync2"}  # where asynchronous refusals may be reported instead
    assert out["same_address"] and out["readonly_kept"] and out["untouched_after"], out
    assert all(codes[name] == invalid for name in refused), codes
    device_side = set(codes) - refused - synchronised
    if vgpud.through != "local":  # vgpud cannot reach the client's memory: not device memory there
        assert all(codes[name] == invalid for name in device_side if "async" not in name), codes
        assert all(codes[name] in (0, invalid) for name in codes), codes
        return
    assert all(codes[name] == 0 for name in synchronised), codes
    assert all(codes[name] == 0 for name in device_side), codes
    assert out == {"same_address": True, "dtod_from": True, "bytes": True, "dtoh_from": True,
                   "readonly_source": True, "readonly_kept": True,
                   "untouched_after": True}


REGISTERED_HOLDER = PRELUDE + """
import ctypes, mmap, sys
use(0)
page = mmap.PAGESIZE
raw = ctypes.create_string_buffer(2 * page)
base = (ctypes.addressof(raw) + page - 1) // page * page
ctypes.memmove(base, b"secret" * 10, 60)
ok(cu.cuMemHostRegister(base, page, cu.CU_MEMHOSTREGISTER_DEVICEMAP))
print(json.dumps({"registered": base}), flush=True)
sys.stdin.readline()
print(json.dumps({"kept": ctypes.string_at(base, 60) == b"secret" * 10}), flush=True)
"""


def test_registered_memory_is_its_process_own(vgpud):
    vgpud.local_only("a GPU host does not reach the client's memory")
    holder = subprocess.Popen([sys.executable, "-c", REGISTERED_HOLDER], env=vgpud.env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        held = json.loads(holder.stdout.readline())["registered"]
        thief = run_json(PRELUDE + f"""
use(0)
stolen = bytearray(60)
print(json.dumps([int(cu.cuMemcpyDtoH(stolen, {held}, 60)[0]), int(cu.cuMemsetD8({held}, 0, 8)[0]),
                  bytes(stolen) == bytes(60)]))
""", vgpud.env)
        invalid = C["CUDA_ERROR_INVALID_VALUE"]
        assert thief == [invalid, invalid, True]
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert json.loads(holder.stdout.readline()) == {"kept": True}
    finally:
        holder.kill()
        holder.wait()

MANAGED = PRELUDE + """
import ctypes
ctx = use(1)
A, R = cu.CUpointer_attribute, cu.CUmem_range_attribute
GLOBAL = cu.CUmemAttach_flags.CU_MEM_ATTACH_GLOBAL.value
out, codes = {}, {}
def location(device):
    where = cu.CUmemLocation()
    where.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_HOST if device < 0 else cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    where.id = max(device, 0)
    return where
def ints(value):
    # a range attribute as cuda-python gives it (an int, a list, or raw bytes)
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    raw = bytes(value)
    return [int.from_bytes(raw[i:i + 4], "little", signed=True) for i in range(0, len(raw), 4)]
attribute = lambda kind: ints(ok(cu.cuMemRangeGetAttribute(4, kind, m, n_bytes)))[0]
device_attributes = cu.CUdevice_attribute
out["device"] = [ok(cu.cuDeviceGetAttribute(getattr(device_attributes, "CU_DEVICE_ATTRIBUTE_" + name), 1))
                 for name in ("MANAGED_MEMORY", "CONCURRENT_MANAGED_ACCESS", "PAGEABLE_MEMORY_ACCESS", "CAN_MAP_HOST_MEMORY")]
free0, total = ok(cu.cuMemGetInfo())
n_bytes = (3 << 20) + 4096
result = cu.cuMemAllocManaged(n_bytes, GLOBAL)
codes["alloc"] = int(result[0])
if codes["alloc"]:
    print(json.dumps({"codes": codes, "device": out["device"]}))
    raise SystemExit
m = int(result[1])
out["alloc_takes_nothing"] = ok(cu.cuMemGetInfo())[0] == free0
rng = random.Random(3)
data = bytes(rng.getrandbits(8) for _ in range(n_bytes))
ctypes.memmove(m, data, n_bytes)  # the host writes it directly
dev = ok(cu.cuMemAlloc(n_bytes))
free0 = ok(cu.cuMemGetInfo())[0]  # with the device memory held
ok(cu.cuMemcpyDtoD(dev, m, n_bytes))
back = bytearray(n_bytes)
ok(cu.cuMemcpyDtoH(back, dev, n_bytes))
out["dtod"] = bytes(back) == data
again = bytearray(n_bytes)
ok(cu.cuMemcpyDtoH(again, m, n_bytes))
out["dtoh"] = bytes(again) == data
ok(cu.cuMemsetD32(m + 4096, 0xCAFEBABE, 1000))
ok(cu.cuMemsetD8(m + n_bytes - 3, 0x77, 3))
ok(cu.cuCtxSynchronize())
expected = bytearray(data)
expected[4096:8096] = (0xCAFEBABE).to_bytes(4, "little") * 1000
expected[-3:] = b"\\x77" * 3
out["memset_seen_by_host"] = ctypes.string_at(m, n_bytes) == bytes(expected)
ok(cu.cuMemcpyHtoD(dev, b"from device memory", 18))
ok(cu.cuMemcpyDtoD(m + 100, dev, 18))
out["dtod_into_managed"] = ctypes.string_at(m + 100, 18) == b"from device memory"
pointer = lambda kind, at=m + 100: int(ok(cu.cuPointerGetAttribute(kind, at)))
out["pointer"] = [pointer(A.CU_POINTER_ATTRIBUTE_IS_MANAGED), pointer(A.CU_POINTER_ATTRIBUTE_MEMORY_TYPE),
                  pointer(A.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL), pointer(A.CU_POINTER_ATTRIBUTE_RANGE_START_ADDR) == m,
                  pointer(A.CU_POINTER_ATTRIBUTE_RANGE_SIZE), pointer(A.CU_POINTER_ATTRIBUTE_HOST_POINTER) == m + 100,
                  pointer(A.CU_POINTER_ATTRIBUTE_CONTEXT) == int(ctx)]
base, size = ok(cu.cuMemGetAddressRange(m + 5))
out["range"] = [int(base) == m, size]
stream = ok(cu.cuStreamCreate(0))
ok(cu.cuMemPrefetchAsync(m, n_bytes, location(1), 0, stream))
ok(cu.cuStreamSynchronize(stream))
out["resident"] = free0 - ok(cu.cuMemGetInfo())[0]
out["prefetched_to"] = attribute(R.CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION)
ok(cu.cuMemPrefetchAsync(m, n_bytes, location(-1), 0, stream))
ok(cu.cuStreamSynchronize(stream))
out["back_on_host"] = ok(cu.cuMemGetInfo())[0] == free0
out["prefetched_to_cpu"] = attribute(R.CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION)
out["still_exact"] = ctypes.string_at(m, n_bytes) == bytes(expected[:100]) + b"from device memory" + bytes(expected[118:])
ok(cu.cuMemAdvise(m, n_bytes, cu.CUmem_advise.CU_MEM_ADVISE_SET_READ_MOSTLY, location(1)))
ok(cu.cuMemAdvise(m, n_bytes, cu.CUmem_advise.CU_MEM_ADVISE_SET_PREFERRED_LOCATION, location(1)))
ok(cu.cuMemAdvise(m, n_bytes // 2, cu.CUmem_advise.CU_MEM_ADVISE_SET_ACCESSED_BY, location(0)))
out["read_mostly"] = attribute(R.CU_MEM_RANGE_ATTRIBUTE_READ_MOSTLY)
out["preferred"] = attribute(R.CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION)
out["accessed_by"] = [ints(ok(cu.cuMemRangeGetAttribute(8, R.CU_MEM_RANGE_ATTRIBUTE_ACCESSED_BY, m, size)))
                      for size in (n_bytes // 2, n_bytes)]
ok(cu.cuMemAdvise(m, 4096, cu.CUmem_advise.CU_MEM_ADVISE_UNSET_READ_MOSTLY, location(1)))
out["read_mostly_partly"] = attribute(R.CU_MEM_RANGE_ATTRIBUTE_READ_MOSTLY)
plural = ok(cu.cuMemRangeGetAttributes([4, 4], [R.CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION,
                                                R.CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION], 2, m, n_bytes))
out["plural"] = [ints(value)[0] for value in plural]
codes["attach"] = int(cu.cuStreamAttachMemAsync(stream, m, 0, cu.CUmemAttach_flags.CU_MEM_ATTACH_HOST.value)[0])
codes["prefetch_device_memory"] = int(cu.cuMemPrefetchAsync(dev, 4096, location(1), 0, stream)[0])
codes["advise_device_memory"] = int(cu.cuMemAdvise(dev, 4096, cu.CUmem_advise.CU_MEM_ADVISE_SET_READ_MOSTLY, location(1))[0])
codes["prefetch_past_end"] = int(cu.cuMemPrefetchAsync(m, n_bytes + 1, location(1), 0, stream)[0])
codes["prefetch_bad_device"] = int(cu.cuMemPrefetchAsync(m, 4096, location(99), 0, stream)[0])
codes["bad_flags"] = int(cu.cuMemAllocManaged(4096, 0)[0])
codes["zero_size"] = int(cu.cuMemAllocManaged(0, GLOBAL)[0])
codes["free_inside"] = int(cu.cuMemFree(m + 4096)[0])
ok(cu.cuMemPrefetchAsync(m, n_bytes, location(1), 0, stream))
ok(cu.cuStreamSynchronize(stream))
codes["free"] = int(cu.cuMemFree(m)[0])
out["freed_gives_back"] = ok(cu.cuMemGetInfo())[0] == free0
codes["after_free"] = int(cu.cuPointerGetAttribute(A.CU_POINTER_ATTRIBUTE_IS_MANAGED, m)[0])
codes["double_free"] = int(cu.cuMemFree(m)[0])
print(json.dumps({"codes": codes, **out}))
"""


def test_managed_memory(vgpud):
    out = run_json(MANAGED, vgpud.env)
    codes = out.pop("codes")
    assert out.pop("device") == [1, 1, 0, 1], "managed memory, concurrent access, no pageable access"
    if vgpud.through != "local":  # no memory shared with vgpud: refused with a clear code
        assert codes == {"alloc": C["CUDA_ERROR_NOT_SUPPORTED"]}
        return
    invalid = C["CUDA_ERROR_INVALID_VALUE"]
    assert codes == {"alloc": 0, "attach": 0, "prefetch_device_memory": invalid, "advise_device_memory": invalid,
                     "prefetch_past_end": invalid, "prefetch_bad_device": C["CUDA_ERROR_INVALID_DEVICE"],
                     "bad_flags": invalid, "zero_size": invalid, "free_inside": invalid, "free": 0,
                     "after_free": invalid, "double_free": invalid}
    n_bytes = (3 << 20) + 4096
    assert out["alloc_takes_nothing"] and out["dtod"] and out["dtoh"] and out["memset_seen_by_host"]
    assert out["dtod_into_managed"] and out["still_exact"] and out["freed_gives_back"]
    assert out["pointer"] == [1, C["CU_MEMORYTYPE_DEVICE"], 1, True, n_bytes, True, True]
    assert out["range"] == [True, n_bytes]
    assert out["resident"] == (3 << 20) + (64 << 10), "prefetched pages count against the device"
    assert out["prefetched_to"] == 1 and out["back_on_host"] and out["prefetched_to_cpu"] == -1
    assert out["read_mostly"] == 1 and out["preferred"] == 1 and out["read_mostly_partly"] == 0
    assert out["accessed_by"] == [[0, -2], [-2, -2]]
    assert out["plural"] == [1, -1]


HOLDER = PRELUDE + """
import ctypes, sys
use(1)
loc = cu.CUmemLocation()
loc.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
loc.id = 1
m = int(ok(cu.cuMemAllocManaged(4 << 20, cu.CUmemAttach_flags.CU_MEM_ATTACH_GLOBAL.value)))
ctypes.memmove(m, b"secret" * 10, 60)
ok(cu.cuMemPrefetchAsync(m, 4 << 20, loc, 0, 0))
ok(cu.cuCtxSynchronize())
pinned = int(ok(cu.cuMemAllocHost(4096)))
print(json.dumps({"managed": m, "pinned": pinned}), flush=True)
sys.stdin.read()
"""


def test_windows_are_their_process_own_and_go_with_it(vgpud):
    vgpud.local_only("a GPU host does not map the client's memory")
    if vgpud.through == "cuda-backend":
        return  # managed memory is refused there (test_managed_memory)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], env=vgpud.env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        held = json.loads(holder.stdout.readline())
        assert vgpud.control("status")["gpus"][1]["memory_used"] == 4 << 20
        thief = run_json(PRELUDE + f"""
use(1)
stolen = bytearray(60)
print(json.dumps([int(cu.cuMemcpyDtoH(stolen, {held['managed']}, 60)[0]), int(cu.cuMemsetD8({held['pinned']}, 0, 8)[0]),
                  int(cu.cuMemFree({held['managed']})[0]),
                  int(cu.cuPointerGetAttribute(cu.CUpointer_attribute.CU_POINTER_ATTRIBUTE_IS_MANAGED, {held['managed']})[0]),
                  bytes(stolen) == bytes(60)]))
""", vgpud.env)
        invalid = C["CUDA_ERROR_INVALID_VALUE"]
        assert thief == [invalid, invalid, invalid, invalid, True]
    finally:
        holder.kill()
        holder.wait()
    wait_for(lambda: vgpud.control("status")["gpus"][1]["memory_used"] == 0, timeout=2.0)
