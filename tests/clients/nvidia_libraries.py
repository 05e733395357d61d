"""NVIDIA's closed libraries on the driver through ctypes (the client of
tests/test_export_tables.py): cuBLASLt half-precision matmul, a cuFFT plan and transform, CUPTI
activity tracing.  These libraries reach the driver only through libcuda.so.1 (their runtime is
linked in statically), so they exercise the driver's private export tables.

    python nvidia_libraries.py cublaslt-f16|cublaslt-bf16|cufft|cupti LIBDIR

LIBDIR holds the library (a wheel's nvidia/cu13/lib).  Prints one JSON document of status codes."""
import ctypes
import json
import sys
from pathlib import Path

what, libdir = sys.argv[1], Path(sys.argv[2])
cuda = ctypes.CDLL("libcuda.so.1")
out: dict = {}


def driver(name: str, *args) -> None:
    rc = getattr(cuda, name)(*args)
    assert rc == 0, f"{name} answered {rc}"


def device_buffer(size: int) -> ctypes.c_uint64:
    pointer = ctypes.c_uint64()
    driver("cuMemAlloc_v2", ctypes.byref(pointer), ctypes.c_size_t(size))
    return pointer


driver("cuInit", 0)
context = ctypes.c_void_p()
driver("cuDevicePrimaryCtxRetain", ctypes.byref(context), 0)
driver("cuCtxSetCurrent", context)

if what.startswith("cublaslt"):
    CUDA_R_16F, CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F = 2, 14, 0, 68
    element = CUDA_R_16F if what == "cublaslt-f16" else CUDA_R_16BF
    lt = ctypes.CDLL(str(libdir / "libcublasLt.so.13"))
    out["version"] = lt.cublasLtGetVersion()
    handle, desc, pref = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
    out["create"] = lt.cublasLtCreate(ctypes.byref(handle))
    out["desc"] = lt.cublasLtMatmulDescCreate(ctypes.byref(desc), CUBLAS_COMPUTE_32F, CUDA_R_32F)
    n = 256
    layouts = [ctypes.c_void_p() for _ in range(3)]
    out["layouts"] = [lt.cublasLtMatrixLayoutCreate(ctypes.byref(layout), element, ctypes.c_uint64(n),
                                                    ctypes.c_uint64(n), ctypes.c_int64(n)) for layout in layouts]
    workspace_size = ctypes.c_uint64(32 << 20)
    out["pref"] = lt.cublasLtMatmulPreferenceCreate(ctypes.byref(pref))
    out["pref_workspace"] = lt.cublasLtMatmulPreferenceSetAttribute(pref, 1, ctypes.byref(workspace_size), 8)
    results = (ctypes.c_uint8 * 96 * 4)()  # cublasLtMatmulHeuristicResult_t: algo[64], workspace, state, waves, reserved
    found = ctypes.c_int()
    a, b, c = layouts
    out["heuristic"] = lt.cublasLtMatmulAlgoGetHeuristic(handle, desc, a, b, c, c, pref, 4, results, ctypes.byref(found))
    out["algorithms"] = found.value
    if out["heuristic"] == 0 and found.value:
        da, db, dc = (device_buffer(n * n * 2) for _ in range(3))
        work = device_buffer(workspace_size.value)
        alpha, beta = ctypes.c_float(1), ctypes.c_float(0)
        out["matmul"] = lt.cublasLtMatmul(handle, desc, ctypes.byref(alpha), da, a, db, b, ctypes.byref(beta), dc, c,
                                          dc, c, results, work, workspace_size, None)
        driver("cuCtxSynchronize")
    out["destroy"] = lt.cublasLtDestroy(handle)

elif what == "cufft":
    CUFFT_C2C, CUFFT_FORWARD = 0x29, -1
    fft = ctypes.CDLL(str(libdir / "libcufft.so.12"))
    version = ctypes.c_int()
    out["version_rc"] = fft.cufftGetVersion(ctypes.byref(version))
    out["version"] = version.value
    plan = ctypes.c_int()
    n = 1024
    out["plan"] = fft.cufftPlan1d(ctypes.byref(plan), n, CUFFT_C2C, 1)
    if out["plan"] == 0:
        data = device_buffer(n * 8)
        out["exec"] = fft.cufftExecC2C(plan, data, data, CUFFT_FORWARD)
        driver("cuCtxSynchronize")
        out["destroy"] = fft.cufftDestroy(plan)

elif what == "cupti":
    CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL = 10
    cupti = ctypes.CDLL(str(libdir / "libcupti.so.13"))
    version = ctypes.c_uint32()
    out["version_rc"] = cupti.cuptiGetVersion(ctypes.byref(version))
    out["version"] = version.value
    buffers = []
    completed = []
    size_p = ctypes.POINTER(ctypes.c_size_t)
    requested_type = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p), size_p, size_p)
    completed_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t,
                                      ctypes.c_size_t)

    @requested_type
    def requested(buffer, size, max_records):
        block = ctypes.create_string_buffer(1 << 20)
        buffers.append(block)
        buffer[0] = ctypes.cast(block, ctypes.c_void_p)
        size[0] = len(block)
        max_records[0] = 0

    @completed_type
    def on_completed(context, stream_id, buffer, size, valid_size):
        completed.append(valid_size)

    out["register"] = cupti.cuptiActivityRegisterCallbacks(requested, on_completed)
    out["enable"] = cupti.cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL)
    scratch = device_buffer(4096)
    driver("cuMemsetD8_v2", scratch, 0, ctypes.c_size_t(4096))
    driver("cuCtxSynchronize")
    out["flush"] = cupti.cuptiActivityFlushAll(0)
    out["disable"] = cupti.cuptiActivityDisable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL)

print(json.dumps(out))
