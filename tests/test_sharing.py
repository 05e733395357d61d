"""Memory shared through shareable handles: a physical allocation exported as a POSIX file
descriptor, passed to another process over a Unix socket (SCM_RIGHTS) and imported there shows
the same bytes both ways; forged and foreign descriptors, fabric handles and bad arguments get
the documented codes. Also pointer attributes set by the application (SYNC_MEMOPS) and the v1
name of cuMemHostGetDevicePointer. Export and import are called through ctypes with cuda.h's
exact prototypes; everything else through cuda-python."""

from __future__ import annotations

import pytest

from tests.conftest import CUDA_PYTHON, run_json
from vgpu.api.manifest import load

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)
C = load("cuda").constants


def served_by_simulator(vgpud) -> None:
    if vgpud.through == "cuda-backend":
        pytest.skip("the cuda backend's clients all live in vgpud's one process; it does not export handles")


PRELUDE = CUDA_PYTHON + """
import socket, subprocess, sys
lib = ctypes.CDLL("libcuda.so.1")
export = lib.cuMemExportToShareableHandle
export.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong, ctypes.c_int, ctypes.c_ulonglong]
import_ = lib.cuMemImportFromShareableHandle
import_.argtypes = [ctypes.POINTER(ctypes.c_ulonglong), ctypes.c_void_p, ctypes.c_int]
POSIX_FD = int(cu.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
FABRIC = int(cu.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_FABRIC)
ok(cu.cuInit(0))
ctx = ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(0))))
ok(cu.cuCtxSetCurrent(ctx))
SIZE = 2 << 20
def prop(types):
    p = cu.CUmemAllocationProp()
    p.type = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
    p.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    p.location.id = 0
    p.requestedHandleTypes = types
    return p
def show(handle):
    va = ok(cu.cuMemAddressReserve(SIZE, 0, 0, 0))
    ok(cu.cuMemMap(va, SIZE, 0, handle, 0))
    access = cu.CUmemAccessDesc()
    access.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    access.location.id = 0
    access.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
    ok(cu.cuMemSetAccess(va, SIZE, [access], 1))
    return int(va)
def read(ptr, n):
    out = bytearray(n); ok(cu.cuMemcpyDtoH(out, ptr, n)); return bytes(out)
def imported(fd):
    handle = ctypes.c_ulonglong(0)
    rc = import_(ctypes.byref(handle), ctypes.c_void_p(fd), POSIX_FD)
    return rc, handle.value
"""

#: the importing process: receives the descriptor over the socket it was given, then answers commands
IMPORTER = PRELUDE + """
sock = socket.socket(fileno=int(sys.argv[1]))
message, fds, _, _ = socket.recv_fds(sock, 16, 1)
fd = fds[0]
rc, handle = imported(fd)
os.close(fd)  # the imported handle holds the memory, not the descriptor
va = show(handle) if rc == 0 else 0
sock.sendall((json.dumps({"rc": rc, "message": message.decode()}) + "\\n").encode())
for line in sock.makefile("r"):
    cmd = json.loads(line)
    if cmd["op"] == "read":
        reply = {"data": read(va + cmd["at"], cmd["n"]).hex()}
    elif cmd["op"] == "write":
        ok(cu.cuMemcpyHtoD(va + cmd["at"], bytes.fromhex(cmd["data"]), len(cmd["data"]) // 2))
        reply = {}
    elif cmd["op"] == "release":
        ok(cu.cuMemUnmap(va, SIZE)); ok(cu.cuMemAddressFree(va, SIZE))
        reply = {"rc": code(cu.cuMemRelease(handle))}
    elif cmd["op"] == "exit":
        break
    sock.sendall((json.dumps(reply) + "\\n").encode())
"""

