"""CUDA arrays (1D, 2D, 3D, layered, cubemap, NV12, mipmapped), every copy into and out of them,
2D memsets, 3D peer and batch copies, texture and surface objects, through cuda-python: contents
checked byte for byte against numpy, descriptors read back exactly, memory accounted, bad input
refused with the documented codes."""

from __future__ import annotations

from tests.conftest import CUDA_PYTHON, run_json
from tests.test_cudart import build, run_report

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)

PRELUDE = CUDA_PYTHON + """
import numpy as np
ok(cu.cuInit(0))
ctx = ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(0))))
ok(cu.cuCtxSetCurrent(ctx))
rng = np.random.default_rng(7)
out = {}
def desc3d(width, height, depth, fmt, channels, flags=0):
    d = cu.CUDA_ARRAY3D_DESCRIPTOR()
    d.Width, d.Height, d.Depth, d.Format, d.NumChannels, d.Flags = width, height, depth, fmt, channels, flags
    return d
F = cu.CUarray_format
"""

ARRAYS = PRELUDE + """
free_before = ok(cu.cuMemGetInfo())[0]
# a 2D float4 array: 100 x 37 elements of 16 bytes
d = cu.CUDA_ARRAY_DESCRIPTOR()
d.Width, d.Height, d.Format, d.NumChannels = 100, 37, F.CU_AD_FORMAT_FLOAT, 4
a2 = ok(cu.cuArrayCreate(d))
free_after = ok(cu.cuMemGetInfo())[0]
out["accounted"] = free_before - free_after >= 100 * 37 * 16
back = ok(cu.cuArrayGetDescriptor(a2))
out["desc2d"] = [back.Width, back.Height, int(back.Format), back.NumChannels]
back3 = ok(cu.cuArray3DGetDescriptor(a2))
out["desc2d_as_3d"] = [back3.Width, back3.Height, back3.Depth, int(back3.Format), back3.NumChannels, back3.Flags]

# host (pitched, with an offset) -> array -> device (pitched) -> host
image = rng.integers(0, 256, (37, 2000), dtype=np.uint8)  # rows of 2000 bytes, the copy takes 1600 from x=64
c = cu.CUDA_MEMCPY2D()
c.srcMemoryType, c.srcHost, c.srcPitch, c.srcXInBytes = cu.CUmemorytype.CU_MEMORYTYPE_HOST, image.ctypes.data, 2000, 64
c.dstMemoryType, c.dstArray = cu.CUmemorytype.CU_MEMORYTYPE_ARRAY, a2
c.WidthInBytes, c.Height = 1600, 37
out["h2a"] = code(cu.cuMemcpy2D(c))
device, pitch = ok(cu.cuMemAllocPitch(1600, 37, 16))
c = cu.CUDA_MEMCPY2D()
c.srcMemoryType, c.srcArray = cu.CUmemorytype.CU_MEMORYTYPE_ARRAY, a2
c.dstMemoryType, c.dstDevice, c.dstPitch = cu.CUmemorytype.CU_MEMORYTYPE_DEVICE, device, pitch
c.WidthInBytes, c.Height = 1600, 37
out["a2d"] = code(cu.cuMemcpy2D(c))
result = np.zeros((37, pitch), dtype=np.uint8)
ok(cu.cuMemcpyDtoH(result.ctypes.data, device, pitch * 37))
out["round_trip_2d"] = bool((result[:, :1600] == image[:, 64:1664]).all())

# a sub-rectangle out of the array, asynchronously, into page-able host memory
stream = ok(cu.cuStreamCreate(0))
part = np.zeros((5, 48), dtype=np.uint8)
c = cu.CUDA_MEMCPY2D()
c.srcMemoryType, c.srcArray, c.srcXInBytes, c.srcY = cu.CUmemorytype.CU_MEMORYTYPE_ARRAY, a2, 32, 10
c.dstMemoryType, c.dstHost, c.dstPitch = cu.CUmemorytype.CU_MEMORYTYPE_HOST, part.ctypes.data, 48
c.WidthInBytes, c.Height = 48, 5
out["a2h_async"] = code(cu.cuMemcpy2DAsync(c, stream))
ok(cu.cuStreamSynchronize(stream))
out["sub_rectangle"] = bool((part == image[10:15, 64 + 32:64 + 80]).all())

# outside the array, or not whole elements
c.srcY = 33
out["past_the_end"] = code(cu.cuMemcpy2D(c))
c.srcY, c.srcXInBytes = 0, 8
out["half_element"] = code(cu.cuMemcpy2D(c))

# 1D copies with byte offsets, array to array, array to device and back
d1 = cu.CUDA_ARRAY_DESCRIPTOR()
d1.Width, d1.Height, d1.Format, d1.NumChannels = 4096, 0, F.CU_AD_FORMAT_UNSIGNED_INT16, 2
a1 = ok(cu.cuArrayCreate(d1))
line = rng.integers(0, 256, 4096 * 4, dtype=np.uint8)
out["h2a_1d"] = code(cu.cuMemcpyHtoA(a1, 0, line.ctypes.data, line.nbytes))
a1b = ok(cu.cuArrayCreate(d1))
out["a2a"] = code(cu.cuMemcpyAtoA(a1b, 100, a1, 0, 8000))
lin = ok(cu.cuMemAlloc(line.nbytes))
out["a2d_1d"] = code(cu.cuMemcpyAtoD(lin, a1b, 0, line.nbytes))
got = np.zeros_like(line)
ok(cu.cuMemcpyDtoH(got.ctypes.data, lin, line.nbytes))
out["a2a_bytes"] = bool((got[100:8100] == line[:8000]).all() and not got[:100].any())
out["d2a"] = code(cu.cuMemcpyDtoA(a1b, 0, lin, 4096))
got = np.zeros(4096, dtype=np.uint8)
out["a2h_async_1d"] = code(cu.cuMemcpyAtoHAsync(got.ctypes.data, a1b, 0, 4096, stream))
ok(cu.cuStreamSynchronize(stream))
out["d2a_bytes"] = bool((got[100:] == line[:3996]).all())
out["h2a_async"] = code(cu.cuMemcpyHtoAAsync(a1, 16, line.ctypes.data, 64, stream))
out["beyond_1d"] = code(cu.cuMemcpyHtoA(a1, 4096 * 4 - 8, line.ctypes.data, 16))

# a layered 3D array (3 layers of 20 x 10 ushort2) through cuMemcpy3D both ways
a3 = ok(cu.cuArray3DCreate(desc3d(20, 10, 3, F.CU_AD_FORMAT_UNSIGNED_INT16, 2, cu.CUDA_ARRAY3D_LAYERED)))
back = ok(cu.cuArray3DGetDescriptor(a3))
out["desc3d"] = [back.Width, back.Height, back.Depth, back.NumChannels, back.Flags]
volume = rng.integers(0, 256, (3, 10, 80), dtype=np.uint8)
c = cu.CUDA_MEMCPY3D()
c.srcMemoryType, c.srcHost, c.srcPitch, c.srcHeight = cu.CUmemorytype.CU_MEMORYTYPE_HOST, volume.ctypes.data, 80, 10
c.dstMemoryType, c.dstArray = cu.CUmemorytype.CU_MEMORYTYPE_ARRAY, a3
c.WidthInBytes, c.Height, c.Depth = 80, 10, 3
out["h2a_3d"] = code(cu.cuMemcpy3D(c))
box = np.zeros((2, 4, 16), dtype=np.uint8)
c = cu.CUDA_MEMCPY3D()
c.srcMemoryType, c.srcArray = cu.CUmemorytype.CU_MEMORYTYPE_ARRAY, a3
c.srcXInBytes, c.srcY, c.srcZ = 8, 3, 1
c.dstMemoryType, c.dstHost, c.dstPitch, c.dstHeight = cu.CUmemorytype.CU_MEMORYTYPE_HOST, box.ctypes.data, 16, 4
c.WidthInBytes, c.Height, c.Depth = 16, 4, 2
out["a2h_3d"] = code(cu.cuMemcpy3DAsync(c, stream))
ok(cu.cuStreamSynchronize(stream))
out["box"] = bool((box == volume[1:3, 3:7, 8:24]).all())

# shapes and formats the documentation refuses
out["bad_channels"] = code(cu.cuArray3DCreate(desc3d(8, 8, 0, F.CU_AD_FORMAT_FLOAT, 3)))
out["no_width"] = code(cu.cuArray3DCreate(desc3d(0, 8, 0, F.CU_AD_FORMAT_FLOAT, 1)))
out["cubemap_not_square"] = code(cu.cuArray3DCreate(desc3d(8, 4, 6, F.CU_AD_FORMAT_FLOAT, 1, cu.CUDA_ARRAY3D_CUBEMAP)))
out["too_wide"] = code(cu.cuArray3DCreate(desc3d(1 << 20, 0, 0, F.CU_AD_FORMAT_FLOAT, 1)))
cube = ok(cu.cuArray3DCreate(desc3d(8, 8, 6, F.CU_AD_FORMAT_FLOAT, 1, cu.CUDA_ARRAY3D_CUBEMAP)))
out["sparse_properties"] = code(cu.cuArrayGetSparseProperties(cube))
out["memory_requirements"] = code(cu.cuArrayGetMemoryRequirements(cube, 0))
out["no_plane"] = code(cu.cuArrayGetPlane(cube, 0))

# NV12: the planes are arrays over the Y and interleaved UV bytes
nv = ok(cu.cuArray3DCreate(desc3d(64, 32, 0, F.CU_AD_FORMAT_NV12, 1)))
y_plane, uv_plane = ok(cu.cuArrayGetPlane(nv, 0)), ok(cu.cuArrayGetPlane(nv, 1))
uv = ok(cu.cuArrayGetDescriptor(uv_plane))
out["uv_plane"] = [uv.Width, uv.Height, int(uv.Format), uv.NumChannels]
out["plane_2"] = code(cu.cuArrayGetPlane(nv, 2))
chroma = rng.integers(0, 256, (16, 64), dtype=np.uint8)
c = cu.CUDA_MEMCPY2D()
c.srcMemoryType, c.srcHost, c.srcPitch = cu.CUmemorytype.CU_MEMORYTYPE_HOST, chroma.ctypes.data, 64
c.dstMemoryType, c.dstArray = cu.CUmemorytype.CU_MEMORYTYPE_ARRAY, uv_plane
c.WidthInBytes, c.Height = 64, 16
out["h2uv"] = code(cu.cuMemcpy2D(c))
whole = np.zeros(64 * 48, dtype=np.uint8)
ok(cu.cuMemcpyAtoH(whole.ctypes.data, nv, 0, whole.nbytes))
out["nv12_layout"] = bool((whole[64 * 32:].reshape(16, 64) == chroma).all() and not whole[:64 * 32].any())
out["destroy_plane"] = code(cu.cuArrayDestroy(y_plane))

for array in (a2, a1, a1b, a3, cube, nv):
    ok(cu.cuArrayDestroy(array))
ok(cu.cuMemFree(device))
ok(cu.cuMemFree(lin))
out["freed"] = ok(cu.cuMemGetInfo())[0] == free_before
out["destroyed_twice"] = code(cu.cuArrayDestroy(a2))
out["destroyed_used"] = code(cu.cuMemcpyHtoA(a2, 0, line.ctypes.data, 16))
print(json.dumps(out))
"""


