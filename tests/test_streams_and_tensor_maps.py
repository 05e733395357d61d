"""What a stream and a context say about themselves (context, device, id, attributes, cache
preferences), and tensor maps: the 128-byte descriptors cuTensorMapEncode* write, checked
against the layout docs/cuda.md documents, rebuilt here field by field from that table."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_json
from vgpu.api.manifest import load
from vgpu.launcher import library_path

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)
C = load("cuda").constants
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
REPOSITORY = Path(__file__).resolve().parent.parent

PRELUDE = """
import ctypes, json
from cuda.bindings import driver as cu
def ok(result):
    err = result[0] if isinstance(result, tuple) else result
    assert int(err) == 0, (err, result)
    if not isinstance(result, tuple) or len(result) == 1:
        return None
    return result[1] if len(result) == 2 else result[1:]
def code(result):
    return int(result[0] if isinstance(result, tuple) else result)
ok(cu.cuInit(0))
"""

STREAMS = PRELUDE + """
out = {}
lib = ctypes.CDLL("libcuda.so.1")
dev0, dev1 = ok(cu.cuDeviceGet(0)), ok(cu.cuDeviceGet(1))
primary0 = ok(cu.cuDevicePrimaryCtxRetain(dev0))
primary1 = ok(cu.cuDevicePrimaryCtxRetain(dev1))
ok(cu.cuCtxSetCurrent(primary1))
s1 = ok(cu.cuStreamCreateWithPriority(0, -3))
created = ok(cu.cuCtxCreate(None, 0, dev0))  # made current
s0 = ok(cu.cuStreamCreate(0))
out["ctx_of_created_streams"] = [int(ok(cu.cuStreamGetCtx(s1))) == int(primary1),
                                 int(ok(cu.cuStreamGetCtx(s0))) == int(created)]
ctx, green = ok(cu.cuStreamGetCtx_v2(s1))
out["ctx_v2"] = [int(ctx) == int(primary1), int(green)]
out["device_of_streams"] = [int(ok(cu.cuStreamGetDevice(s1))), int(ok(cu.cuStreamGetDevice(s0)))]
defaults = [cu.CUstream(0), cu.CUstream(cu.CU_STREAM_LEGACY), cu.CUstream(cu.CU_STREAM_PER_THREAD)]
out["default_ctx_follows_current"] = [int(ok(cu.cuStreamGetCtx(s))) == int(created) for s in defaults]
ok(cu.cuCtxSetCurrent(primary1))
out["default_ctx_follows_current"] += [int(ok(cu.cuStreamGetCtx(s))) == int(primary1) for s in defaults]
out["default_device"] = [int(ok(cu.cuStreamGetDevice(s))) for s in defaults]
handle = ctypes.c_void_p()
out["ptsz_null"] = [lib.cuStreamGetCtx_ptsz(None, ctypes.byref(handle)), handle.value == int(primary1)]
ids = [int(ok(cu.cuStreamGetId(s))) for s in (s0, s1, defaults[0])]
out["ids_distinct"] = len(set(ids)) == 3
out["ids_stable"] = ids == [int(ok(cu.cuStreamGetId(s))) for s in (s0, s1, defaults[0])]
out["ctx_ids"] = [int(ok(cu.cuCtxGetId(primary0))), int(ok(cu.cuCtxGetId(primary1))),
                  int(ok(cu.cuCtxGetId(None))) == int(ok(cu.cuCtxGetId(primary1))),
                  int(ok(cu.cuCtxGetId(created))) not in (int(ok(cu.cuCtxGetId(primary0))), int(ok(cu.cuCtxGetId(primary1))))]
number = ctypes.c_ulonglong()
out["ctx_id_null_out"] = lib.cuCtxGetId(None, None)

# attributes: defaults, values kept and read back, refusals
A = cu.CUstreamAttrID
prio = ok(cu.cuStreamGetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_PRIORITY))
sync = ok(cu.cuStreamGetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY))
window = ok(cu.cuStreamGetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW))
out["defaults"] = [prio.priority, int(sync.syncPolicy), int(window.accessPolicyWindow.num_bytes)]
value = cu.CUstreamAttrValue()
value.priority = -1
ok(cu.cuStreamSetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_PRIORITY, value))
out["priority_set"] = [ok(cu.cuStreamGetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_PRIORITY)).priority,
                       ok(cu.cuStreamGetPriority(s1))]