SHARE = PRELUDE + """
IMPORTER = sys.argv[1]
out = {}
handle = ok(cu.cuMemCreate(SIZE, prop(POSIX_FD), 0))
va = show(handle)
rng = random.Random(7)
data = bytes(rng.getrandbits(8) for _ in range(1 << 16)) * (SIZE >> 16)
ok(cu.cuMemcpyHtoD(va, data, SIZE))
canary = (ctypes.c_int * 2)(-1, 0x5a5a5a5a)
out["export"] = export(ctypes.addressof(canary), int(handle), POSIX_FD, 0)
fd = canary[0]
out["canary"] = canary[1] == 0x5a5a5a5a
out["is_fd"] = os.fstat(fd).st_size == 64
# the allocation comes back into this process too, as another handle to the same memory
rc, own = imported(fd)
out["own_import"] = rc
mine = show(own) if rc == 0 else 0
out["own_import_reads"] = rc == 0 and read(mine + 4096, 64) == data[4096:4160]
parent, child_end = socket.socketpair()
child = subprocess.Popen([sys.executable, "-c", IMPORTER, str(child_end.fileno())], pass_fds=[child_end.fileno()])
child_end.close()
socket.send_fds(parent, [b"allocation"], [fd])
os.close(fd)
replies = parent.makefile("r")
def ask(**cmd):
    if cmd:
        parent.sendall((json.dumps(cmd) + "\\n").encode())
    return json.loads(replies.readline())
out["child_import"] = ask()  # the import's own answer comes first
out["child_reads"] = bytes.fromhex(ask(op="read", at=0, n=SIZE)["data"]) == data
ask(op="write", at=1000, data="c0ffee" * 100)
out["parent_sees_child_write"] = read(va + 1000, 300) == bytes.fromhex("c0ffee" * 100)
ok(cu.cuMemcpyHtoD(va + SIZE - 6, b"parent", 6))
out["child_sees_parent_write"] = bytes.fromhex(ask(op="read", at=SIZE - 6, n=6)["data"]) == b"parent"
# the exporter lets everything go: the child's handle keeps the memory and its contents
ok(cu.cuMemUnmap(mine, SIZE)); ok(cu.cuMemRelease(own))
ok(cu.cuMemUnmap(va, SIZE)); ok(cu.cuMemAddressFree(va, SIZE))
out["release"] = code(cu.cuMemRelease(handle))
out["released_twice"] = code(cu.cuMemRelease(handle))
out["child_reads_after_release"] = bytes.fromhex(ask(op="read", at=1000, n=6)["data"]).hex()
out["child_release"] = ask(op="release")["rc"]
parent.sendall(b'{"op": "exit"}\\n')
out["child_exit"] = child.wait(30)
print(json.dumps(out))
"""

REFUSALS = PRELUDE + """
out = {}
plain = ok(cu.cuMemCreate(SIZE, prop(0), 0))
shareable = ok(cu.cuMemCreate(SIZE, prop(POSIX_FD), 0))
fd = ctypes.c_int(-7)
out["not_requested"] = export(ctypes.addressof(fd), int(plain), POSIX_FD, 0)
out["fabric"] = export(ctypes.addressof(fd), int(shareable), FABRIC, 0)
out["none_type"] = export(ctypes.addressof(fd), int(shareable), 0, 0)
out["flags"] = export(ctypes.addressof(fd), int(shareable), POSIX_FD, 1)
out["null_out"] = export(None, int(shareable), POSIX_FD, 0)
out["no_such_handle"] = export(ctypes.addressof(fd), 0xdead, POSIX_FD, 0)
out["untouched"] = fd.value
out["export"] = export(ctypes.addressof(fd), int(shareable), POSIX_FD, 0)
token = os.pread(fd.value, 64, 0)
out["sealed"] = None
try:
    os.pwrite(fd.value, b"x", 0)
except OSError as e:
    out["sealed"] = e.errno
forged = []
for at in (0, 5, 20, 63):  # the tag, the GPU, the secret, the padding
    changed = bytearray(token); changed[at] ^= 1
    other = os.memfd_create("forged"); os.write(other, bytes(changed))
    forged.append(imported(other)[0]); os.close(other)
out["forged"] = forged
r, w = os.pipe()
out["pipe"] = imported(r)[0]
out["closed_fd"] = imported(w + 100)[0]
out["devnull"] = imported(os.open("/dev/null", os.O_RDONLY))[0]
handle = ctypes.c_ulonglong(0)
out["import_fabric"] = import_(ctypes.byref(handle), ctypes.c_void_p(fd.value), FABRIC)
out["import_null_out"] = import_(None, ctypes.c_void_p(fd.value), POSIX_FD)
# after the exporter's own release the descriptor still names the memory (the export holds it)
ok(cu.cuMemRelease(shareable))
rc, again = imported(fd.value)
out["import_after_release"] = rc
out["imported_props"] = int(ok(cu.cuMemGetAllocationPropertiesFromHandle(again)).requestedHandleTypes) if rc == 0 else -1
print(json.dumps(out))
"""


