"""Device and context extras (native/cuda/extras.c, cuCtxSetFlags in cuda_shim.c), through
cuda-python and ctypes: the legacy device properties, execution affinity, a context's events,
context flags, async notification and coredump callbacks, coredump settings with their
documented defaults and environment variables, and the driver log dumped to a file."""

from __future__ import annotations

from tests.conftest import CUDA_PYTHON, run_json

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)

PRELUDE = CUDA_PYTHON + """
ok(cu.cuInit(0))
dev = ok(cu.cuDeviceGet(0))
ok(cu.cuCtxSetCurrent(ok(cu.cuDevicePrimaryCtxRetain(dev))))
A = cu.CUdevice_attribute
def attr(a, d=dev):
    return ok(cu.cuDeviceGetAttribute(a, d))
lib = ctypes.CDLL("libcuda.so.1")
out = {}
"""

PROPERTIES = PRELUDE + """
p = ok(cu.cuDeviceGetProperties(dev))
out["props"] = [p.maxThreadsPerBlock, list(p.maxThreadsDim), list(p.maxGridSize), p.sharedMemPerBlock,
                p.totalConstantMemory, p.SIMDWidth, p.memPitch, p.regsPerBlock, p.clockRate, p.textureAlign]
out["attrs"] = [attr(A.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK),
                [attr(A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X), attr(A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y),
                 attr(A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z)],
                [attr(A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X), attr(A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y),
                 attr(A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z)],
                attr(A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK),
                attr(A.CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY), attr(A.CU_DEVICE_ATTRIBUTE_WARP_SIZE),
                attr(A.CU_DEVICE_ATTRIBUTE_MAX_PITCH), attr(A.CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK),
                attr(A.CU_DEVICE_ATTRIBUTE_CLOCK_RATE), attr(A.CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT)]
out["null"] = lib.cuDeviceGetProperties(None, 0)
out["bad_device"] = lib.cuDeviceGetProperties(ctypes.create_string_buffer(256), 99)
out["luid"] = lib.cuDeviceGetLuid(ctypes.create_string_buffer(8), ctypes.byref(ctypes.c_uint()), 0)
print(json.dumps(out))
"""


def test_device_properties_are_the_attributes(vgpud):
    out = run_json(PROPERTIES, vgpud.env)
    assert out["props"] == out["attrs"]
    assert out["props"][0] == 1024 and out["props"][5] == 32  # H100: 1024 threads, warps of 32
    assert out["null"] == 1 and out["bad_device"] == 101
    assert out["luid"] == 801  # Windows only: CUDA_ERROR_NOT_SUPPORTED, as a Linux driver answers


AFFINITY = PRELUDE + """
SM = cu.CUexecAffinityType.CU_EXEC_AFFINITY_TYPE_SM_COUNT
out["support"] = ok(cu.cuDeviceGetExecAffinitySupport(SM, dev))
out["bad_type"] = lib.cuDeviceGetExecAffinitySupport(ctypes.byref(ctypes.c_int()), 7, 0)
out["primary"] = ok(cu.cuCtxGetExecAffinity(SM)).param.smCount.val
whole = ok(cu.cuDeviceGetDevResource(dev, cu.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM))
groups, count, _ = ok(cu.cuDevSmResourceSplitByCount(1, whole, 0, 16))
green = ok(cu.cuGreenCtxCreate(ok(cu.cuDevResourceGenerateDesc(groups, 1)), dev,
                               cu.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM))
ok(cu.cuCtxPushCurrent(ok(cu.cuCtxFromGreenCtx(green))))
out["green"] = ok(cu.cuCtxGetExecAffinity(SM)).param.smCount.val
ok(cu.cuCtxPopCurrent())
ok(cu.cuGreenCtxDestroy(green))
param = (ctypes.c_uint * 2)()
out["unsupported_type"] = lib.cuCtxGetExecAffinity(param, 7)
ok(cu.cuCtxSetCurrent(None))
out["no_context"] = lib.cuCtxGetExecAffinity(param, 0)
print(json.dumps(out))
"""