value = cu.CUstreamAttrValue()
value.syncPolicy = cu.CUsynchronizationPolicy.CU_SYNC_POLICY_BLOCKING_SYNC
ok(cu.cuStreamSetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY, value))
out["sync_set"] = int(ok(cu.cuStreamGetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY)).syncPolicy)
def window_value(num_bytes, ratio, hit, miss):
    value = cu.CUstreamAttrValue()
    value.accessPolicyWindow.base_ptr = 0x7f0000000000
    value.accessPolicyWindow.num_bytes = num_bytes
    value.accessPolicyWindow.hitRatio = ratio
    value.accessPolicyWindow.hitProp = hit
    value.accessPolicyWindow.missProp = miss
    return value
P = cu.CUaccessProperty
ok(cu.cuStreamSetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW,
                           window_value(1 << 20, 0.5, P.CU_ACCESS_PROPERTY_PERSISTING, P.CU_ACCESS_PROPERTY_STREAMING)))
back = ok(cu.cuStreamGetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW)).accessPolicyWindow
out["window_set"] = [int(back.base_ptr), int(back.num_bytes), back.hitRatio, int(back.hitProp), int(back.missProp)]
out["window_refused"] = [
    code(cu.cuStreamSetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW,
                                 window_value(1 << 20, 0.5, P.CU_ACCESS_PROPERTY_NORMAL, P.CU_ACCESS_PROPERTY_PERSISTING))),
    code(cu.cuStreamSetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW,
                                 window_value(1 << 20, 1.5, P.CU_ACCESS_PROPERTY_NORMAL, P.CU_ACCESS_PROPERTY_NORMAL))),
    code(cu.cuStreamSetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW,
                                 window_value(1 << 40, 0.5, P.CU_ACCESS_PROPERTY_NORMAL, P.CU_ACCESS_PROPERTY_NORMAL)))]
bad = cu.CUstreamAttrValue()
bad.syncPolicy = 9
out["sync_refused"] = code(cu.cuStreamSetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY, bad))
out["not_a_stream_attribute"] = code(cu.cuStreamGetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_COOPERATIVE))
domains = ok(cu.cuStreamGetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN_MAP)).memSyncDomainMap
out["domain_map_default"] = [domains.default_, domains.remote]
value = cu.CUstreamAttrValue()
value.memSyncDomainMap.default_, value.memSyncDomainMap.remote = 2, 3
ok(cu.cuStreamSetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN_MAP, value))
domains = ok(cu.cuStreamGetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN_MAP)).memSyncDomainMap
out["domain_map_set"] = [domains.default_, domains.remote]
value.memSyncDomainMap.default_ = 4
out["domain_map_refused"] = code(cu.cuStreamSetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN_MAP, value))
value = cu.CUstreamAttrValue()
value.memSyncDomain = cu.CUlaunchMemSyncDomain.CU_LAUNCH_MEM_SYNC_DOMAIN_REMOTE
ok(cu.cuStreamSetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN, value))
out["domain_set"] = int(ok(cu.cuStreamGetAttribute(s1, A.CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN)).memSyncDomain)
s2 = ok(cu.cuStreamCreate(0))
ok(cu.cuStreamCopyAttributes(s2, s1))
copied = ok(cu.cuStreamGetAttribute(s2, A.CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW)).accessPolicyWindow
out["copied"] = [int(copied.num_bytes), int(ok(cu.cuStreamGetAttribute(s2, A.CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY)).syncPolicy)]
raw = (ctypes.c_char * 64)()
out["ptsz_attribute"] = [lib.cuStreamGetAttribute_ptsz(ctypes.c_void_p(int(s1)), 8, raw),
                         ctypes.c_int.from_buffer(raw).value]

# cache preferences: kept per context; shared memory banks fixed at four bytes
out["cache_default"] = int(ok(cu.cuCtxGetCacheConfig()))
ok(cu.cuCtxSetCacheConfig(cu.CUfunc_cache.CU_FUNC_CACHE_PREFER_SHARED))
out["cache_set"] = int(ok(cu.cuCtxGetCacheConfig()))
ok(cu.cuCtxSetCurrent(primary0))
out["cache_other_context"] = int(ok(cu.cuCtxGetCacheConfig()))
out["cache_refused"] = lib.cuCtxSetCacheConfig(4)
out["shared_config"] = [int(ok(cu.cuCtxGetSharedMemConfig())),
                        code(cu.cuCtxSetSharedMemConfig(cu.CUsharedconfig.CU_SHARED_MEM_CONFIG_EIGHT_BYTE_BANK_SIZE)),
                        int(ok(cu.cuCtxGetSharedMemConfig())), lib.cuCtxSetSharedMemConfig(3)]