def test_shareable_fd_between_processes_over_a_unix_socket(vgpud):
    served_by_simulator(vgpud)
    out = run_json(SHARE.replace("sys.argv[1]", repr(IMPORTER), 1), vgpud.env, timeout=120)
    assert out["export"] == 0 and out["canary"], "an int is written, nothing after it"
    assert out["is_fd"], "the handle is a real descriptor"
    assert out["own_import"] == 0 and out["own_import_reads"]
    assert out["child_import"] == {"rc": 0, "message": "allocation"}
    assert out["child_reads"], "the importer maps the exporter's bytes exactly"
    assert out["parent_sees_child_write"] and out["child_sees_parent_write"], "shared both ways"
    assert out["release"] == 0 and out["released_twice"] == C["CUDA_ERROR_INVALID_VALUE"]
    assert out["child_reads_after_release"] == "c0ffeec0ffee", "the importer's handle keeps the memory"
    assert out["child_release"] == 0 and out["child_exit"] == 0


def test_shareable_handle_refusals(vgpud):
    served_by_simulator(vgpud)
    out = run_json(REFUSALS, vgpud.env, timeout=60)
    invalid = C["CUDA_ERROR_INVALID_VALUE"]
    assert out["not_requested"] == invalid, "only a handle type requested at cuMemCreate is exported"
    assert out["fabric"] == out["import_fabric"] == C["CUDA_ERROR_NOT_SUPPORTED"], "no fabric on these GPUs"
    assert [out["none_type"], out["flags"], out["null_out"], out["no_such_handle"]] == [invalid] * 4
    assert out["untouched"] == -7
    assert out["export"] == 0 and out["sealed"] == 1, "the token cannot be rewritten (EPERM: sealed)"
    assert out["forged"] == [invalid] * 4, "a token vgpud did not make imports nothing"
    assert [out["pipe"], out["closed_fd"], out["devnull"], out["import_null_out"]] == [invalid] * 4
    assert out["import_after_release"] == 0
    assert out["imported_props"] == C["CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR"]


POINTER_ATTRIBUTES = PRELUDE + """
out = {}
SYNC = cu.CUpointer_attribute.CU_POINTER_ATTRIBUTE_SYNC_MEMOPS
ptr = ok(cu.cuMemAlloc(1 << 20))
out["before"] = ok(cu.cuPointerGetAttribute(SYNC, ptr))
setter = lib.cuPointerSetAttribute
setter.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_ulonglong]
one, zero = ctypes.c_uint(1), ctypes.c_uint(0)
out["set"] = setter(ctypes.byref(one), int(SYNC), int(ptr) + 4096)
out["after_set"] = ok(cu.cuPointerGetAttribute(SYNC, ptr))
other = ok(cu.cuMemAlloc(1 << 20))
out["other_allocation"] = ok(cu.cuPointerGetAttribute(SYNC, other))
out["clear"] = setter(ctypes.byref(zero), int(SYNC), int(ptr))
out["after_clear"] = ok(cu.cuPointerGetAttribute(SYNC, ptr))
out["other_attribute"] = setter(ctypes.byref(one), int(cu.CUpointer_attribute.CU_POINTER_ATTRIBUTE_MAPPED), int(ptr))
out["null_value"] = setter(None, int(SYNC), int(ptr))
out["wild"] = setter(ctypes.byref(one), int(SYNC), 0x1234)
print(json.dumps(out))
"""


def test_sync_memops_is_set_and_read_back(vgpud):
    out = run_json(POINTER_ATTRIBUTES, vgpud.env)
    invalid = C["CUDA_ERROR_INVALID_VALUE"]
    assert out["before"] == 0 and out["set"] == 0 and out["after_set"] == 1, "an interior pointer names the allocation"
    assert out["other_allocation"] == 0
    assert out["clear"] == 0 and out["after_clear"] == 0
    assert [out["other_attribute"], out["null_value"], out["wild"]] == [invalid] * 3