def test_arrays_round_trip_every_copy(vgpud):
    out = run_json(ARRAYS, vgpud.env)
    FLOAT, UCHAR = 0x20, 0x01
    INVALID_VALUE, INVALID_HANDLE = 1, 400
    assert out == {
        "accounted": True, "desc2d": [100, 37, FLOAT, 4], "desc2d_as_3d": [100, 37, 0, FLOAT, 4, 0],
        "h2a": 0, "a2d": 0, "round_trip_2d": True, "a2h_async": 0, "sub_rectangle": True,
        "past_the_end": INVALID_VALUE, "half_element": INVALID_VALUE,
        "h2a_1d": 0, "a2a": 0, "a2d_1d": 0, "a2a_bytes": True, "d2a": 0, "a2h_async_1d": 0, "d2a_bytes": True,
        "h2a_async": 0, "beyond_1d": INVALID_VALUE,
        "desc3d": [20, 10, 3, 2, 1], "h2a_3d": 0, "a2h_3d": 0, "box": True,
        "bad_channels": INVALID_VALUE, "no_width": INVALID_VALUE, "cubemap_not_square": INVALID_VALUE,
        "too_wide": INVALID_VALUE, "sparse_properties": INVALID_VALUE, "memory_requirements": INVALID_VALUE,
        "no_plane": INVALID_VALUE,
        "uv_plane": [32, 16, UCHAR, 2], "plane_2": INVALID_VALUE, "h2uv": 0, "nv12_layout": True,
        "destroy_plane": INVALID_HANDLE, "freed": True, "destroyed_twice": INVALID_HANDLE,
        "destroyed_used": INVALID_HANDLE,
    }, out