# refusals: destroyed streams and contexts, no current context
ok(cu.cuStreamDestroy(s2))
out["destroyed_stream"] = [code(cu.cuStreamGetCtx(s2)), code(cu.cuStreamGetId(s2)), code(cu.cuStreamGetDevice(s2))]
ok(cu.cuCtxDestroy(created))
out["destroyed_ctx_id"] = code(cu.cuCtxGetId(created))
ok(cu.cuCtxSetCurrent(None))
out["no_context"] = [code(cu.cuCtxGetId(None)), code(cu.cuCtxGetCacheConfig()), code(cu.cuCtxSetCacheConfig(0)),
                     code(cu.cuCtxGetSharedMemConfig())]
print(json.dumps(out))
"""


def test_stream_and_context_getters(vgpud):
    out = run_json(STREAMS, vgpud.env)
    invalid_value, invalid_handle = C["CUDA_ERROR_INVALID_VALUE"], C["CUDA_ERROR_INVALID_HANDLE"]
    invalid_context = C["CUDA_ERROR_INVALID_CONTEXT"]
    assert out["ctx_of_created_streams"] == [True, True]
    assert out["ctx_v2"] == [True, 0]  # an ordinary stream has no green context
    assert out["device_of_streams"] == [1, 0]
    assert out["default_ctx_follows_current"] == [True] * 6
    assert out["default_device"] == [1, 1, 1]
    assert out["ptsz_null"] == [0, True]
    assert out["ids_distinct"] and out["ids_stable"]
    assert out["ctx_ids"][:2] == [1, 2] and out["ctx_ids"][2:] == [True, True]
    assert out["ctx_id_null_out"] == invalid_value
    assert out["defaults"] == [-3, C["CU_SYNC_POLICY_AUTO"], 0]
    assert out["priority_set"] == [-1, -1]
    assert out["sync_set"] == C["CU_SYNC_POLICY_BLOCKING_SYNC"]
    assert out["window_set"] == [0x7f0000000000, 1 << 20, 0.5, C["CU_ACCESS_PROPERTY_PERSISTING"],
                                 C["CU_ACCESS_PROPERTY_STREAMING"]]
    assert out["window_refused"] == [invalid_value] * 3
    assert out["sync_refused"] == invalid_value
    assert out["not_a_stream_attribute"] == invalid_value
    assert out["domain_map_default"] == [0, 1]  # H100: four domains, remote traffic in domain 1
    assert out["domain_map_set"] == [2, 3]
    assert out["domain_map_refused"] == invalid_value
    assert out["domain_set"] == C["CU_LAUNCH_MEM_SYNC_DOMAIN_REMOTE"]
    assert out["copied"] == [1 << 20, C["CU_SYNC_POLICY_BLOCKING_SYNC"]]
    assert out["ptsz_attribute"] == [0, -1]
    assert out["cache_default"] == C["CU_FUNC_CACHE_PREFER_NONE"]
    assert out["cache_set"] == C["CU_FUNC_CACHE_PREFER_SHARED"]
    assert out["cache_other_context"] == C["CU_FUNC_CACHE_PREFER_NONE"]
    assert out["cache_refused"] == invalid_value
    four = C["CU_SHARED_MEM_CONFIG_FOUR_BYTE_BANK_SIZE"]
    assert out["shared_config"] == [four, 0, four, invalid_value]
    assert out["destroyed_stream"] == [invalid_handle] * 3
    assert out["destroyed_ctx_id"] == invalid_context
    assert out["no_context"] == [invalid_context] * 4


FUNCTION_CACHE = PRELUDE + """
ok(cu.cuCtxSetCurrent(ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(0))))))
ptx = b".version 7.0\\n.target sm_80\\n.address_size 64\\n.visible .entry noop()\\n{\\n ret;\\n}\\n\\0"
function = ok(cu.cuModuleGetFunction(ok(cu.cuModuleLoadData(ptx)), b"noop"))
kernel = ok(cu.cuLibraryGetKernel(ok(cu.cuLibraryLoadData(ptx, None, None, 0, None, None, 0)), b"noop"))
F, S = cu.CUfunc_cache, cu.CUsharedconfig
lib = ctypes.CDLL("libcuda.so.1")
print(json.dumps([code(cu.cuFuncSetCacheConfig(function, F.CU_FUNC_CACHE_PREFER_L1)),
                  lib.cuFuncSetCacheConfig(ctypes.c_void_p(int(function)), 4),
                  code(cu.cuKernelSetCacheConfig(kernel, F.CU_FUNC_CACHE_PREFER_SHARED, ok(cu.cuDeviceGet(0)))),
                  lib.cuKernelSetCacheConfig(ctypes.c_void_p(int(kernel)), 9, 0),
                  code(cu.cuFuncSetSharedMemConfig(function, S.CU_SHARED_MEM_CONFIG_EIGHT_BYTE_BANK_SIZE)),
                  lib.cuFuncSetSharedMemConfig(ctypes.c_void_p(int(function)), 3)]))