HOST_POINTER_V1 = PRELUDE + """
out = {}
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
MAP_32BIT = 0x40
low = libc.mmap(None, 1 << 16, 3, 0x22 | MAP_32BIT, -1, 0)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
high = ctypes.create_string_buffer(1 << 16)
lib.cuMemHostRegister_v2.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
DEVICEMAP = 2
ok(lib.cuMemHostRegister_v2(low, 1 << 16, DEVICEMAP))
ok(lib.cuMemHostRegister_v2(ctypes.addressof(high), 1 << 16, DEVICEMAP))
v1 = lib.cuMemHostGetDevicePointer
v1.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
def call(p, flags=0):
    cell = (ctypes.c_uint32 * 2)(0xAAAAAAAA, 0x5A5A5A5A)
    rc = v1(ctypes.addressof(cell), p, flags)
    return [rc, cell[0], cell[1]]
out["low"] = call(low + 100)
out["low_address"] = low + 100
out["high"] = call(ctypes.addressof(high))
out["high_address"] = ctypes.addressof(high)
out["flags"] = call(low, 1)
out["unregistered"] = call(0x1000)
out["null"] = v1(None, low, 0)
print(json.dumps(out))
"""


def test_v1_host_device_pointer(vgpud):
    out = run_json(HOST_POINTER_V1, vgpud.env)
    invalid = C["CUDA_ERROR_INVALID_VALUE"]
    assert out["low_address"] < 1 << 32
    assert out["low"] == [0, out["low_address"], 0x5A5A5A5A], "four bytes written, the canary after them kept"
    assert out["high_address"] >= 1 << 32
    assert out["high"] == [invalid, 0xAAAAAAAA, 0x5A5A5A5A], "an address past 32 bits is never truncated"
    assert out["flags"] == out["unregistered"] == [invalid, 0xAAAAAAAA, 0x5A5A5A5A]
    assert out["null"] == invalid


#: the importing process of a pool: the pool's descriptor and one allocation's export data arrive
#: over the socket it was given
POOL_IMPORTER = PRELUDE + """
pool_import = lib.cuMemPoolImportFromShareableHandle
pool_import.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_int, ctypes.c_ulonglong]
sock = socket.socket(fileno=int(sys.argv[1]))
message, fds, _, _ = socket.recv_fds(sock, 64, 1)
raw = ctypes.c_void_p()
out = {"pool_import": pool_import(ctypes.byref(raw), ctypes.c_void_p(fds[0]), POSIX_FD, 0)}
os.close(fds[0])
pool = cu.CUmemoryPool(raw.value)
data = cu.CUmemPoolPtrExportData()
ctypes.memmove(data.getPtr(), message, 64)
stream = ok(cu.cuStreamCreate(0))
out["alloc_from_imported"] = code(cu.cuMemAllocFromPoolAsync(1 << 16, pool, stream))
forged = cu.CUmemPoolPtrExportData()
ctypes.memmove(forged.getPtr(), message[:30] + bytes([message[30] ^ 1]) + message[31:], 64)
out["forged_pointer"] = code(cu.cuMemPoolImportPointer(pool, forged))
ptr = int(ok(cu.cuMemPoolImportPointer(pool, data)))
sock.sendall((json.dumps({**out, "ptr": ptr}) + "\\n").encode())
for line in sock.makefile("r"):
    cmd = json.loads(line)
    if cmd["op"] == "read":
        reply = {"data": read(ptr + cmd["at"], cmd["n"]).hex()}
    elif cmd["op"] == "write":
        ok(cu.cuMemcpyHtoD(ptr + cmd["at"], bytes.fromhex(cmd["data"]), len(cmd["data"]) // 2))
        reply = {}
    elif cmd["op"] == "free":
        reply = {"free": code(cu.cuMemFree(ptr)), "again": code(cu.cuMemFree(ptr)),
                 "destroy": code(cu.cuMemPoolDestroy(pool))}
    elif cmd["op"] == "exit":
        break
    sock.sendall((json.dumps(reply) + "\\n").encode())
"""