MEMSETS_AND_BATCHES = PRELUDE + """
# 2D memsets of 8, 16 and 32 bits into a pitched allocation, rows left of the pitch untouched
device, pitch = ok(cu.cuMemAllocPitch(256, 16, 4))
device = int(device)
ok(cu.cuMemsetD8(device, 0xEE, pitch * 16))
out["d2d8"] = code(cu.cuMemsetD2D8(device + 3, pitch, 0x5A, 100, 16))
out["d2d16"] = code(cu.cuMemsetD2D16(device + 120, pitch, 0xBEEF, 20, 8))
stream = ok(cu.cuStreamCreate(0))
out["d2d32_async"] = code(cu.cuMemsetD2D32Async(device + 200, pitch, 0x01020304, 10, 16, stream))
ok(cu.cuStreamSynchronize(stream))
got = np.zeros((16, pitch), dtype=np.uint8)
ok(cu.cuMemcpyDtoH(got.ctypes.data, device, got.nbytes))
want = np.full((16, pitch), 0xEE, dtype=np.uint8)
want[:, 3:103] = 0x5A
want[:8, 120:160] = np.frombuffer((0xBEEF).to_bytes(2, "little") * 20, dtype=np.uint8)
want[:, 200:240] = np.frombuffer((0x01020304).to_bytes(4, "little") * 10, dtype=np.uint8)
out["memset_bytes"] = bool((got == want).all())
out["pitch_too_small"] = code(cu.cuMemsetD2D32(device, 16, 0, 8, 2))
out["misaligned"] = code(cu.cuMemsetD2D16(device + 1, pitch, 0, 4, 2))
contiguous = ok(cu.cuMemAlloc(4096))
out["contiguous"] = code(cu.cuMemsetD2D8Async(contiguous, 64, 0x77, 64, 64, stream))
ok(cu.cuStreamSynchronize(stream))
flat = np.zeros(4096, dtype=np.uint8)
ok(cu.cuMemcpyDtoH(flat.ctypes.data, contiguous, 4096))
out["contiguous_bytes"] = bool((flat == 0x77).all())

# a batch of 1D copies: host to device, device to device, device to host
n = 3000
source = rng.integers(0, 256, n, dtype=np.uint8)
a, b = ok(cu.cuMemAlloc(n)), ok(cu.cuMemAlloc(n))
sink = np.zeros(n, dtype=np.uint8)
attrs = cu.CUmemcpyAttributes()
attrs.srcAccessOrder = cu.CUmemcpySrcAccessOrder.CU_MEMCPY_SRC_ACCESS_ORDER_STREAM
P = cu.CUdeviceptr
result = cu.cuMemcpyBatchAsync([a], [P(source.ctypes.data)], [n], 1, [attrs], [0], 1, stream)
out["batch_h2d"] = code(result)
result = cu.cuMemcpyBatchAsync([b, P(sink.ctypes.data)], [a, a], [n, 1000], 2, [attrs], [0], 1, stream)
out["batch_mixed"] = code(result)
ok(cu.cuStreamSynchronize(stream))
check = np.zeros(n, dtype=np.uint8)
ok(cu.cuMemcpyDtoH(check.ctypes.data, b, n))
out["batch_bytes"] = bool((check == source).all() and (sink[:1000] == source[:1000]).all() and not sink[1000:].any())
out["batch_legacy_stream"] = code(cu.cuMemcpyBatchAsync([a], [b], [16], 1, [attrs], [0], 1, 0))
bad = cu.CUmemcpyAttributes()
out["batch_no_order"] = code(cu.cuMemcpyBatchAsync([a], [b], [16], 1, [bad], [0], 1, stream))
out["batch_first_index"] = code(cu.cuMemcpyBatchAsync([a, b], [b, a], [16, 16], 2, [attrs], [1], 1, stream))

# 3D batch: host pointer -> 2D array -> device pointer with a row length
arr = ok(cu.cuArray3DCreate(desc3d(32, 8, 0, F.CU_AD_FORMAT_UNSIGNED_INT32, 1)))
grid = rng.integers(0, 256, (8, 128), dtype=np.uint8)
op = cu.CUDA_MEMCPY3D_BATCH_OP()
op.src.type = cu.CUmemcpy3DOperandType.CU_MEMCPY_OPERAND_TYPE_POINTER
op.src.op.ptr.ptr = grid.ctypes.data
op.dst.type = cu.CUmemcpy3DOperandType.CU_MEMCPY_OPERAND_TYPE_ARRAY
op.dst.op.array.array = arr
op.extent.width, op.extent.height, op.extent.depth = 32, 8, 1
op.srcAccessOrder = cu.CUmemcpySrcAccessOrder.CU_MEMCPY_SRC_ACCESS_ORDER_STREAM
out["batch3d_h2a"] = code(cu.cuMemcpy3DBatchAsync(1, [op], 0, stream))
wide = ok(cu.cuMemAlloc(8 * 64 * 4))
ok(cu.cuMemsetD8(wide, 0, 8 * 64 * 4))
op2 = cu.CUDA_MEMCPY3D_BATCH_OP()
op2.src.type = cu.CUmemcpy3DOperandType.CU_MEMCPY_OPERAND_TYPE_ARRAY
op2.src.op.array.array = arr
op2.src.op.array.offset.x, op2.src.op.array.offset.y = 4, 2
op2.dst.type = cu.CUmemcpy3DOperandType.CU_MEMCPY_OPERAND_TYPE_POINTER
op2.dst.op.ptr.ptr = wide
op2.dst.op.ptr.rowLength = 64
op2.extent.width, op2.extent.height, op2.extent.depth = 10, 5, 1
op2.srcAccessOrder = cu.CUmemcpySrcAccessOrder.CU_MEMCPY_SRC_ACCESS_ORDER_ANY
out["batch3d_a2d"] = code(cu.cuMemcpy3DWithAttributesAsync(op2, 0, stream))
ok(cu.cuStreamSynchronize(stream))
rows = np.zeros((8, 256), dtype=np.uint8)
ok(cu.cuMemcpyDtoH(rows.ctypes.data, wide, rows.nbytes))
out["batch3d_bytes"] = bool((rows[:5, :40] == grid[2:7, 16:56]).all() and not rows[:5, 40:].any() and not rows[5:].any())
op2.extent.width = 40
out["batch3d_past_end"] = code(cu.cuMemcpy3DBatchAsync(1, [op2], 0, stream))
out["batch3d_flags"] = code(cu.cuMemcpy3DBatchAsync(1, [op], 1, stream))

# a 3D copy naming contexts (cuMemcpy3DPeer): device to device, pitched
src3, dst3 = ok(cu.cuMemAlloc(4 * 6 * 32)), ok(cu.cuMemAlloc(4 * 6 * 32))
cube = rng.integers(0, 256, (4, 6, 32), dtype=np.uint8)
ok(cu.cuMemcpyHtoD(src3, cube.ctypes.data, cube.nbytes))
ok(cu.cuMemsetD8(dst3, 0, cube.nbytes))
p = cu.CUDA_MEMCPY3D_PEER()
p.srcMemoryType, p.srcDevice, p.srcPitch, p.srcHeight, p.srcContext = cu.CUmemorytype.CU_MEMORYTYPE_DEVICE, src3, 32, 6, ctx
p.dstMemoryType, p.dstDevice, p.dstPitch, p.dstHeight, p.dstContext = cu.CUmemorytype.CU_MEMORYTYPE_DEVICE, dst3, 32, 6, ctx
p.srcXInBytes, p.srcY, p.srcZ = 8, 1, 1
p.WidthInBytes, p.Height, p.Depth = 16, 4, 3
out["peer3d"] = code(cu.cuMemcpy3DPeer(p))
got3 = np.zeros_like(cube)
ok(cu.cuMemcpyDtoH(got3.ctypes.data, dst3, got3.nbytes))
want3 = np.zeros_like(cube)
want3[:3, :4, :16] = cube[1:4, 1:5, 8:24]
out["peer3d_bytes"] = bool((got3 == want3).all())
print(json.dumps(out))
"""