"""


def test_function_cache_preferences(vgpud):
    invalid = C["CUDA_ERROR_INVALID_VALUE"]
    assert run_json(FUNCTION_CACHE, vgpud.env) == [0, invalid, 0, invalid, 0, invalid]

# ---- tensor maps ---------------------------------------------------------------------------

#: CUtensorMapDataType -> (the descriptor's element format, per docs/cuda.md; bytes per element)
FORMATS = {0: (0, 1), 1: (1, 2), 2: (2, 4), 3: (3, 4), 4: (4, 8), 5: (5, 8), 6: (6, 2), 7: (7, 4), 8: (9, 8),
           9: (10, 2), 10: (8, 4), 11: (11, 4), 12: (12, 4), 13: (13, 0.5), 14: (14, 1), 15: (15, 1)}


def descriptor(dtype: int, rank: int, address: int, dims: list[int], strides: list[int], element_strides: list[int],
               interleave: int = 0, swizzle: int = 0, l2: int = 0, oob: int = 0, box: list[int] | None = None,
               lower: list[int] | None = None, upper: list[int] | None = None, channels: int = 0,
               pixels: int = 0, wide: bool = False, w128: bool = False) -> list[int]:
    """The 16 words docs/cuda.md's table gives for these arguments."""
    im2col = box is None
    atom = {4: 1, 5: 2, 6: 3}.get(swizzle, 0)
    header = (int(im2col) | 1 << 1 | (rank - 1) << 4 | FORMATS[dtype][0] << 7 | interleave << 11
              | min(swizzle, 3) << 13 | oob << 15 | l2 << 17 | atom << 19 | int(wide) << 21 | int(w128) << 22)
    low = [(s >> 4) & 0xFFFFFFFF for s in strides] + [0] * (4 - len(strides))
    high = sum(((s >> 4) >> 32 & 0xF) << (4 * i) for i, s in enumerate(strides))
    sizes = [d - 1 for d in dims] + [0] * (5 - rank)
    traversal = sum((e - 1) << (3 * i) for i, e in enumerate(element_strides))
    if im2col:
        traversal |= (channels - 1) << 24
        bits = 16 if wide else {3: 16, 4: 8, 5: 5}[rank]
        mask = (1 << bits) - 1
        corners = sum((lo & mask) << (bits * i) for i, lo in enumerate(lower))
        corners |= sum((hi & mask) << (bits * i) for i, hi in enumerate(upper)) << 16
        tail = [corners, 0 if w128 else pixels - 1]
    else:
        traversal |= (box[0] - 1) << 24
        tail = [sum((b - 1) << (8 * (i - 1)) for i, b in enumerate(box) if i), 0]
    raw = struct.pack("<QI4II5I3I", address, header, *low, high, *sizes, traversal, *tail) + bytes(64)
    return list(struct.unpack("<16Q", raw))