POOLS = PRELUDE + """
IMPORTER = sys.argv[1]
pool_export = lib.cuMemPoolExportToShareableHandle
pool_export.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_ulonglong]
def pool_of(types):
    props = cu.CUmemPoolProps()
    props.allocType = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
    props.handleTypes = types
    props.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    props.location.id = 0
    return ok(cu.cuMemPoolCreate(props))
out = {}
stream = ok(cu.cuStreamCreate(0))
pool = pool_of(POSIX_FD)
n = 1 << 20
ptr = int(ok(cu.cuMemAllocFromPoolAsync(n, pool, stream)))
data = bytes(random.Random(3).getrandbits(8) for _ in range(n))
ok(cu.cuMemcpyHtoD(ptr, data, n))
fd = ctypes.c_int(-1)
out["export"] = pool_export(ctypes.addressof(fd), int(pool), POSIX_FD, 0)
share = ok(cu.cuMemPoolExportPointer(ptr))
out["same_data_again"] = ctypes.string_at(ok(cu.cuMemPoolExportPointer(ptr)).getPtr(), 64) == ctypes.string_at(share.getPtr(), 64)
# refusals: pools not made shareable, the default pool, memory from no pool, fabric handles
plain = pool_of(0)
other = int(ok(cu.cuMemAllocFromPoolAsync(4096, plain, stream)))
spare = ctypes.c_int(-7)
out["plain_pool"] = pool_export(ctypes.addressof(spare), int(plain), POSIX_FD, 0)
out["default_pool"] = pool_export(ctypes.addressof(spare), int(ok(cu.cuDeviceGetDefaultMemPool(0))), POSIX_FD, 0)
out["fabric"] = pool_export(ctypes.addressof(spare), int(pool), FABRIC, 0)
out["untouched"] = spare.value
out["plain_pointer"] = code(cu.cuMemPoolExportPointer(other))
out["no_pool_pointer"] = code(cu.cuMemPoolExportPointer(ok(cu.cuMemAlloc(4096))))
parent, child_end = socket.socketpair()
child = subprocess.Popen([sys.executable, "-c", IMPORTER, str(child_end.fileno())], pass_fds=[child_end.fileno()])
child_end.close()
socket.send_fds(parent, [ctypes.string_at(share.getPtr(), 64)], [fd.value])
os.close(fd.value)
replies = parent.makefile("r")
def ask(**cmd):
    if cmd:
        parent.sendall((json.dumps(cmd) + "\\n").encode())
    return json.loads(replies.readline())
first = ask()
out["child"] = [first["pool_import"], first["alloc_from_imported"], first["forged_pointer"], first["ptr"] == ptr]
out["child_reads"] = bytes.fromhex(ask(op="read", at=0, n=n)["data"]) == data
ask(op="write", at=100, data="feed" * 8)
out["parent_sees_child_write"] = read(ptr + 100, 16) == bytes.fromhex("feed" * 8)
# the exporter frees first: the importer's bytes stay until it frees its import
ok(cu.cuMemFreeAsync(ptr, stream)); ok(cu.cuStreamSynchronize(stream))
out["child_reads_after_free"] = ask(op="read", at=100, n=4)["data"]
out["child_free"] = ask(op="free")
parent.sendall(b'{"op": "exit"}\\n')
out["child_exit"] = child.wait(30)
print(json.dumps(out))
"""


def test_pool_allocations_shared_between_processes(vgpud):
    served_by_simulator(vgpud)
    out = run_json(POOLS.replace("sys.argv[1]", repr(POOL_IMPORTER), 1), vgpud.env, timeout=120)
    invalid = C["CUDA_ERROR_INVALID_VALUE"]
    assert out["export"] == 0 and out["same_data_again"]
    assert [out["plain_pool"], out["default_pool"]] == [invalid] * 2, "only pools made shareable export"
    assert out["fabric"] == C["CUDA_ERROR_NOT_SUPPORTED"] and out["untouched"] == -7
    assert out["plain_pointer"] == out["no_pool_pointer"] == invalid
    assert out["child"] == [0, invalid, invalid, True], "an imported pool allocates nothing; same address"
    assert out["child_reads"] and out["parent_sees_child_write"], "the same bytes both ways"
    assert out["child_reads_after_free"] == "feedfeed"
    assert out["child_free"] == {"free": 0, "again": invalid, "destroy": 0}
    assert out["child_exit"] == 0