def test_execution_affinity_is_the_context_sm_count(vgpud):
    out = run_json(AFFINITY, vgpud.env)
    assert out["support"] == 0  # contexts created with an SM affinity are an MPS client's
    assert out["primary"] == 132 and out["green"] == 16
    assert out["bad_type"] == 1 and out["unsupported_type"] == 224 and out["no_context"] == 201


CONTEXT_EVENTS = PRELUDE + """
other = ok(cu.cuCtxCreate(None, 0, dev))  # made current; the primary context is not
ok(cu.cuCtxPopCurrent())
primary = ok(cu.cuDevicePrimaryCtxRetain(dev))
ok(cu.cuCtxSetCurrent(other))
before, after = ok(cu.cuEventCreate(0)), ok(cu.cuEventCreate(0))
ok(cu.cuCtxSetCurrent(primary))
stream = ok(cu.cuStreamCreate(0))
size = 256 << 20
buf = ok(cu.cuMemAlloc(size))
ok(cu.cuCtxRecordEvent(primary, before))
ok(cu.cuMemsetD8Async(buf, 7, size, stream))  # a blocking stream's work: the context's too
ok(cu.cuCtxSetCurrent(other))
ok(cu.cuCtxRecordEvent(primary, after))  # from another thread's current context
ok(cu.cuCtxWaitEvent(primary, after))
ok(cu.cuEventSynchronize(after))
out["elapsed_ms"] = ok(cu.cuEventElapsedTime(before, after))
out["no_event"] = lib.cuCtxWaitEvent(ctypes.c_void_p(int(primary)), None)
out["current"] = int(ok(cu.cuCtxGetCurrent())) == int(other)
ok(cu.cuCtxSetCurrent(None))
out["no_context"] = lib.cuCtxRecordEvent(None, ctypes.c_void_p(int(after)))  # NULL: the current one
print(json.dumps(out))
"""


def test_a_context_event_captures_all_its_streams_work(vgpud):
    out = run_json(CONTEXT_EVENTS, vgpud.env)
    assert out["elapsed_ms"] > 0.05  # 256 MiB of memset (0.08 ms on an H100) lies between the two records
    assert out["no_context"] == 201 and out["no_event"] == 400 and out["current"]


CONTEXT_FLAGS = PRELUDE + """
F = cu.CUctx_flags
out["start"] = ok(cu.cuCtxGetFlags())
ok(cu.cuCtxSetFlags(F.CU_CTX_SCHED_BLOCKING_SYNC | F.CU_CTX_MAP_HOST))
out["primary"] = ok(cu.cuCtxGetFlags())
out["state"] = ok(cu.cuDevicePrimaryCtxGetState(dev))[0]
ctx = ok(cu.cuCtxCreate(None, F.CU_CTX_SCHED_SPIN, dev))
ok(cu.cuCtxSetFlags(F.CU_CTX_SCHED_YIELD))
out["created"] = ok(cu.cuCtxGetFlags())
out["bad"] = lib.cuCtxSetFlags(0x40000000)
ok(cu.cuCtxDestroy(ctx))
ok(cu.cuCtxSetCurrent(None))
out["no_context"] = lib.cuCtxSetFlags(0)
print(json.dumps(out))
"""


def test_context_flags_are_replaced_whole(vgpud):
    out = run_json(CONTEXT_FLAGS, vgpud.env)
    assert out["start"] == 0 and out["primary"] == 0x04 | 0x08 and out["state"] == 0x0C
    assert out["created"] == 0x02 and out["bad"] == 1 and out["no_context"] == 201