BASE = 0x7F12_3400_0000  # a 256-byte-aligned global address
TILED = {
    "fp16 2D, 128B swizzle, L2 128B": dict(dtype=6, rank=2, dims=[1024, 512], strides=[2048], box=[64, 128],
                                          element_strides=[1, 1], swizzle=3, l2=2),
    "fp32 1D": dict(dtype=7, rank=1, dims=[1000], strides=[], box=[32], element_strides=[1]),
    "bf16 5D, strides past 2^32, element strides": dict(
        dtype=9, rank=5, dims=[64, 8, 4, 2, 3], strides=[128, 1024, 0x1_2345_6780, 0xF0_0000_0010],
        box=[64, 8, 4, 2, 3], element_strides=[1, 2, 3, 4, 8], l2=3),
    "u8 3D, 32B interleave": dict(dtype=0, rank=3, dims=[32, 100, 7], strides=[64, 6400], box=[32, 16, 7],
                                  element_strides=[1, 1, 1], interleave=2, swizzle=1),
    "fp32 NaN fill, 128B with 64B atoms": dict(dtype=7, rank=2, dims=[256, 256], strides=[1024], box=[32, 256],
                                               element_strides=[1, 1], swizzle=6, oob=1),
    "tf32 ftz, 128B with 32B atoms and flip": dict(dtype=12, rank=2, dims=[64, 64], strides=[256], box=[16, 1],
                                                   element_strides=[1, 1], swizzle=5, l2=1),
    "fp64 4D, 16B interleave": dict(dtype=8, rank=4, dims=[2, 3, 4, 5], strides=[16, 48, 192], box=[2, 3, 4, 5],
                                    element_strides=[1, 1, 1, 1], interleave=1),
    "packed fp4 16U4_ALIGN16B": dict(dtype=14, rank=2, dims=[256, 16], strides=[128], box=[128, 16],
                                     element_strides=[1, 1], swizzle=3),
}
IM2COL = {
    "fp16 NHWC": dict(dtype=6, rank=4, dims=[64, 32, 32, 8], strides=[128, 4096, 131072], lower=[-1, -1],
                      upper=[1, 1], channels=64, pixels=128, element_strides=[1, 1, 1, 1], swizzle=3),
    "s32 NWC": dict(dtype=3, rank=3, dims=[8, 1000, 2], strides=[32, 32000], lower=[-300], upper=[299],
                    channels=8, pixels=1024, element_strides=[1, 2, 1]),
    "u16 NDHWC": dict(dtype=1, rank=5, dims=[16, 9, 9, 9, 2], strides=[32, 288, 2592, 23328], lower=[-16, 0, 3],
                      upper=[15, -2, 0], channels=16, pixels=7, element_strides=[1, 1, 1, 1, 1]),
}
WIDE = {
    "fp16 NHWC, W": dict(dtype=6, rank=4, dims=[64, 32, 32, 8], strides=[128, 4096, 131072], lower=[-4],
                         upper=[4], channels=32, pixels=64, element_strides=[1, 1, 1, 1], swizzle=2),
    "u8 NWC, W128": dict(dtype=0, rank=3, dims=[128, 500, 2], strides=[128, 64000], lower=[0], upper=[0],
                         channels=128, pixels=0, element_strides=[1, 1, 1], swizzle=4, w128=True),
}

ENCODE = PRELUDE + """
ok(cu.cuCtxSetCurrent(ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(0))))))
cases = json.loads(CASES)
T, I, S = cu.CUtensorMapDataType, cu.CUtensorMapInterleave, cu.CUtensorMapSwizzle
L, F = cu.CUtensorMapL2promotion, cu.CUtensorMapFloatOOBfill
def words(result):
    return [int(w) for w in result[1].opaque] if code(result) == 0 else code(result)
def w64(values):
    return [cu.cuuint64_t(v) for v in values]
def w32(values):
    return [cu.cuuint32_t(v) for v in values]
out = {}
for name, a in cases["tiled"].items():
    out[name] = words(cu.cuTensorMapEncodeTiled(T(a["dtype"]), cu.cuuint32_t(a["rank"]), a["address"], w64(a["dims"]),
                                     w64(a["strides"]), w32(a["box"]), w32(a["element_strides"]), I(a.get("interleave", 0)), S(a.get("swizzle", 0)),
                                     L(a.get("l2", 0)), F(a.get("oob", 0))))
for name, a in cases["im2col"].items():
    out[name] = words(cu.cuTensorMapEncodeIm2col(T(a["dtype"]), cu.cuuint32_t(a["rank"]), a["address"], w64(a["dims"]),
                                      w64(a["strides"]), a["lower"], a["upper"], cu.cuuint32_t(a["channels"]),
                                      cu.cuuint32_t(a["pixels"]), w32(a["element_strides"]),
                                      I(a.get("interleave", 0)), S(a.get("swizzle", 0)), L(a.get("l2", 0)),
                                      F(a.get("oob", 0))))
for name, a in cases["wide"].items():
    out[name] = words(cu.cuTensorMapEncodeIm2colWide(T(a["dtype"]), cu.cuuint32_t(a["rank"]), a["address"], w64(a["dims"]),
                                          w64(a["strides"]), a["lower"][0], a["upper"][0],
                                          cu.cuuint32_t(a["channels"]), cu.cuuint32_t(a["pixels"]),
                                          w32(a["element_strides"]), I(0), cu.CUtensorMapIm2ColWideMode(int(a.get("w128", False))),
                                          S(a["swizzle"]), L(0), F(0)))
print(json.dumps(out))
"""