EXTERNAL = PRELUDE + """
out = {}
handle = ok(cu.cuMemCreate(2 * SIZE, prop(POSIX_FD), 0))
size = 2 * SIZE
va = ok(cu.cuMemAddressReserve(size, 0, 0, 0))
ok(cu.cuMemMap(va, size, 0, handle, 0))
access = cu.CUmemAccessDesc()
access.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
access.location.id = 0
access.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
ok(cu.cuMemSetAccess(va, size, [access], 1))
va = int(va)
data = bytes(random.Random(5).getrandbits(8) for _ in range(1 << 16)) * (size >> 16)
ok(cu.cuMemcpyHtoD(va, data, size))
fd = ctypes.c_int(-1)
ok(export(ctypes.addressof(fd), int(handle), POSIX_FD, 0))
def desc(fd, kind=cu.CUexternalMemoryHandleType.CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD, flags=0, n=size):
    d = cu.CUDA_EXTERNAL_MEMORY_HANDLE_DESC()
    d.type = kind
    d.handle.fd = fd
    d.size = n
    d.flags = flags
    return d
def buffer(offset, n, flags=0):
    b = cu.CUDA_EXTERNAL_MEMORY_BUFFER_DESC()
    b.offset, b.size, b.flags = offset, n, flags
    return b
forged_fd = os.memfd_create("forged"); os.write(forged_fd, b"\\0" * 64)
out["forged"] = code(cu.cuImportExternalMemory(desc(forged_fd)))
out["forged_fd_kept"] = os.fstat(forged_fd).st_size == 64
out["win32"] = code(cu.cuImportExternalMemory(desc(0, cu.CUexternalMemoryHandleType.CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_WIN32)))
out["bad_flags"] = code(cu.cuImportExternalMemory(desc(os.dup(fd.value), flags=2)))
out["zero_size"] = code(cu.cuImportExternalMemory(desc(os.dup(fd.value), n=0)))
given = os.dup(fd.value)
ext = ok(cu.cuImportExternalMemory(desc(given, flags=1)))
try:
    os.fstat(given); out["fd_taken"] = False
except OSError:
    out["fd_taken"] = True
ptr = int(ok(cu.cuExternalMemoryGetMappedBuffer(ext, buffer(3 << 20, 8192))))
out["buffer_reads"] = read(ptr, 8192) == data[3 << 20:(3 << 20) + 8192]
ok(cu.cuMemcpyHtoD(ptr + 10, b"through the buffer", 18))
out["original_sees"] = read(va + (3 << 20) + 10, 18) == b"through the buffer"
out["past_end"] = code(cu.cuExternalMemoryGetMappedBuffer(ext, buffer(size - 4096, 8192)))
out["buffer_flags"] = code(cu.cuExternalMemoryGetMappedBuffer(ext, buffer(0, 4096, 1)))
whole = int(ok(cu.cuExternalMemoryGetMappedBuffer(ext, buffer(0, size))))
out["destroy"] = code(cu.cuDestroyExternalMemory(ext))
out["buffer_after_destroy"] = read(whole + (3 << 20) + 10, 18) == b"through the buffer"
out["frees"] = [code(cu.cuMemFree(ptr)), code(cu.cuMemFree(whole)), code(cu.cuMemFree(ptr))]
out["bogus_handle"] = [code(cu.cuDestroyExternalMemory(cu.CUexternalMemory(0x1234))),
                      code(cu.cuDestroyExternalMemory(ext))]  # a garbage pointer, one destroyed
print(json.dumps(out))
"""


def test_external_memory_over_an_exported_descriptor(vgpud):
    served_by_simulator(vgpud)
    out = run_json(EXTERNAL, vgpud.env)
    invalid = C["CUDA_ERROR_INVALID_VALUE"]
    assert out["forged"] == invalid and out["forged_fd_kept"], "a refused descriptor stays the caller's"
    assert out["win32"] == C["CUDA_ERROR_NOT_SUPPORTED"]
    assert out["bad_flags"] == out["zero_size"] == invalid
    assert out["fd_taken"], "cuda.h: the driver owns the descriptor once imported"
    assert out["buffer_reads"] and out["original_sees"], "the buffer is the exported memory at its offset"
    assert out["past_end"] == out["buffer_flags"] == invalid
    assert out["destroy"] == 0 and out["buffer_after_destroy"], "buffers outlive the object until freed"
    assert out["frees"] == [0, 0, invalid]
    assert out["bogus_handle"] == [C["CUDA_ERROR_INVALID_HANDLE"]] * 2


