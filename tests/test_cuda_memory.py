"""Device memory through the driver API (cuda-python): exact contents kept in vgpud,
allocation limits, errors for bad pointers, isolation between processes, NVML's view."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import CUDA_PYTHON, run_json, run_python, wait_for
from vgpu.api.manifest import load

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)
C = load("cuda").constants

PRELUDE = CUDA_PYTHON + """
ok(cu.cuInit(0))
def use(ordinal):
    ctx = ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(ordinal))))
    ok(cu.cuCtxSetCurrent(ctx))
    return ctx
"""

ROUND_TRIPS = PRELUDE + """
use(2)
rng = random.Random(7)
out = {}
free0, total = ok(cu.cuMemGetInfo())
out["total"] = total
sizes = [1, 511, 4096, 65537, 3 << 20]
ptrs = [ok(cu.cuMemAlloc(n)) for n in sizes]
out["aligned"] = all(int(p) % 512 == 0 for p in ptrs)
out["distinct"] = len({int(p) for p in ptrs}) == len(ptrs)
free1, _ = ok(cu.cuMemGetInfo())
out["used"] = free0 - free1
checks = []
for p, n in zip(ptrs, sizes):
    data = bytes(rng.getrandbits(8) for _ in range(n))
    ok(cu.cuMemcpyHtoD(p, data, n))
    back = bytearray(n)
    ok(cu.cuMemcpyDtoH(back, p, n))
    checks.append(bytes(back) == data)
out["round_trips"] = checks
# device to device, and into the middle of an allocation
big, small = ptrs[4], ptrs[2]
ok(cu.cuMemcpyDtoD(int(big) + 1000, small, 4096))
a, b = bytearray(4096), bytearray(4096)
ok(cu.cuMemcpyDtoH(a, int(big) + 1000, 4096)); ok(cu.cuMemcpyDtoH(b, small, 4096))
out["dtod"] = a == b
# memsets of 8, 16 and 32 bits
ok(cu.cuMemsetD8(big, 0xAB, 10)); ok(cu.cuMemsetD16(int(big) + 10, 0x1234, 3)); ok(cu.cuMemsetD32(int(big) + 16, 0xDEADBEEF, 2))
head = bytearray(24); ok(cu.cuMemcpyDtoH(head, big, 24))
out["memset"] = head.hex()
# unwritten memory reads as zeros
fresh = ok(cu.cuMemAlloc(1 << 20)); zeros = bytearray(1 << 20); ok(cu.cuMemcpyDtoH(zeros, fresh, 1 << 20))
out["zeros"] = not any(zeros)
base, size = ok(cu.cuMemGetAddressRange(int(big) + 5))
out["range"] = [int(base) == int(big), size == 3 << 20]
# errors a real driver gives
out["past_end"] = int(cu.cuMemcpyHtoD(int(small) + 4000, bytes(200), 200)[0])
out["wild"] = int(cu.cuMemcpyDtoH(bytearray(8), 0x1234, 8)[0])
out["zero_alloc"] = int(cu.cuMemAlloc(0)[0])
out["oom"] = int(cu.cuMemAlloc(total)[0])
out["double_free"] = [int(cu.cuMemFree(fresh)[0]), int(cu.cuMemFree(fresh)[0])]
for p in ptrs:
    ok(cu.cuMemFree(p))
out["freed"] = ok(cu.cuMemGetInfo())[0] == free0
print(json.dumps(out))
"""


def test_round_trips_and_errors(vgpud):
    out = run_json(ROUND_TRIPS, vgpud.env)
    assert out["total"] == vgpud.gpus[2].profile.cuda_total_mib << 20
    assert out["aligned"] and out["distinct"] and out["used"] >= sum([1, 511, 4096, 65537, 3 << 20])
    assert out["round_trips"] == [True] * 5 and out["dtod"] and out["zeros"] and out["range"] == [True, True]
    assert out["memset"] == "ab" * 10 + "3412" * 3 + "efbeadde" * 2 + "00" * 0
    assert out["past_end"] == C["CUDA_ERROR_INVALID_VALUE"] and out["wild"] == C["CUDA_ERROR_INVALID_VALUE"]
    assert out["zero_alloc"] == C["CUDA_ERROR_INVALID_VALUE"] and out["oom"] == C["CUDA_ERROR_OUT_OF_MEMORY"]
    assert out["double_free"] == [0, C["CUDA_ERROR_INVALID_VALUE"]] and out["freed"]


HOLDER = PRELUDE + """
import sys, time
use(1)
p = ok(cu.cuMemAlloc(256 << 20))
ok(cu.cuMemcpyHtoD(p, b"secret" * 10, 60))
print(json.dumps({"pid": os.getpid(), "ptr": int(p)}), flush=True)
time.sleep(60)
"""


def test_isolation_and_nvml_view(vgpud):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], env=vgpud.env, stdout=subprocess.PIPE, text=True)
    try:
        held = json.loads(holder.stdout.readline())
        thief = run_python(PRELUDE + f"""