def test_tensor_maps_have_the_documented_layout(vgpud):
    import json

    cases = {"tiled": TILED, "im2col": IM2COL, "wide": WIDE}
    cases = {kind: {name: dict(args, address=BASE) for name, args in group.items()} for kind, group in cases.items()}
    out = run_json(f"CASES = {json.dumps(json.dumps(cases))}\n" + ENCODE, vgpud.env)
    for name, args in {**TILED, **IM2COL}.items():
        assert out[name] == descriptor(address=BASE, **args), name
    for name, args in WIDE.items():
        assert out[name] == descriptor(address=BASE, wide=True, **args), name
    # one word by hand, so that a mistake shared by encoder and table would show: fp16 2D's header
    # (version 1 << 1, rank-1 1 << 4, format 6 << 7, swizzle 3 << 13, L2 2 << 17) and first stride
    assert out["fp16 2D, 128B swizzle, L2 128B"][1] == 0x46312 | (2048 >> 4) << 32


REFUSALS = PRELUDE + """
lib = ctypes.CDLL("libcuda.so.1")
u64, u32 = ctypes.c_uint64, ctypes.c_uint32
class Map(ctypes.Structure):
    _fields_ = [("opaque", u64 * 16)]
    _pack_ = 8
raw = (ctypes.c_char * 256)()
aligned = (ctypes.addressof(raw) + 63) & ~63
ok(cu.cuCtxSetCurrent(ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(0))))))
BASE = 0x7F1234000000
def tiled(dtype=6, rank=2, address=BASE, dims=(1024, 512), strides=(2048,), box=(64, 128), es=(1, 1),
          interleave=0, swizzle=0, l2=0, oob=0, where=None, null=()):
    arrays = {"dims": (u64 * 5)(*dims), "strides": (u64 * 4)(*strides), "box": (u32 * 5)(*box), "es": (u32 * 5)(*es)}
    for name in null:
        arrays[name] = None
    return lib.cuTensorMapEncodeTiled(ctypes.c_void_p(aligned if where is None else where), dtype, rank,
                                      ctypes.c_void_p(address), arrays["dims"], arrays["strides"], arrays["box"],
                                      arrays["es"], interleave, swizzle, l2, oob)
def im2col(dtype=6, rank=4, address=BASE, dims=(64, 32, 32, 8), strides=(128, 4096, 131072), lower=(-1, -1),
           upper=(1, 1), channels=64, pixels=128, es=(1, 1, 1, 1), interleave=0, swizzle=0, oob=0, null=()):
    arrays = {"lower": (ctypes.c_int * 3)(*lower), "upper": (ctypes.c_int * 3)(*upper)}
    for name in null:
        arrays[name] = None
    return lib.cuTensorMapEncodeIm2col(ctypes.c_void_p(aligned), dtype, rank, ctypes.c_void_p(address),
                                       (u64 * 5)(*dims), (u64 * 4)(*strides), arrays["lower"], arrays["upper"],
                                       channels, pixels, (u32 * 5)(*es), interleave, swizzle, 0, oob)
def wide(dtype=6, rank=4, lower=-4, upper=4, channels=32, pixels=64, mode=0, swizzle=2, dims=(64, 32, 32, 8)):
    return lib.cuTensorMapEncodeIm2colWide(ctypes.c_void_p(aligned), dtype, rank, ctypes.c_void_p(BASE),
                                           (u64 * 5)(*dims), (u64 * 4)(128, 4096, 131072), lower, upper, channels,
                                           pixels, (u32 * 5)(1, 1, 1, 1), 0, mode, swizzle, 0, 0)
# cuda.h asks for a 64-byte-aligned map; cuda-python's own maps are 16-byte aligned, and accepted
out = {"valid": [tiled(), im2col(), wide(), tiled(where=aligned + 16)]}
out["tiled"] = [
    tiled(where=0), tiled(dtype=16), tiled(rank=0), tiled(rank=6),
    tiled(rank=2, interleave=1), tiled(address=BASE + 8), tiled(rank=3, dims=(32, 4, 4), strides=(64, 256),
    box=(16, 4, 4), es=(1, 1, 1), interleave=2, swizzle=1, address=BASE + 16),
    tiled(dims=(0, 512)), tiled(dims=((1 << 32) + 1, 512)), tiled(strides=(2056,)), tiled(strides=(1 << 40,)),
    tiled(rank=3, dims=(32, 4, 4), strides=(64, 272), box=(16, 4, 4), es=(1, 1, 1), interleave=2, swizzle=1),
    tiled(box=(0, 128)), tiled(box=(64, 257)), tiled(box=(4, 128)), tiled(es=(1, 0)), tiled(es=(9, 1)),
    tiled(interleave=3), tiled(swizzle=7), tiled(l2=4), tiled(oob=2), tiled(swizzle=1), tiled(swizzle=2),
    tiled(box=(128, 128), swizzle=3), tiled(rank=3, dims=(32, 4, 4), strides=(64, 256), box=(16, 4, 4),
    es=(1, 1, 1), interleave=2, swizzle=3), tiled(dtype=3, oob=1), tiled(dtype=13, dims=(64, 4), box=(32, 4), oob=1),
    tiled(dtype=14, dims=(200, 4), box=(128, 4), strides=(128,)), tiled(dtype=14, dims=(256, 4), box=(64, 4), strides=(128,)),
    tiled(dtype=14, dims=(256, 4), box=(128, 4), strides=(128,), swizzle=2),
    tiled(dtype=15, dims=(256, 4), box=(128, 4), strides=(128,), swizzle=0, address=BASE + 16),
    tiled(dtype=15, dims=(256, 4), box=(128, 4), strides=(144,)),
    tiled(dtype=13, dims=(63, 4), box=(32, 4)),
    tiled(null=("dims",)), tiled(null=("strides",)), tiled(null=("box",)), tiled(null=("es",)),
]
out["im2col"] = [
    im2col(rank=2, dims=(64, 32), strides=(128,)), im2col(lower=(-129, 0)), im2col(upper=(0, 128)),
    im2col(rank=5, dims=(16, 9, 9, 9, 2), strides=(32, 288, 2592, 23328), lower=(-17, 0, 0), upper=(0, 0, 0),
           es=(1, 1, 1, 1, 1)),
    im2col(lower=(0, 1), upper=(0, -31)), im2col(channels=0), im2col(channels=257), im2col(pixels=0),
    im2col(pixels=1025), im2col(swizzle=1), im2col(null=("lower",)), im2col(null=("upper",)),
]
out["wide"] = [wide(swizzle=0), wide(swizzle=1), wide(swizzle=5), wide(mode=2), wide(lower=-32769),
               wide(lower=10, upper=-30), wide(channels=64), wide(pixels=1025), wide(rank=2, dims=(64, 32))]
out["wide_w128_ignores_pixels"] = wide(mode=1, pixels=5000, swizzle=3, channels=64)
def encode(dtype, rank, dims, strides, box, interleave, swizzle, l2):
    return ok(cu.cuTensorMapEncodeTiled(cu.CUtensorMapDataType(dtype), cu.cuuint32_t(rank), BASE,
                                        [cu.cuuint64_t(d) for d in dims], [cu.cuuint64_t(s) for s in strides],
                                        [cu.cuuint32_t(b) for b in box], [cu.cuuint32_t(1)] * rank,
                                        cu.CUtensorMapInterleave(interleave), cu.CUtensorMapSwizzle(swizzle),
                                        cu.CUtensorMapL2promotion(l2), cu.CUtensorMapFloatOOBfill(0)))
m = encode(6, 2, [1024, 512], [2048], [64, 128], 0, 3, 2)
before = [int(w) for w in m.opaque]
ok(cu.cuTensorMapReplaceAddress(m, BASE + 0x1000))
after = [int(w) for w in m.opaque]
out["replace"] = [after[0] == BASE + 0x1000, after[1:] == before[1:], code(cu.cuTensorMapReplaceAddress(m, BASE + 8))]
m32 = encode(0, 3, [32, 4, 4], [64, 256], [32, 4, 4], 2, 1, 0)
out["replace_32"] = [code(cu.cuTensorMapReplaceAddress(m32, BASE + 16)), code(cu.cuTensorMapReplaceAddress(m32, BASE + 32))]
out["replace_bad_map"] = [lib.cuTensorMapReplaceAddress(None, ctypes.c_void_p(BASE)),
                          lib.cuTensorMapReplaceAddress(ctypes.c_void_p(aligned), ctypes.c_void_p(BASE + 4))]
print(json.dumps(out))
"""