def test_2d_memsets_batch_and_peer_copies(vgpud):
    out = run_json(MEMSETS_AND_BATCHES, vgpud.env)
    assert out == {
        "d2d8": 0, "d2d16": 0, "d2d32_async": 0, "memset_bytes": True, "pitch_too_small": 1, "misaligned": 1,
        "contiguous": 0, "contiguous_bytes": True,
        "batch_h2d": 0, "batch_mixed": 0, "batch_bytes": True, "batch_legacy_stream": 1, "batch_no_order": 1,
        "batch_first_index": 1,
        "batch3d_h2a": 0, "batch3d_a2d": 0, "batch3d_bytes": True, "batch3d_past_end": 1, "batch3d_flags": 1,
        "peer3d": 0, "peer3d_bytes": True,
    }, out


OBJECTS = PRELUDE + """
arr = ok(cu.cuArray3DCreate(desc3d(64, 64, 0, F.CU_AD_FORMAT_HALF, 2)))
surf_arr = ok(cu.cuArray3DCreate(desc3d(64, 64, 0, F.CU_AD_FORMAT_FLOAT, 1, cu.CUDA_ARRAY3D_SURFACE_LDST)))
res = cu.CUDA_RESOURCE_DESC()
res.resType = cu.CUresourcetype.CU_RESOURCE_TYPE_ARRAY
res.res.array.hArray = arr
tex = cu.CUDA_TEXTURE_DESC()
tex.addressMode = [cu.CUaddress_mode.CU_TR_ADDRESS_MODE_WRAP, cu.CUaddress_mode.CU_TR_ADDRESS_MODE_MIRROR,
                   cu.CUaddress_mode.CU_TR_ADDRESS_MODE_BORDER]
tex.filterMode = cu.CUfilter_mode.CU_TR_FILTER_MODE_LINEAR
tex.flags = cu.CU_TRSF_NORMALIZED_COORDINATES
tex.maxAnisotropy = 4
tex.mipmapLevelBias, tex.minMipmapLevelClamp, tex.maxMipmapLevelClamp = 0.5, 0.25, 3.0
tex.borderColor = [0.1, 0.2, 0.3, 0.4]
view = cu.CUDA_RESOURCE_VIEW_DESC()
view.format = cu.CUresourceViewFormat.CU_RES_VIEW_FORMAT_FLOAT_2X16
view.width, view.height = 64, 64
t = ok(cu.cuTexObjectCreate(res, tex, view))
t2 = ok(cu.cuTexObjectCreate(res, tex, None))
out["distinct"] = int(t) != int(t2) and int(t) != 0
r = ok(cu.cuTexObjectGetResourceDesc(t))
out["res"] = [int(r.resType), int(r.res.array.hArray) == int(arr)]
td = ok(cu.cuTexObjectGetTextureDesc(t))
out["tex"] = [[int(m) for m in td.addressMode], int(td.filterMode), td.flags, td.maxAnisotropy, td.mipmapLevelBias,
              td.minMipmapLevelClamp, td.maxMipmapLevelClamp, [round(v, 6) for v in td.borderColor]]
vd = ok(cu.cuTexObjectGetResourceViewDesc(t))
out["view"] = [int(vd.format), vd.width, vd.height, vd.depth]
# linear and pitched memory
lin = ok(cu.cuMemAlloc(1 << 16))
res_lin = cu.CUDA_RESOURCE_DESC()
res_lin.resType = cu.CUresourcetype.CU_RESOURCE_TYPE_LINEAR
res_lin.res.linear.devPtr, res_lin.res.linear.format = lin, F.CU_AD_FORMAT_FLOAT
res_lin.res.linear.numChannels, res_lin.res.linear.sizeInBytes = 1, 1 << 16
t_lin = ok(cu.cuTexObjectCreate(res_lin, tex, None))
r = ok(cu.cuTexObjectGetResourceDesc(t_lin))
out["linear"] = [int(r.res.linear.devPtr) == int(lin), r.res.linear.sizeInBytes, r.res.linear.numChannels]
res_lin.res.linear.devPtr = int(lin) + 4
out["linear_misaligned"] = code(cu.cuTexObjectCreate(res_lin, tex, None))
res_p = cu.CUDA_RESOURCE_DESC()
res_p.resType = cu.CUresourcetype.CU_RESOURCE_TYPE_PITCH2D
res_p.res.pitch2D.devPtr, res_p.res.pitch2D.format, res_p.res.pitch2D.numChannels = lin, F.CU_AD_FORMAT_UNSIGNED_INT8, 4
res_p.res.pitch2D.width, res_p.res.pitch2D.height, res_p.res.pitch2D.pitchInBytes = 16, 16, 100
out["pitch_misaligned"] = code(cu.cuTexObjectCreate(res_p, tex, None))
res_p.res.pitch2D.pitchInBytes = 64
out["pitch2d"] = code(cu.cuTexObjectCreate(res_p, tex, None)[0])
out["view_of_linear"] = code(cu.cuTexObjectCreate(res_lin, tex, view))
res.flags = 1
out["flags"] = code(cu.cuTexObjectCreate(res, tex, None))
# mipmapped arrays: levels halve, a texture over the whole
mip = ok(cu.cuMipmappedArrayCreate(desc3d(64, 16, 0, F.CU_AD_FORMAT_FLOAT, 1), 7))
level = ok(cu.cuMipmappedArrayGetLevel(mip, 5))
ld = ok(cu.cuArray3DGetDescriptor(level))
out["level5"] = [ld.Width, ld.Height]
out["level7"] = code(cu.cuMipmappedArrayGetLevel(mip, 7))
out["too_many_levels"] = code(cu.cuMipmappedArrayCreate(desc3d(64, 16, 0, F.CU_AD_FORMAT_FLOAT, 1), 8))
row = np.arange(2, dtype=np.float32)
out["level_copy"] = code(cu.cuMemcpyHtoA(level, 0, row.ctypes.data, 8))
res_m = cu.CUDA_RESOURCE_DESC()
res_m.resType = cu.CUresourcetype.CU_RESOURCE_TYPE_MIPMAPPED_ARRAY
res_m.res.mipmap.hMipmappedArray = mip
t_mip = ok(cu.cuTexObjectCreate(res_m, tex, None))
out["destroy_level"] = code(cu.cuArrayDestroy(level))
# surfaces: only of an array made for surface loads and stores
res.flags = 0
out["surface_without_flag"] = code(cu.cuSurfObjectCreate(res))
res_s = cu.CUDA_RESOURCE_DESC()
res_s.resType = cu.CUresourcetype.CU_RESOURCE_TYPE_ARRAY
res_s.res.array.hArray = surf_arr
s = ok(cu.cuSurfObjectCreate(res_s))
r = ok(cu.cuSurfObjectGetResourceDesc(s))
out["surface"] = int(r.res.array.hArray) == int(surf_arr)
out["surface_of_linear"] = code(cu.cuSurfObjectCreate(res_lin))
out["surface_as_texture"] = code(cu.cuTexObjectGetResourceDesc(s)) if int(s) != int(t) else None
for o in (t, t2, t_lin, t_mip):
    ok(cu.cuTexObjectDestroy(o))
ok(cu.cuSurfObjectDestroy(s))
out["destroyed"] = code(cu.cuTexObjectGetTextureDesc(t))
out["destroyed_twice"] = code(cu.cuTexObjectDestroy(t))
ok(cu.cuMipmappedArrayDestroy(mip))
out["mip_destroyed"] = code(cu.cuMipmappedArrayGetLevel(mip, 0))
out["level_gone"] = code(cu.cuArray3DGetDescriptor(level))
print(json.dumps(out))
"""


