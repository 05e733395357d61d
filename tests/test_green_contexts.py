"""Green contexts (cuda-python): SM resources of a device, split into groups, gathered into a
descriptor and given to a green context; its streams, its memory, launches modelled on its
SMs only; and what cuBLAS 13.10 and cuDNN 9.28 ask of every stream (cuStreamGetGreenCtx)."""

from __future__ import annotations

from tests.conftest import CUDA_PYTHON, run_json

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)

PRELUDE = CUDA_PYTHON + """
SM = cu.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM
ok(cu.cuInit(0))
out = {}
"""

ORDINARY_STREAMS = PRELUDE + """
dev = ok(cu.cuDeviceGet(0))
ok(cu.cuCtxSetCurrent(ok(cu.cuDevicePrimaryCtxRetain(dev))))
stream = ok(cu.cuStreamCreate(0))
out["stream"] = int(ok(cu.cuStreamGetGreenCtx(stream)) or 0)
out["null"] = int(ok(cu.cuStreamGetGreenCtx(0)) or 0)
out["legacy"] = int(ok(cu.cuStreamGetGreenCtx(cu.CU_STREAM_LEGACY)) or 0)
print(json.dumps(out))
"""


def test_an_ordinary_stream_has_no_green_context(vgpud):
    # a real driver answers success and NULL; cuBLAS 13.10 and cuDNN 9.28 take an error as fatal
    assert run_json(ORDINARY_STREAMS, vgpud.env) == {"stream": 0, "null": 0, "legacy": 0}


RESOURCES = PRELUDE + """
def sm(resource):
    return [resource.sm.smCount, resource.sm.minSmPartitionSize, resource.sm.smCoscheduledAlignment]
for ordinal in range(ok(cu.cuDeviceGetCount())):
    dev = ok(cu.cuDeviceGet(ordinal))
    out[ok(cu.cuDeviceGetName(64, dev)).split(b"\\0")[0].decode()] = sm(ok(cu.cuDeviceGetDevResource(dev, SM)))
dev = ok(cu.cuDeviceGet(0))
ok(cu.cuCtxSetCurrent(ok(cu.cuDevicePrimaryCtxRetain(dev))))
whole = ok(cu.cuDeviceGetDevResource(dev, SM))
out["context"] = sm(ok(cu.cuCtxGetDevResource(0, SM)))
out["query"] = ok(cu.cuDevSmResourceSplitByCount(0, whole, 0, 16))[1]
groups, count, remaining = ok(cu.cuDevSmResourceSplitByCount(2, whole, 0, 20))
out["split"] = [count, [sm(g) for g in groups[:count]], sm(remaining)]
out["too_many"] = code(cu.cuDevSmResourceSplitByCount(1, whole, 0, 1000))
out["again"] = code(cu.cuDevSmResourceSplitByCount(1, groups[0], 0, 8))
other = ok(cu.cuDevSmResourceSplitByCount(1, whole, 0, 8))[0]
out["mixed"] = code(cu.cuDevResourceGenerateDesc([groups[0], other[0]], 2))
desc = ok(cu.cuDevResourceGenerateDesc(groups[:2], 2))
out["no_stream_flag"] = code(cu.cuGreenCtxCreate(desc, dev, 0))
out["other_device"] = code(cu.cuGreenCtxCreate(desc, ok(cu.cuDeviceGet(1)), cu.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM))
green = ok(cu.cuGreenCtxCreate(desc, dev, cu.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM))
out["green"] = sm(ok(cu.cuGreenCtxGetDevResource(green, SM)))
out["id"] = ok(cu.cuGreenCtxGetId(green)) > 0
ctx = ok(cu.cuCtxFromGreenCtx(green))
out["green_context"] = sm(ok(cu.cuCtxGetDevResource(ctx, SM)))
out["destroy_as_context"] = code(cu.cuCtxDestroy(ctx))
ok(cu.cuGreenCtxDestroy(green))
out["after_destroy"] = code(cu.cuCtxFromGreenCtx(green))
out["bad_type"] = code(cu.cuDeviceGetDevResource(dev, cu.CUdevResourceType.CU_DEV_RESOURCE_TYPE_INVALID))
print(json.dumps(out))
"""