CALLBACKS = PRELUDE + """
ASYNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
STATUS = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_int)
notified, dumped = ASYNC(lambda *a: None), STATUS(lambda *a: None)
h1, h2, h3 = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
out["register"] = [lib.cuDeviceRegisterAsyncNotification(0, notified, None, ctypes.byref(h1)),
                   lib.cuDeviceRegisterAsyncNotification(0, notified, ctypes.c_void_p(5), ctypes.byref(h2))]
out["distinct"] = h1.value != h2.value
out["other_device"] = lib.cuDeviceUnregisterAsyncNotification(1, h1)
out["unregister"] = lib.cuDeviceUnregisterAsyncNotification(0, h1)
out["again"] = lib.cuDeviceUnregisterAsyncNotification(0, h1)
out["no_function"] = lib.cuDeviceRegisterAsyncNotification(0, None, None, ctypes.byref(h3))
out["bad_device"] = lib.cuDeviceRegisterAsyncNotification(99, notified, None, ctypes.byref(h3))
s1, c1 = ctypes.c_void_p(), ctypes.c_void_p()
out["coredump"] = [lib.cuCoredumpRegisterStartCallback(dumped, None, ctypes.byref(s1)),
                   lib.cuCoredumpRegisterCompleteCallback(dumped, None, ctypes.byref(c1)),
                   lib.cuCoredumpRegisterStartCallback(dumped, None, None)]  # the handle is optional
out["wrong_kind"] = lib.cuCoredumpDeregisterCompleteCallback(s1)
out["deregister"] = [lib.cuCoredumpDeregisterStartCallback(s1), lib.cuCoredumpDeregisterCompleteCallback(c1)]
out["twice"] = lib.cuCoredumpDeregisterStartCallback(s1)
out["garbage"] = lib.cuCoredumpDeregisterStartCallback(ctypes.c_void_p(0x1234))
out["no_callback"] = lib.cuCoredumpRegisterStartCallback(None, None, ctypes.byref(s1))
print(json.dumps(out))
"""


def test_callbacks_register_and_deregister(vgpud):
    out = run_json(CALLBACKS, vgpud.env)
    assert out["register"] == [0, 0] and out["distinct"]
    assert out["other_device"] == 1 and out["unregister"] == 0 and out["again"] == 1
    assert out["no_function"] == 1 and out["bad_device"] == 101
    assert out["coredump"] == [0, 0, 0] and out["wrong_kind"] == 1
    assert out["deregister"] == [0, 0] and out["twice"] == 1 and out["garbage"] == 1 and out["no_callback"] == 1


COREDUMP = PRELUDE + """
C = {"on_exception": 1, "trigger_host": 2, "lightweight": 3, "user_trigger": 4, "file": 5, "pipe": 6, "flags": 7}
def size_of(attrib, fn=lib.cuCoredumpGetAttributeGlobal):
    size = ctypes.c_size_t(0)
    assert fn(attrib, None, ctypes.byref(size)) == 0
    return size.value
def get(attrib, fn=lib.cuCoredumpGetAttributeGlobal):
    buf = ctypes.create_string_buffer(size_of(attrib, fn))
    size = ctypes.c_size_t(len(buf))
    rc = fn(attrib, buf, ctypes.byref(size))
    assert rc == 0, rc
    return buf.value.decode() if attrib in (5, 6) else int.from_bytes(buf.raw, "little")
def put(attrib, value, fn=lib.cuCoredumpSetAttributeGlobal):
    raw = value.encode() + b"\\0" if isinstance(value, str) else value.to_bytes(size_of(attrib), "little")
    buf = ctypes.create_string_buffer(raw, len(raw))
    return fn(attrib, buf, ctypes.byref(ctypes.c_size_t(len(raw))))
local_get, local_put = lib.cuCoredumpGetAttribute, lib.cuCoredumpSetAttribute
out["sizes"] = {k: size_of(v) for k, v in C.items()}
out["defaults"] = {k: get(v) for k, v in C.items()}
out["set_global"] = [put(C["on_exception"], 1), put(C["file"], "/tmp/dumps/core.%p"),
                     put(C["flags"], (1 << 1) | (1 << 6))]
out["global"] = [get(C["on_exception"]), get(C["file"]), get(C["flags"])]
out["context_inherits"] = [get(C["on_exception"], local_get), get(C["file"], local_get)]
out["set_local"] = [put(C["on_exception"], 0, local_put), put(C["file"], "mine", local_put)]
out["local"] = [get(C["on_exception"], local_get), get(C["file"], local_get)]
out["global_after"] = [get(C["on_exception"]), get(C["file"])]
out["per_context_pipe"] = put(C["pipe"], "p", local_put)
ctx = ok(cu.cuCtxCreate(None, cu.CUctx_flags.CU_CTX_USER_COREDUMP_ENABLE, dev))
out["other_context"] = [get(C["file"], local_get), get(C["user_trigger"], local_get)]
ok(cu.cuCtxDestroy(ctx))
out["user_trigger_on"] = put(C["user_trigger"], 1)
out["pipe_after_trigger"] = put(C["pipe"], "p")
out["bad_attribute"] = lib.cuCoredumpGetAttributeGlobal(99, None, ctypes.byref(ctypes.c_size_t()))
out["short_buffer"] = lib.cuCoredumpGetAttributeGlobal(5, ctypes.create_string_buffer(4),
                                                       ctypes.byref(ctypes.c_size_t(4)))
out["wrong_size"] = lib.cuCoredumpSetAttributeGlobal(1, ctypes.create_string_buffer(8),
                                                     ctypes.byref(ctypes.c_size_t(8)))
ok(cu.cuCtxSetCurrent(None))
out["no_context"] = local_get(1, None, ctypes.byref(ctypes.c_size_t()))
print(json.dumps(out))
"""