def test_tensor_map_refusals(vgpud):
    out = run_json(REFUSALS, vgpud.env)
    invalid = C["CUDA_ERROR_INVALID_VALUE"]
    assert out["valid"] == [0, 0, 0, 0]
    for kind in ("tiled", "im2col", "wide"):
        assert out[kind] == [invalid] * len(out[kind]), (kind, out[kind])
    assert out["wide_w128_ignores_pixels"] == 0
    assert out["replace"] == [True, True, invalid]
    assert out["replace_32"] == [invalid, 0]
    assert out["replace_bad_map"] == [invalid, invalid]


def test_tensor_maps_need_cu_init(vgpud):
    code = """
import ctypes, json
lib = ctypes.CDLL("libcuda.so.1")
raw = (ctypes.c_char * 256)()
aligned = (ctypes.addressof(raw) + 63) & ~63
u64, u32 = ctypes.c_uint64, ctypes.c_uint32
print(json.dumps([lib.cuTensorMapEncodeTiled(ctypes.c_void_p(aligned), 7, 1, ctypes.c_void_p(1 << 20), (u64 * 1)(64),
                                             None, (u32 * 1)(16), (u32 * 1)(1), 0, 0, 0, 0),
                  lib.cuTensorMapReplaceAddress(ctypes.c_void_p(aligned), ctypes.c_void_p(1 << 20))]))
"""
    assert run_json(code, vgpud.env) == [C["CUDA_ERROR_NOT_INITIALIZED"]] * 2