def test_texture_and_surface_objects_keep_their_descriptors(vgpud):
    out = run_json(OBJECTS, vgpud.env)
    assert out == {
        "distinct": True, "res": [0, True],
        "tex": [[0, 2, 3], 1, 2, 4, 0.5, 0.25, 3.0, [0.1, 0.2, 0.3, 0.4]],
        "view": [0x14, 64, 64, 0],
        "linear": [True, 1 << 16, 1], "linear_misaligned": 1, "pitch_misaligned": 1, "pitch2d": 0,
        "view_of_linear": 1, "flags": 1,
        "level5": [2, 1], "level7": 1, "too_many_levels": 1, "level_copy": 0, "destroy_level": 400,
        "surface_without_flag": 1, "surface": True, "surface_of_linear": 1, "surface_as_texture": 1,
        "destroyed": 1, "destroyed_twice": 1, "mip_destroyed": 400, "level_gone": 400,
    }, out


def test_cudart_arrays_3d_copies_memset_2d_and_texture_objects(vgpud, tmp_path_factory):
    report = run_report(build(tmp_path_factory, "arrays_textures"), vgpud.env)
    report.pop("_output")
    info = report.pop("info")
    assert info == "32 2 300 40 0 2", info  # 32-bit float channel, 300 x 40, surface load/store flag
    assert report == {name: "0" for name in report if not name.startswith(("equal", "memset_2d_bytes", "tex_desc_same"))} | \
        {"equal_2d": "1", "equal_3d": "1", "memset_2d_bytes": "1", "tex_desc_same": "1"}
    assert len(report) == 23