def test_coredump_settings_global_and_per_context(vgpud):
    out = run_json(COREDUMP, vgpud.env)
    assert out["sizes"] == {"on_exception": 1, "trigger_host": 1, "lightweight": 1, "user_trigger": 1,
                            "file": 1024, "pipe": 1024, "flags": 4}
    defaults = out["defaults"]
    assert [defaults[k] for k in ("on_exception", "trigger_host", "lightweight", "user_trigger", "flags")] == \
        [0, 1, 0, 0, 0]
    assert defaults["file"].startswith("core.cuda.")
    assert defaults["pipe"].startswith("corepipe.cuda.")
    assert defaults["file"].rsplit(".", 1)[1] == defaults["pipe"].rsplit(".", 1)[1]  # the pid
    assert out["set_global"] == [0, 0, 0] and out["global"] == [1, "/tmp/dumps/core.%p", 0x42]
    assert out["context_inherits"] == [1, "/tmp/dumps/core.%p"]
    assert out["set_local"] == [0, 0] and out["local"] == [0, "mine"]
    assert out["global_after"] == [1, "/tmp/dumps/core.%p"]
    assert out["per_context_pipe"] == 800  # CUDA_ERROR_NOT_PERMITTED: not a per-context setting
    assert out["other_context"] == ["/tmp/dumps/core.%p", 1]  # its creation flag enables user dumps
    assert out["user_trigger_on"] == 0 and out["pipe_after_trigger"] == 800
    assert out["bad_attribute"] == 1 and out["short_buffer"] == 1 and out["wrong_size"] == 1
    assert out["no_context"] == 201


ENVIRONMENT = PRELUDE + """
def get(attrib):
    buf = ctypes.create_string_buffer(1024)
    assert lib.cuCoredumpGetAttributeGlobal(attrib, buf, ctypes.byref(ctypes.c_size_t(1024))) == 0
    return buf.value.decode() if attrib == 5 else buf.raw[0] | buf.raw[1] << 8 | buf.raw[2] << 16 | buf.raw[3] << 24
one = ctypes.create_string_buffer(b"\\0", 1)
out["values"] = [get(1), get(2), get(5), get(7)]
out["set_fixed"] = [lib.cuCoredumpSetAttributeGlobal(1, one, ctypes.byref(ctypes.c_size_t(1))),
                    lib.cuCoredumpSetAttribute(1, one, ctypes.byref(ctypes.c_size_t(1)))]
out["set_free"] = lib.cuCoredumpSetAttributeGlobal(3, ctypes.create_string_buffer(b"\\1", 1),
                                                   ctypes.byref(ctypes.c_size_t(1)))
out["after"] = [get(1), get(3)]
print(json.dumps(out))
"""