SEMAPHORES = PRELUDE + """
out = {}
T = cu.CUexternalSemaphoreHandleType
def semaphore(fd, kind=T.CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_FD, flags=0):
    d = cu.CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC()
    d.type = kind
    d.handle.fd = fd
    d.flags = flags
    return cu.cuImportExternalSemaphore(d)
def signal(sem, stream, value=0):
    p = cu.CUDA_EXTERNAL_SEMAPHORE_SIGNAL_PARAMS()
    p.params.fence.value = value
    return code(cu.cuSignalExternalSemaphoresAsync([sem], [p], 1, stream))
def wait(sem, stream, value=0):
    p = cu.CUDA_EXTERNAL_SEMAPHORE_WAIT_PARAMS()
    p.params.fence.value = value
    return code(cu.cuWaitExternalSemaphoresAsync([sem], [p], 1, stream))
producer, consumer = ok(cu.cuStreamCreate(1)), ok(cu.cuStreamCreate(1))
src, dst = ok(cu.cuMemAlloc(4096)), ok(cu.cuMemAlloc(4096))
ok(cu.cuMemsetD8(dst, 0, 4096))
# a binary semaphore: the consumer's copy waits for the producer's fill and signal
fd = os.memfd_create("semaphore")
other_fd = os.dup(fd)  # the same open file: the same semaphore
binary = ok(semaphore(fd))
try:
    os.fstat(fd); out["fd_taken"] = False
except OSError:
    out["fd_taken"] = True
same = ok(semaphore(other_fd))
out["wait"] = wait(same, consumer)
ok(cu.cuMemcpyDtoDAsync(dst, src, 4096, consumer))
out["consumer_before_signal"] = code(cu.cuStreamQuery(consumer))
ok(cu.cuMemsetD8Async(src, 0x3c, 4096, producer))
out["signal"] = signal(binary, producer)
out["consumer_after_signal"] = code(cu.cuStreamSynchronize(consumer))
got = bytearray(4096); ok(cu.cuMemcpyDtoH(got, dst, 4096))
out["copy_after_fill"] = bytes(got) == b"\\x3c" * 4096
# the wait consumed the signal: a second wait holds again
out["second_wait"] = wait(binary, consumer)
out["held_again"] = code(cu.cuStreamQuery(consumer))
signal(same, producer)
out["released_again"] = code(cu.cuStreamSynchronize(consumer))
# a timeline semaphore: waits for a value, released by a signal reaching it
timeline = ok(semaphore(os.memfd_create("timeline"), T.CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD))
wait(timeline, consumer, 5)
ok(cu.cuMemsetD8Async(dst, 0x11, 4096, consumer))
signal(timeline, producer, 3)
out["timeline_below"] = code(cu.cuStreamQuery(consumer))
signal(timeline, producer, 7)
out["timeline_reached"] = code(cu.cuStreamSynchronize(consumer))
ok(cu.cuMemcpyDtoH(got, dst, 4096))
out["timeline_work_done"] = bytes(got) == b"\\x11" * 4096
out["timeline_passed"] = [wait(timeline, consumer, 6), code(cu.cuStreamQuery(consumer))]
# refusals
out["win32"] = code(semaphore(0, T.CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_WIN32))
out["flags"] = code(semaphore(os.memfd_create("x"), flags=1))
out["closed_fd"] = code(semaphore(987))
out["destroy"] = [code(cu.cuDestroyExternalSemaphore(binary)), code(cu.cuDestroyExternalSemaphore(same))]
out["signal_destroyed"] = signal(binary, producer)
print(json.dumps(out))
"""