LEGACY = """
import ctypes, json
import numpy as np
from vgpu.launcher import library_path
cu = ctypes.CDLL(str(library_path("libvgpu-cuda.so")))
u32, vp, sz = ctypes.c_uint, ctypes.c_void_p, ctypes.c_size_t
out = {}
assert cu.cuInit(0) == 0
ctx = vp()
assert cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0) == 0 and cu.cuCtxSetCurrent(ctx) == 0

class Desc1(ctypes.Structure):  # CUDA_ARRAY_DESCRIPTOR_v1: 32-bit sizes
    _fields_ = [("Width", u32), ("Height", u32), ("Format", ctypes.c_int), ("NumChannels", u32)]

class Desc1Canary(ctypes.Structure):
    _fields_ = [("desc", Desc1), ("canary", ctypes.c_uint64)]

class Copy2D1(ctypes.Structure):  # CUDA_MEMCPY2D_v1
    _fields_ = [("srcXInBytes", u32), ("srcY", u32), ("srcMemoryType", ctypes.c_int), ("srcHost", vp),
                ("srcDevice", u32), ("srcArray", vp), ("srcPitch", u32),
                ("dstXInBytes", u32), ("dstY", u32), ("dstMemoryType", ctypes.c_int), ("dstHost", vp),
                ("dstDevice", u32), ("dstArray", vp), ("dstPitch", u32), ("WidthInBytes", u32), ("Height", u32)]

# v1 array creation and descriptor (4-byte fields, the bytes after it untouched)
array = vp()
out["create_v1"] = cu.cuArrayCreate(ctypes.byref(array), ctypes.byref(Desc1(64, 16, 0x03, 1)))  # UNSIGNED_INT32
back = Desc1Canary(canary=0x5A5A5A5A5A5A5A5A)
out["descriptor_v1"] = cu.cuArrayGetDescriptor(ctypes.byref(back.desc), array)
out["descriptor_fields"] = [back.desc.Width, back.desc.Height, back.desc.Format, back.desc.NumChannels]
out["canary"] = back.canary == 0x5A5A5A5A5A5A5A5A
# v1 2D copy host -> array, v1 1D copy array -> host with a 32-bit offset
image = (np.arange(64 * 16, dtype=np.uint64).reshape(16, 64) * 2654435761 % (1 << 32)).astype(np.uint32)
c = Copy2D1(srcMemoryType=1, srcHost=image.ctypes.data, srcPitch=256, dstMemoryType=3, dstArray=array,
            WidthInBytes=256, Height=16)  # CU_MEMORYTYPE_HOST = 1, ARRAY = 3
out["copy2d_v1"] = cu.cuMemcpy2D(ctypes.byref(c))
got = np.zeros(64 * 4, dtype=np.uint32)
cu.cuMemcpyAtoH.argtypes = [vp, vp, u32, u32]
out["atoh_v1"] = cu.cuMemcpyAtoH(got.ctypes.data, array, 256 * 4, got.nbytes)
out["v1_bytes"] = bool((got.reshape(4, 64) == image[4:8]).all())
cu.cuMemcpyHtoA.argtypes = [vp, u32, vp, u32]
out["htoa_v1_past_end"] = cu.cuMemcpyHtoA(array, 64 * 16 * 4 - 4, image.ctypes.data, 8)
# a v1 device address that names no allocation: the _v2 function's code
cu.cuMemcpyDtoH.argtypes = [vp, u32, u32]
out["dtoh_v1_nothing_there"] = cu.cuMemcpyDtoH(got.ctypes.data, 0x1234, 16)

# texture references: made, set, read back, bound and unbound
tex = vp()
out["tex_create"] = cu.cuTexRefCreate(ctypes.byref(tex))
out["set_array_without_override"] = cu.cuTexRefSetArray(tex, array, 0)
out["set_array"] = cu.cuTexRefSetArray(tex, array, 1)  # CU_TRSA_OVERRIDE_FORMAT
bound, fmt, channels = vp(), ctypes.c_int(), ctypes.c_int()
out["get_array"] = cu.cuTexRefGetArray(ctypes.byref(bound), tex)
out["same_array"] = bound.value == array.value
cu.cuTexRefGetFormat(ctypes.byref(fmt), ctypes.byref(channels), tex)
out["format_from_array"] = [fmt.value, channels.value]
address = ctypes.c_uint64()
out["address_while_array"] = cu.cuTexRefGetAddress_v2(ctypes.byref(address), tex)
for dim, mode in ((0, 3), (1, 2), (2, 1)):
    cu.cuTexRefSetAddressMode(tex, dim, mode)
out["bad_dim"] = cu.cuTexRefSetAddressMode(tex, 3, 0)
modes = []
for dim in range(3):
    m = ctypes.c_int()
    cu.cuTexRefGetAddressMode(ctypes.byref(m), tex, dim)
    modes.append(m.value)
out["modes"] = modes
cu.cuTexRefSetFilterMode(tex, 1)
cu.cuTexRefSetMipmapFilterMode(tex, 1)
out["bad_filter"] = cu.cuTexRefSetFilterMode(tex, 2)
cu.cuTexRefSetMipmapLevelBias(tex, ctypes.c_float(1.5))
cu.cuTexRefSetMipmapLevelClamp(tex, ctypes.c_float(0.5), ctypes.c_float(7.0))
cu.cuTexRefSetMaxAnisotropy(tex, 8)
border = (ctypes.c_float * 4)(0.25, 0.5, 0.75, 1.0)
cu.cuTexRefSetBorderColor(tex, border)
out["set_flags"] = cu.cuTexRefSetFlags(tex, 0x3)
out["bad_flags"] = cu.cuTexRefSetFlags(tex, 0x100)
f1, f2, bias, lo, hi, aniso, flags = (ctypes.c_int(), ctypes.c_int(), ctypes.c_float(), ctypes.c_float(),
                                      ctypes.c_float(), ctypes.c_int(), ctypes.c_uint())
colour = (ctypes.c_float * 4)()
cu.cuTexRefGetFilterMode(ctypes.byref(f1), tex)
cu.cuTexRefGetMipmapFilterMode(ctypes.byref(f2), tex)
cu.cuTexRefGetMipmapLevelBias(ctypes.byref(bias), tex)
cu.cuTexRefGetMipmapLevelClamp(ctypes.byref(lo), ctypes.byref(hi), tex)
cu.cuTexRefGetMaxAnisotropy(ctypes.byref(aniso), tex)
cu.cuTexRefGetBorderColor(colour, tex)
cu.cuTexRefGetFlags(ctypes.byref(flags), tex)
out["read_back"] = [f1.value, f2.value, bias.value, lo.value, hi.value, aniso.value, list(colour), flags.value]
# bound to linear memory instead: the array binding is superseded
memory = ctypes.c_uint64()
assert cu.cuMemAlloc_v2(ctypes.byref(memory), 1 << 16) == 0
offset = ctypes.c_size_t(99)
out["set_address"] = cu.cuTexRefSetAddress_v2(ctypes.byref(offset), tex, ctypes.c_uint64(memory.value), sz(1 << 16))
out["offset"] = offset.value
out["get_address"] = cu.cuTexRefGetAddress_v2(ctypes.byref(address), tex)
out["same_address"] = address.value == memory.value
out["array_after_address"] = cu.cuTexRefGetArray(ctypes.byref(bound), tex)
small = ctypes.c_uint(0)
out["address_v1_too_wide"] = [cu.cuTexRefGetAddress(ctypes.byref(small), tex), small.value]
class Desc2(ctypes.Structure):
    _fields_ = [("Width", sz), ("Height", sz), ("Format", ctypes.c_int), ("NumChannels", u32)]
out["set_2d_bad_pitch"] = cu.cuTexRefSetAddress2D_v3(tex, ctypes.byref(Desc2(16, 16, 0x20, 1)),
                                                     ctypes.c_uint64(memory.value), sz(100))
out["set_2d"] = cu.cuTexRefSetAddress2D_v3(tex, ctypes.byref(Desc2(16, 16, 0x20, 1)), ctypes.c_uint64(memory.value), sz(64))
cu.cuTexRefGetFormat(ctypes.byref(fmt), ctypes.byref(channels), tex)
out["format_from_2d"] = [fmt.value, channels.value]
out["set_format"] = cu.cuTexRefSetFormat(tex, 0x10, 2)
out["bad_format"] = cu.cuTexRefSetFormat(tex, 0x10, 3)
out["destroy"] = cu.cuTexRefDestroy(tex)
out["destroyed"] = cu.cuTexRefGetFlags(ctypes.byref(flags), tex)
# references in modules: none in a module built by CUDA 12 or later
module, ref = vp(), vp()
assert cu.cuModuleLoadData(ctypes.byref(module), MODULE) == 0, "module"
out["module_texref"] = cu.cuModuleGetTexRef(ctypes.byref(ref), module, b"tex")
out["module_surfref"] = cu.cuModuleGetSurfRef(ctypes.byref(ref), module, b"surf")
out["bad_module"] = cu.cuModuleGetTexRef(ctypes.byref(ref), vp(0x12345678), b"tex")
function = vp()
assert cu.cuModuleGetFunction(ctypes.byref(function), module, b"noop") == 0
out["param_set_texref"] = cu.cuParamSetTexRef(function, -1, tex)
out["surfref_set_array"] = cu.cuSurfRefSetArray(vp(0x1000), array, 0)
out["destroy_array_v1_made"] = cu.cuArrayDestroy(array)
print(json.dumps(out))
"""