def test_coredump_environment_variables_take_precedence(vgpud):
    env = dict(vgpud.env, CUDA_ENABLE_COREDUMP_ON_EXCEPTION="1", CUDA_ENABLE_CPU_COREDUMP_ON_EXCEPTION="0",
               CUDA_COREDUMP_FILE="/var/tmp/gpu.core", CUDA_COREDUMP_GENERATION_FLAGS="skip_abort,gzip_compress")
    out = run_json(ENVIRONMENT, env)
    assert out["values"] == [1, 0, "/var/tmp/gpu.core", (1 << 4) | (1 << 6)]
    assert out["set_fixed"] == [800, 800]  # set before CUDA initialises: permanent precedence
    assert out["set_free"] == 0 and out["after"] == [1, 1]


LOGS = PRELUDE + """
path = os.path.join(os.environ["OUT_DIR"], "driver.log")
with open(path, "w") as f:
    f.write("stale")
out["dump"] = ok(cu.cuLogsDumpToFile(None, path.encode(), 0))
out["contents"] = open(path).read()
size = ctypes.c_size_t(64)
out["memory"] = [lib.cuLogsDumpToMemory(None, ctypes.create_string_buffer(64), ctypes.byref(size), 0), size.value]
out["flags"] = lib.cuLogsDumpToFile(None, path.encode(), 1)
out["no_path"] = lib.cuLogsDumpToFile(None, None, 0)
out["unwritable"] = lib.cuLogsDumpToFile(None, b"/nonexistent-dir/x.log", 0)
print(json.dumps(out))
"""


def test_logs_dump_to_a_file_as_to_memory(vgpud, tmp_path):
    out = run_json(LOGS, dict(vgpud.env, OUT_DIR=str(tmp_path)))
    # the library keeps no log entries: the file holds what cuLogsDumpToMemory gives, nothing
    assert out["dump"] is None and out["contents"] == "" and out["memory"] == [0, 0]
    assert out["flags"] == 1 and out["no_path"] == 1 and out["unwritable"] == 1