use(1)
stolen = bytearray(60)
print(json.dumps([int(cu.cuMemcpyDtoH(stolen, {held['ptr']}, 60)[0]), int(cu.cuMemFree({held['ptr']})[0]),
                  int(cu.cuMemsetD8({held['ptr']}, 0, 60)[0]), bytes(stolen) == bytes(60)]))
""", vgpud.env)
        assert json.loads(thief.stdout) == [C["CUDA_ERROR_INVALID_VALUE"]] * 3 + [True], thief.stderr
        nvml = run_python("import json, pynvml as n\nn.nvmlInit()\nh = n.nvmlDeviceGetHandleByIndex(1)\n"
                          "print(json.dumps([[p.pid, p.usedGpuMemory] for p in n.nvmlDeviceGetComputeRunningProcesses(h)]))",
                          vgpud.env)
        assert json.loads(nvml.stdout) == [[held["pid"], 256 << 20]]
    finally:
        holder.kill()
        holder.wait()
    wait_for(lambda: vgpud.control("status")["gpus"][1]["memory_used"] == 0, timeout=1.0)


PINNED = PRELUDE + """
import ctypes, sys
from vgpu.wire.client import Client
use(0)
size = 40 << 20
host = ok(cu.cuMemAllocHost(size))
back = ok(cu.cuMemAllocHost(size))
pattern = bytes(range(251)) * (size // 251 + 1)
ctypes.memmove(host, pattern, size)
dev = ok(cu.cuMemAlloc(size))
ok(cu.cuMemcpyHtoD(dev, host, size))
ok(cu.cuMemcpyDtoH(back, dev, size))
same = ctypes.string_at(back, size) == pattern[:size]
with Client(sys.argv[1]) as c:
    windows = next(s["shared_windows"] for s in c.control("status")["sessions"] if s["pid"] == os.getpid())
ok(cu.cuMemFreeHost(host)); ok(cu.cuMemFreeHost(back))
with Client(sys.argv[1]) as c:
    after = next(s["shared_windows"] for s in c.control("status")["sessions"] if s["pid"] == os.getpid())
print(json.dumps([same, windows, after]))
"""


def test_page_locked_memory_is_shared_with_vgpud(vgpud):
    """cuMemAllocHost memory is a file vgpud maps: transfers from and to it skip the socket."""
    vgpud.local_only("page-locked memory cannot be shared with a vgpud on another host")
    result = subprocess.run([sys.executable, "-c", PINNED, str(vgpud.socket)], env=vgpud.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [True, 2, 0]


THREADS_AND_FORK = PRELUDE + """
import threading
def worker(index, results):
    use(index % 2)  # the current context is per thread
    p = ok(cu.cuMemAlloc(4096))
    data = bytes([index]) * 4096
    ok(cu.cuMemcpyHtoD(p, data, 4096))
    back = bytearray(4096)
    ok(cu.cuMemcpyDtoH(back, p, 4096))
    results[index] = bytes(back) == data and int(ok(cu.cuCtxGetDevice())) == index % 2
    ok(cu.cuMemFree(p))
results = {}
threads = [threading.Thread(target=worker, args=(i, results)) for i in range(12)]
[t.start() for t in threads]; [t.join() for t in threads]
use(0)
p = ok(cu.cuMemAlloc(64))
ok(cu.cuMemcpyHtoD(p, b"parent" * 10, 60))
pid = os.fork()
if pid == 0:
    # a child is a new process: the parent's memory is not its own
    code = int(cu.cuMemcpyDtoH(bytearray(60), p, 60)[0])
    os._exit(0 if code == 1 else 1)
_, status = os.waitpid(pid, 0)
back = bytearray(60)
ok(cu.cuMemcpyDtoH(back, p, 60))
print(json.dumps([sorted(results.items()), os.waitstatus_to_exitcode(status), bytes(back) == b"parent" * 10]))
"""


def test_threads_and_fork(vgpud):
    threads, child, parent_intact = run_json(THREADS_AND_FORK, vgpud.env)
    assert threads == [[i, True] for i in range(12)]
    assert child == 0 and parent_intact


DYING = PRELUDE + """
import sys, time
use(0)
p = ok(cu.cuMemAlloc(1024))
print("ready", flush=True)
sys.stdin.readline()
start = time.monotonic()
code = int(cu.cuMemcpyHtoD(p, bytes(1024), 1024)[0])
print(json.dumps([code, time.monotonic() - start, int(cu.cuCtxSynchronize()[0])]))
"""


def test_vgpud_dying_mid_session(vgpud_factory):
    daemon = vgpud_factory("h100")
    child = subprocess.Popen([sys.executable, "-c", DYING], env=daemon.env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    daemon.process.kill()
    daemon.process.wait()
    out, err = child.communicate("go\n", timeout=30)
    code, seconds, after = json.loads(out)
    assert code == after == C["CUDA_ERROR_DEVICE_UNAVAILABLE"] and seconds < 1.0
    assert "lost vgpud" in err


ASYNC = PRELUDE + """
import sys
from vgpu.wire.client import Client
def posted():
    with Client(sys.argv[1]) as c:
        return next(s["posted"] for s in c.control("status")["sessions"] if s["pid"] == os.getpid())
use(0)
stream = ok(cu.cuStreamCreate(0))
p = ok(cu.cuMemAlloc(1 << 20))
before = posted()
for i in range(100):
    ok(cu.cuMemsetD32Async(p, i, 1 << 18, stream))
ok(cu.cuStreamSynchronize(stream))
back = bytearray(4)
ok(cu.cuMemcpyDtoH(back, int(p) + 4096, 4))
sent = posted() - before
bad = int(cu.cuMemsetD8Async(0x10, 1, 16, stream)[0])      # invalid: accepted, reported later
first_sync = int(cu.cuStreamSynchronize(stream)[0])
second_sync = int(cu.cuStreamSynchronize(stream)[0])
print(json.dumps([sent, int.from_bytes(back, "little"), bad, first_sync, second_sync]))
"""


def test_queued_work_goes_without_waiting_and_reports_errors_at_the_next_sync(vgpud):
    result = subprocess.run([sys.executable, "-c", ASYNC, str(vgpud.socket)], env=vgpud.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    sent, last_value, bad, first_sync, second_sync = json.loads(result.stdout)
    assert sent == 100, "each memset was sent without a round trip"
    assert last_value == 99, "in order: the last memset wins"
    assert bad == 0 and first_sync == C["CUDA_ERROR_INVALID_VALUE"] and second_sync == 0


POINTERS = PRELUDE + """
ctx = use(1)
A = cu.CUpointer_attribute
p = ok(cu.cuMemAlloc(10000))
inside = int(p) + 100
out = {
    "type": int(ok(cu.cuPointerGetAttribute(A.CU_POINTER_ATTRIBUTE_MEMORY_TYPE, inside))),
    "ordinal": int(ok(cu.cuPointerGetAttribute(A.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, inside))),
    "start": int(ok(cu.cuPointerGetAttribute(A.CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, inside))) == int(p),
    "size": int(ok(cu.cuPointerGetAttribute(A.CU_POINTER_ATTRIBUTE_RANGE_SIZE, inside))),
    "context": int(ok(cu.cuPointerGetAttribute(A.CU_POINTER_ATTRIBUTE_CONTEXT, inside))) == int(ctx),
    "managed": bool(ok(cu.cuPointerGetAttribute(A.CU_POINTER_ATTRIBUTE_IS_MANAGED, inside))),
    "host_of_device": int(cu.cuPointerGetAttribute(A.CU_POINTER_ATTRIBUTE_HOST_POINTER, inside)[0]),
    "wild": int(cu.cuPointerGetAttribute(A.CU_POINTER_ATTRIBUTE_MEMORY_TYPE, 0x1000)[0]),
}
h = ok(cu.cuMemAllocHost(4096))
out["pinned_type"] = int(ok(cu.cuPointerGetAttribute(A.CU_POINTER_ATTRIBUTE_MEMORY_TYPE, h)))
print(json.dumps(out))
"""


def test_pointer_attributes(vgpud):
    out = run_json(POINTERS, vgpud.env)
    assert out["type"] == C["CU_MEMORYTYPE_DEVICE"] and out["ordinal"] == 1
    assert out["start"] and out["size"] == 10000 and out["context"] and out["managed"] is False
    assert out["host_of_device"] == out["wild"] == C["CUDA_ERROR_INVALID_VALUE"]
    assert out["pinned_type"] == C["CU_MEMORYTYPE_HOST"]


DIRECT = PRELUDE + """
import sys
from vgpu.wire.client import Client
use(0)
size = 3 << 20
data = bytes(random.Random(5).getrandbits(8) for _ in range(4096)) * (size // 4096)
dev = ok(cu.cuMemAlloc(size))
ok(cu.cuMemcpyHtoD(dev, data, size))
back = bytearray(size)
ok(cu.cuMemcpyDtoH(back, dev, size))
with Client(sys.argv[1]) as c:
    direct = next(s["direct_memory"] for s in c.control("status")["sessions"] if s["pid"] == os.getpid())
print(json.dumps([bytes(back) == data, direct]))
"""


def test_ordinary_memory_is_reached_directly(vgpud):
    """vgpud proves at the handshake that it can read the process's memory, then copies
    large ordinary buffers in place instead of receiving them in frames."""
    vgpud.local_only("a vgpud on another host cannot reach the client's memory; data travels in frames")
    result = subprocess.run([sys.executable, "-c", DIRECT, str(vgpud.socket)], env=vgpud.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [True, True]
    off = subprocess.run([sys.executable, "-c", DIRECT, str(vgpud.socket)],
                         env={**vgpud.env, "VGPU_DIRECT_MEMORY": "0"}, capture_output=True, text=True, timeout=60)
    assert json.loads(off.stdout) == [True, False]


def test_pageable_buffers_may_be_reused_when_an_async_copy_returns(vgpud):
    """A copy from or to ordinary (pageable) memory is done with the host buffer when the call
    returns, as with the real driver, though it is asynchronous: the caller may overwrite the
    source at once, and read the destination at once (vgpud reaches such buffers directly, so
    these calls may not wait in the library's batch of queued work)."""
    code = """
import json
from cuda.bindings import driver as cu
cu.cuInit(0)
cu.cuCtxSetCurrent(cu.cuDevicePrimaryCtxRetain(cu.cuDeviceGet(0)[1])[1])
n = 4 << 20
stream = cu.cuStreamCreate(0)[1]
dptr = cu.cuMemAlloc(n)[1]
source = bytearray(b"A" * n)
cu.cuMemcpyHtoDAsync(dptr, source, n, stream)
source[:] = b"B" * n  # reused at once
back = bytearray(n)
cu.cuMemcpyDtoHAsync(back, dptr, n, stream)
first = bytes(back[:1])  # read at once
cu.cuStreamSynchronize(stream)
print(json.dumps({"first": first.decode(), "all": back == bytearray(b"A" * n)}))
"""
    assert run_json(code, vgpud.env) == {"first": "A", "all": True}


LARGE_COPIES = PRELUDE + """
use(0)
size = (40 << 20) + 12345  # three pieces of a bulk transfer, the last one short
data = bytearray(os.urandom(1 << 20) * 41)[:size]
dev = ok(cu.cuMemAlloc(size))
ok(cu.cuMemcpyHtoD(dev, data, size))
back = bytearray(size)
ok(cu.cuMemcpyDtoH(back, dev, size))
whole = back == data
# an asynchronous copy from ordinary memory has taken its bytes when it returns
stream = ok(cu.cuStreamCreate(0))
source = bytearray(b"\\x5a" * (8 << 20))
ok(cu.cuMemcpyHtoDAsync(dev, source, len(source), stream))
source[:] = bytes(len(source))
ok(cu.cuStreamSynchronize(stream))
first = bytearray(len(source))
ok(cu.cuMemcpyDtoH(first, dev, len(first)))
# a large read that fails leaves the rest of the process working
bad = int(cu.cuMemcpyDtoH(bytearray(1 << 20), 0x1234, 1 << 20)[0])
tail = bytearray(4096)
ok(cu.cuMemcpyDtoH(tail, int(dev) + size - 4096, 4096))
print(json.dumps([whole, first == b"\\x5a" * len(first), bad, tail == data[-4096:]]))
"""


def test_large_copies_travel_whole_from_where_the_caller_keeps_them(vgpud):
    """Copies of many MiB go in pieces (through a relay, straight from and into the caller's
    buffers); an asynchronous copy from pageable memory has its bytes once it returns."""
    out = run_json(LARGE_COPIES, vgpud.env)
    assert out == [True, True, C["CUDA_ERROR_INVALID_VALUE"], True]


ZERO_BYTES_IN_A_MAPPING = PRELUDE + """
use(0)
prop = cu.CUmemAllocationProp()
prop.type = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
prop.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
prop.location.id = 0
size = ok(cu.cuMemGetAllocationGranularity(prop, cu.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_MINIMUM))
handle = ok(cu.cuMemCreate(size, prop, 0))
base = ok(cu.cuMemAddressReserve(size, 0, 0, 0))
ok(cu.cuMemMap(base, size, 0, handle, 0))
access = cu.CUmemAccessDesc()
access.location = prop.location
access.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
ok(cu.cuMemSetAccess(base, size, [access], 1))
stream = ok(cu.cuStreamCreate(0))
inside = int(base) + 0x949d54 % size
ok(cu.cuMemcpyHtoDAsync(inside, b"", 0, stream))  # XLA's autotuner copies 0 bytes into its VMM pool
ok(cu.cuMemcpyDtoHAsync(bytearray(1), inside, 0, stream))
ok(cu.cuMemsetD8Async(inside, 7, 0, stream))
ok(cu.cuMemcpyHtoDAsync(inside, b"vgpu", 4, stream))
back = bytearray(4)
ok(cu.cuMemcpyDtoHAsync(back, inside, 4, stream))
ok(cu.cuStreamSynchronize(stream))
print(json.dumps({"back": back.decode()}))
"""


def test_zero_byte_copies_into_a_mapping(vgpud):
    assert run_json(ZERO_BYTES_IN_A_MAPPING, vgpud.env) == {"back": "vgpu"}


CLIENT_COPIES = PRELUDE + """
use(0)
n = 8 << 20
driver = ctypes.CDLL("libcuda.so.1")
def legacy_alloc(size):  # the v1 entry point: first fit below 4 GiB, so a freed address comes back
    pointer = ctypes.c_uint32()
    if driver.cuMemAlloc(ctypes.byref(pointer), ctypes.c_size_t(size)) == 0:
        return pointer.value
    return int(ok(cu.cuMemAlloc(size)))  # (the cuda backend has no such window)
def mapped():  # the memfds of vgpud's device memory this process maps, to copy through them
    return sum(1 for line in open("/proc/self/maps") if "vgpu-device-memory" in line)
out = {"before": mapped()}
a = legacy_alloc(n)
data = bytearray(os.urandom(n))
ok(cu.cuMemcpyHtoD(a, data, n))
back = bytearray(n)
ok(cu.cuMemcpyDtoH(back, a, n))
out["round_trip"] = back == data
out["after"] = mapped()
part = bytearray(n // 2)
ok(cu.cuMemcpyDtoH(part, int(a) + 4096, n // 2))
out["part"] = part == data[4096:4096 + n // 2]
out["past_end"] = code(cu.cuMemcpyDtoH(bytearray(n), int(a) + 4096, n))
# freed, and a new allocation at the same address: what the first one held is not read back
ok(cu.cuMemFree(a))
b = legacy_alloc(n)
out["same_address"] = b == a
fresh = bytearray(os.urandom(n))
ok(cu.cuMemcpyHtoD(b, fresh, n))
back = bytearray(n)
ok(cu.cuMemcpyDtoH(back, b, n))
out["reused"] = back == fresh
# vgpud's own copy on the device, then the process's: in order
c = ok(cu.cuMemAlloc(n))
ok(cu.cuMemcpyDtoD(c, b, n))
back = bytearray(n)
ok(cu.cuMemcpyDtoH(back, c, n))
out["after_device_copy"] = back == fresh
ok(cu.cuMemsetD8(c, 0x5A, n))
ok(cu.cuMemcpyDtoH(back, c, n))
out["after_memset"] = back == b"\\x5a" * n
# asynchronous copies with pageable memory are done with the buffer when they return
stream = ok(cu.cuStreamCreate(0))
source = bytearray(os.urandom(n))
kept = bytes(source)
ok(cu.cuMemcpyHtoDAsync(c, source, n, stream))
source[:] = bytes(n)
ok(cu.cuMemcpyDtoHAsync(back, c, n, stream))
out["async"] = back == kept
print(json.dumps(out))
"""


def test_large_synchronous_copies_are_made_by_the_process_itself(vgpud):
    """A local simulator lets the library map the memory of the allocations it copies to and
    from: a synchronous copy is then one memcpy in the process, after vgpud has ordered it
    (here after a device-to-device copy and a memset of vgpud's); an allocation freed and made
    again at the same address is never read or written through the old one's mapping. Other
    ways (a relay, the cuda backend) keep sending the data."""
    out = run_json(CLIENT_COPIES, vgpud.env)
    local = vgpud.through == "local"
    assert out.pop("before") == 0
    assert (out.pop("after") > 0) == local
    assert out.pop("same_address") or not local
    assert out == {"round_trip": True, "part": True, "past_end": C["CUDA_ERROR_INVALID_VALUE"],
                   "reused": True, "after_device_copy": True, "after_memset": True, "async": True}