PTX = """
.version 8.0
.target sm_90
.address_size 64
.visible .entry noop() { ret; }
"""


def test_legacy_names_and_texture_references(vgpud):
    out = run_json(f"MODULE = {PTX.encode()!r}\n" + LEGACY, vgpud.env)
    INVALID_VALUE, INVALID_HANDLE, NOT_FOUND = 1, 400, 500
    assert out == {
        "create_v1": 0, "descriptor_v1": 0, "descriptor_fields": [64, 16, 3, 1], "canary": True,
        "copy2d_v1": 0, "atoh_v1": 0, "v1_bytes": True, "htoa_v1_past_end": INVALID_VALUE,
        "dtoh_v1_nothing_there": INVALID_VALUE,
        "tex_create": 0, "set_array_without_override": INVALID_VALUE, "set_array": 0, "get_array": 0,
        "same_array": True, "format_from_array": [3, 1], "address_while_array": INVALID_VALUE,
        "bad_dim": INVALID_VALUE, "modes": [3, 2, 1], "bad_filter": INVALID_VALUE, "set_flags": 0,
        "bad_flags": INVALID_VALUE, "read_back": [1, 1, 1.5, 0.5, 7.0, 8, [0.25, 0.5, 0.75, 1.0], 3],
        "set_address": 0, "offset": 0, "get_address": 0, "same_address": True, "array_after_address": INVALID_VALUE,
        "address_v1_too_wide": [INVALID_VALUE, 0], "set_2d_bad_pitch": INVALID_VALUE, "set_2d": 0,
        "format_from_2d": [0x20, 1], "set_format": 0, "bad_format": INVALID_VALUE, "destroy": 0,
        "destroyed": INVALID_HANDLE, "module_texref": NOT_FOUND, "module_surfref": NOT_FOUND,
        "bad_module": INVALID_HANDLE, "param_set_texref": INVALID_VALUE, "surfref_set_array": INVALID_HANDLE,
        "destroy_array_v1_made": 0,
    }, out