@pytest.mark.parametrize("name", sorted(TILED))
def test_documented_table_round_trip(name):
    """The table rebuilt here keeps every argument: decoding its words gives them back."""
    args = TILED[name]
    words = descriptor(address=BASE, **args)
    raw = struct.pack("<16Q", *words)
    header = struct.unpack_from("<I", raw, 8)[0]
    assert struct.unpack_from("<Q", raw, 0)[0] == BASE
    assert (header >> 4 & 7) + 1 == args["rank"]
    dims = struct.unpack_from("<5I", raw, 32)
    assert [d + 1 for d in dims[:args["rank"]]] == args["dims"]
    low, high = struct.unpack_from("<4I", raw, 12), struct.unpack_from("<I", raw, 28)[0]
    strides = [((high >> (4 * i) & 0xF) << 32 | low[i]) << 4 for i in range(args["rank"] - 1)]
    assert strides == args["strides"]
    traversal, box = struct.unpack_from("<2I", raw, 52)
    assert [(traversal >> 24) + 1] + [(box >> (8 * i) & 0xFF) + 1 for i in range(args["rank"] - 1)] == args["box"]
    assert raw[64:] == bytes(64)


@pytest.fixture(scope="module")
def tensor_maps_program(tmp_path_factory) -> Path:
    """tests/real_gpu/tensor_maps.cu, the program that records a real driver's descriptors, linked
    against this library as it would be against NVIDIA's libcuda.so."""
    if NVCC is None:
        pytest.skip("nvcc is not on this machine")
    folder = tmp_path_factory.mktemp("tensor_maps")
    (folder / "libcuda.so").symlink_to(library_path("libvgpu-cuda.so"))
    subprocess.run([NVCC, "-o", str(folder / "tensor_maps"), str(REPOSITORY / "tests/real_gpu/tensor_maps.cu"),
                    f"-L{folder}", "-lcuda"], check=True, capture_output=True)
    return folder / "tensor_maps"


def test_recorder_output_is_the_expected_file(vgpud, tensor_maps_program):
    """What a real GPU's run of the recorder is to be compared with is what vgpu answers today."""
    result = subprocess.run([str(tensor_maps_program)], env=vgpud.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == (REPOSITORY / "tests/data/tensor_maps_expected.txt").read_text()