BATCHES = PRELUDE + """
MB = 1 << 20
LOC = ctypes.c_int * 2  # CUmemLocation: type, id
DEVICE, HOST = 1, 2  # CU_MEM_LOCATION_TYPE_DEVICE, _HOST
def arrays(*values, kind=ctypes.c_size_t):
    return (kind * len(values))(*values)
def locations(*pairs):
    return (LOC * len(pairs))(*[LOC(*p) for p in pairs])
P, N = ctypes.c_void_p, ctypes.c_size_t
lib.cuMemPrefetchBatchAsync.argtypes = lib.cuMemDiscardAndPrefetchBatchAsync.argtypes = \
    [P, P, N, P, P, N, ctypes.c_ulonglong, P]
lib.cuMemDiscardBatchAsync.argtypes = [P, P, N, ctypes.c_ulonglong, P]
a, b = ok(cu.cuMemAllocManaged(8 * MB, 1)), ok(cu.cuMemAllocManaged(8 * MB, 1))
ctypes.memmove(int(a), b"kept", 4)
stream = ok(cu.cuStreamCreate(0))
s = ctypes.c_void_p(int(stream))
free0 = ok(cu.cuMemGetInfo())[0]
ptrs, sizes = arrays(int(a), int(b)), arrays(8 * MB, 4 * MB)
out["prefetch"] = lib.cuMemPrefetchBatchAsync(ptrs, sizes, 2, locations((DEVICE, 0)), arrays(0), 1, 0, s)
ok(cu.cuStreamSynchronize(stream))
out["resident"] = (free0 - ok(cu.cuMemGetInfo())[0]) // MB
R = cu.CUmem_range_attribute
def last(ptr, n):
    value = ok(cu.cuMemRangeGetAttribute(4, R.CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION, ptr, n))
    return int(value) if isinstance(value, int) else int.from_bytes(bytes(value), "little", signed=True)
out["split"] = lib.cuMemPrefetchBatchAsync(ptrs, sizes, 2, locations((HOST, 0), (DEVICE, 1)), arrays(0, 1), 2, 0, s)
ok(cu.cuStreamSynchronize(stream))
out["last"] = [last(a, 8 * MB), last(b, 4 * MB)]
out["after_split"] = (free0 - ok(cu.cuMemGetInfo())[0]) // MB
ok(cu.cuCtxSetCurrent(ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(1))))))
free1 = ok(cu.cuMemGetInfo())[0]
out["discard"] = lib.cuMemDiscardBatchAsync(arrays(int(b)), arrays(4 * MB), 1, 0, s)
out["discarded"] = (ok(cu.cuMemGetInfo())[0] - free1) // MB
ok(cu.cuCtxSetCurrent(ok(cu.cuDevicePrimaryCtxRetain(dev))))
out["discard_prefetch"] = lib.cuMemDiscardAndPrefetchBatchAsync(arrays(int(a)), arrays(2 * MB), 1,
                                                                locations((DEVICE, 0)), arrays(0), 1, 0, s)
ok(cu.cuStreamSynchronize(stream))
out["after_discard_prefetch"] = (free0 - ok(cu.cuMemGetInfo())[0]) // MB
device_memory = ok(cu.cuMemAlloc(MB))
out["not_managed"] = lib.cuMemPrefetchBatchAsync(arrays(int(device_memory)), arrays(MB), 1, locations((DEVICE, 0)),
                                                 arrays(0), 1, 0, s)
out["first_not_zero"] = lib.cuMemPrefetchBatchAsync(ptrs, sizes, 2, locations((DEVICE, 0)), arrays(1), 1, 0, s)
out["not_rising"] = lib.cuMemPrefetchBatchAsync(ptrs, sizes, 2, locations((DEVICE, 0), (DEVICE, 0)),
                                                arrays(0, 0), 2, 0, s)
out["too_many_locations"] = lib.cuMemPrefetchBatchAsync(arrays(int(a)), arrays(MB), 1,
                                                        locations((DEVICE, 0), (DEVICE, 0)), arrays(0, 1), 2, 0, s)
out["bad_device"] = lib.cuMemPrefetchBatchAsync(ptrs, sizes, 2, locations((DEVICE, 9)), arrays(0), 1, 0, s)
out["flags"] = lib.cuMemDiscardBatchAsync(ptrs, sizes, 2, 1, s)
out["empty"] = lib.cuMemDiscardBatchAsync(ptrs, sizes, 0, 0, s)
print(json.dumps(out))
"""


def test_managed_memory_batches_prefetch_and_discard(vgpud):
    vgpud.local_only("a GPU host does not map the client's managed memory")
    if vgpud.through == "cuda-backend":
        return  # managed memory is refused there (test_host_device_memory)
    out = run_json(BATCHES, vgpud.env)
    assert out["prefetch"] == 0 and out["resident"] == 12  # 8 MiB and 4 MiB now count on device 0
    assert out["split"] == 0 and out["last"] == [-1, 1]  # the first to the host, the second to device 1
    assert out["after_split"] == 0
    assert out["discard"] == 0 and out["discarded"] == 4  # discarded pages leave device 1
    assert out["discard_prefetch"] == 0 and out["after_discard_prefetch"] == 2
    assert out["not_managed"] == 1 and out["first_not_zero"] == 1 and out["not_rising"] == 1
    assert out["too_many_locations"] == 1 and out["bad_device"] == 101
    assert out["flags"] == 1 and out["empty"] == 1