def test_sm_resources_split_into_groups_and_a_green_context(vgpud):
    out = run_json(RESOURCES, vgpud.env)
    # compute capability 9.0: groups of at least 8 SMs, in steps of 8; 8.9: 4 and 2
    assert out["NVIDIA H100 80GB HBM3"] == [132, 8, 8]
    assert out["NVIDIA L4"] == [58, 4, 2] and out["NVIDIA GeForce RTX 4090"] == [128, 4, 2]
    assert out["context"] == [132, 8, 8]
    assert out["query"] == 132 // 16
    assert out["split"] == [2, [[24, 8, 8], [24, 8, 8]], [132 - 48, 8, 8]]  # 20 rounds up to 24
    assert out["too_many"] == 1  # CUDA_ERROR_INVALID_VALUE: more SMs than there are
    assert out["again"] == 915 and out["mixed"] == 915  # CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION
    assert out["no_stream_flag"] == 1 and out["other_device"] == 101
    assert out["green"] == [48, 8, 8] and out["green_context"] == [48, 8, 8] and out["id"]
    assert out["destroy_as_context"] == 201  # a green context is destroyed with cuGreenCtxDestroy
    assert out["after_destroy"] == 400 and out["bad_type"] == 914  # CUDA_ERROR_INVALID_RESOURCE_TYPE


WORK = PRELUDE + """
import ctypes
PTX = b'''
.version 8.0
.target sm_90
.address_size 64
.visible .entry spin() { ret; }
'''
dev = ok(cu.cuDeviceGet(0))
primary = ok(cu.cuDevicePrimaryCtxRetain(dev))
ok(cu.cuCtxSetCurrent(primary))
function = ok(cu.cuModuleGetFunction(ok(cu.cuModuleLoadData(PTX)), b"spin"))
whole = ok(cu.cuDeviceGetDevResource(dev, SM))
groups, count, _ = ok(cu.cuDevSmResourceSplitByCount(1, whole, 0, 16))
green = ok(cu.cuGreenCtxCreate(ok(cu.cuDevResourceGenerateDesc(groups, 1)), dev,
                               cu.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM))
plain = ok(cu.cuStreamCreate(0))
own = ok(cu.cuGreenCtxStreamCreate(green, cu.CUstream_flags.CU_STREAM_NON_BLOCKING, 0))
out["own_flags"] = code(cu.cuGreenCtxStreamCreate(green, 0, 0))
ctx = ok(cu.cuCtxFromGreenCtx(green))
ok(cu.cuCtxSetCurrent(ctx))
inside = ok(cu.cuStreamCreate(cu.CUstream_flags.CU_STREAM_NON_BLOCKING))
out["streams"] = [int(ok(cu.cuStreamGetGreenCtx(s)) or 0) == int(green) for s in (plain, own, inside, 0)]
context_of, green_of = ok(cu.cuStreamGetCtx_v2(own))
out["get_ctx_v2"] = [int(context_of) == int(primary), int(green_of or 0) == int(green)]
context_of, green_of = ok(cu.cuStreamGetCtx_v2(plain))
out["get_ctx_v2_plain"] = [int(context_of) == int(primary), int(green_of or 0)]
# memory and copies in the green context
size = 1 << 20
data = bytes(range(256)) * (size // 256)
ptr = ok(cu.cuMemAlloc(size))
ok(cu.cuMemcpyHtoDAsync(ptr, data, size, own))
back = bytearray(size)
ok(cu.cuMemcpyDtoHAsync(back, ptr, size, own))
ok(cu.cuStreamSynchronize(own))
out["copy"] = bytes(back) == data
# the same launches take longer on 16 SMs than on all 132
def timed(stream):
    start, end = ok(cu.cuEventCreate(0)), ok(cu.cuEventCreate(0))
    ok(cu.cuEventRecord(start, stream))
    for _ in range(4):
        ok(cu.cuLaunchKernel(function, 132 * 8 * 10, 1, 1, 256, 1, 1, 0, stream, 0, 0))
    ok(cu.cuEventRecord(end, stream))
    ok(cu.cuEventSynchronize(end))
    return ok(cu.cuEventElapsedTime(start, end))
out["green_ms"] = timed(own)
ok(cu.cuCtxSetCurrent(primary))
out["primary_ms"] = timed(plain)
ok(cu.cuStreamDestroy(own)); ok(cu.cuStreamDestroy(inside))
ok(cu.cuGreenCtxDestroy(green))
print(json.dumps(out))
"""


def test_a_green_context_has_streams_memory_and_fewer_sms(vgpud):
    out = run_json(WORK, vgpud.env)
    assert out["streams"] == [False, True, True, True]  # made in the green context, or current in it
    assert out["own_flags"] == 1  # cuGreenCtxStreamCreate needs CU_STREAM_NON_BLOCKING
    assert out["copy"]
    assert out["get_ctx_v2_plain"] == [True, 0]
    if vgpud.through != "cuda-backend":  # the real driver has no green context of the library's
        assert out["get_ctx_v2"] == [True, True]  # the device's primary context, and the green one
        assert out["green_ms"] > 5 * out["primary_ms"] > 0  # the real driver runs the launches