def test_external_semaphores_order_work_across_streams(vgpud):
    served_by_simulator(vgpud)
    out = run_json(SEMAPHORES, vgpud.env)
    not_ready, invalid = C["CUDA_ERROR_NOT_READY"], C["CUDA_ERROR_INVALID_VALUE"]
    assert out["fd_taken"], "cuda.h: the driver owns the descriptor once imported"
    assert out["wait"] == 0 and out["consumer_before_signal"] == not_ready
    assert out["signal"] == 0 and out["consumer_after_signal"] == 0
    assert out["copy_after_fill"], "the copy behind the wait ran after the producer's fill"
    assert out["second_wait"] == 0 and out["held_again"] == not_ready and out["released_again"] == 0
    assert out["timeline_below"] == not_ready and out["timeline_reached"] == 0 and out["timeline_work_done"]
    assert out["timeline_passed"] == [0, 0], "a value already reached holds nothing"
    assert out["win32"] == C["CUDA_ERROR_NOT_SUPPORTED"]
    assert out["flags"] == out["closed_fd"] == invalid
    assert out["destroy"] == [0, 0] and out["signal_destroyed"] == C["CUDA_ERROR_INVALID_HANDLE"]


MIPMAPPED = PRELUDE + """
out = {}
handle = ok(cu.cuMemCreate(SIZE, prop(POSIX_FD), 0))
va = show(handle)
fd = ctypes.c_int(-1)
ok(export(ctypes.addressof(fd), int(handle), POSIX_FD, 0))
d = cu.CUDA_EXTERNAL_MEMORY_HANDLE_DESC()
d.type = cu.CUexternalMemoryHandleType.CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD
d.handle.fd = fd.value
d.size = SIZE
ext = ok(cu.cuImportExternalMemory(d))
def mipmapped(width, height, levels, offset=4096):
    m = cu.CUDA_EXTERNAL_MEMORY_MIPMAPPED_ARRAY_DESC()
    m.offset = offset
    m.arrayDesc.Width, m.arrayDesc.Height, m.arrayDesc.Depth = width, height, 0
    m.arrayDesc.Format = cu.CUarray_format.CU_AD_FORMAT_UNSIGNED_INT8
    m.arrayDesc.NumChannels = 4
    m.numLevels = levels
    return cu.cuExternalMemoryGetMappedMipmappedArray(ext, m)
mip = ok(mipmapped(64, 32, 3))
level0 = ok(cu.cuMipmappedArrayGetLevel(mip, 0))
level1 = ok(cu.cuMipmappedArrayGetLevel(mip, 1))
desc1 = ok(cu.cuArray3DGetDescriptor(level1))
out["level1_shape"] = [desc1.Width, desc1.Height]
# level 0 lies at the offset: bytes written to the exported memory there read back from the array
row = bytes(range(256))
ok(cu.cuMemcpyHtoD(va + 4096, row * 32, 256 * 32))
got = bytearray(256 * 32)
ok(cu.cuMemcpyAtoH(got, level0, 0, len(got)))
out["level0_is_the_memory"] = bytes(got) == row * 32
# and writes into the array reach the exported memory
ok(cu.cuMemcpyHtoA(level0, 0, b"\\x77" * 256, 256))
out["array_write_seen"] = read(va + 4096, 256) == b"\\x77" * 256
out["too_many_levels"] = code(mipmapped(64, 32, 8))
out["too_large"] = code(mipmapped(1 << 14, 1 << 14, 1))
out["offset_past_end"] = code(mipmapped(64, 32, 1, SIZE))
out["destroy"] = code(cu.cuMipmappedArrayDestroy(mip))
out["destroy_again"] = code(cu.cuDestroyExternalMemory(ext))
out["memory_still_there"] = read(va + 4096, 4) == b"\\x77" * 4
print(json.dumps(out))
"""


def test_external_memory_as_a_mipmapped_array(vgpud):
    served_by_simulator(vgpud)
    out = run_json(MIPMAPPED, vgpud.env)
    invalid = C["CUDA_ERROR_INVALID_VALUE"]
    assert out["level1_shape"] == [32, 16]
    assert out["level0_is_the_memory"] and out["array_write_seen"], "the array's bytes are the external memory"
    assert out["too_many_levels"] == out["too_large"] == out["offset_past_end"] == invalid
    assert out["destroy"] == 0 and out["destroy_again"] == 0 and out["memory_still_there"]
