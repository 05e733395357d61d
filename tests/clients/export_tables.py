"""The driver's private tables asked for directly through ctypes (the client of
tests/test_export_tables.py): each served table's size slot, a refused id, and TOOLS_MODULE's
function iterator over a module of two kernels compiled with NVRTC.  Prints JSON."""
import ctypes
import json
import uuid

from cuda.bindings import nvrtc

cuda = ctypes.CDLL("libcuda.so.1")
SERVED = {
    "runtime_log": "f8cff951-2146-8b4e-b9e2-fb469e7c0dd9",
    "gpu_layout": "1734dc26-800d-4745-8726-c0f1e7dd8bca",
    "tools_module": "6e163fbe-b958-444d-835c-e182aff1991e",
    "tools_cupti": "7cb63f9b-9ca4-8e42-a484-beb66e6aed7f",
    "torch_69a28e9f": "69a28e9f-2449-8b47-b030-c5da330ea4e9",
}
REFUSED = "2c8e0ad8-0710-ab4e-90dd-54719fe5f74b"  # a tools table CUPTI asks for


def export_table(text: str) -> tuple[int, ctypes.POINTER(ctypes.c_void_p)]:
    table = ctypes.POINTER(ctypes.c_void_p)()
    rc = cuda.cuGetExportTable(ctypes.byref(table), uuid.UUID(text).bytes)
    return rc, table


def check(rc: int) -> None:
    assert rc == 0, rc


out: dict = {"sizes": {}}
for name, text in SERVED.items():
    rc, table = export_table(text)
    out["sizes"][name] = [rc, table[0] if table else None, all(table[i] for i in range(1, (table[0] or 0) // 8))]
rc, table = export_table(REFUSED)
out["refused"] = [rc, bool(table)]

check(cuda.cuInit(0))
context = ctypes.c_void_p()
check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), 0))
check(cuda.cuCtxSetCurrent(context))
major, minor = ctypes.c_int(), ctypes.c_int()
check(cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, 0))
check(cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, 0))
source = b'extern "C" __global__ void twice(float *x) { x[threadIdx.x] *= 2; }\n' \
         b'extern "C" __global__ void zero(float *x) { x[threadIdx.x] = 0; }\n'
err, program = nvrtc.nvrtcCreateProgram(source, b"two.cu", 0, [], [])
options = [f"--gpu-architecture=sm_{major.value}{minor.value}".encode()]
assert int(nvrtc.nvrtcCompileProgram(program, len(options), options)[0]) == 0
err, size = nvrtc.nvrtcGetCUBINSize(program)
cubin = b" " * size
nvrtc.nvrtcGetCUBIN(program, cubin)
module = ctypes.c_void_p()
check(cuda.cuModuleLoadData(ctypes.byref(module), cubin))

rc, tools_module = export_table(SERVED["tools_module"])
callback_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
iterate = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, callback_type, ctypes.c_void_p)(
    tools_module[7])
seen = []
callback = callback_type(lambda user, function: seen.append((user, function)))
out["iterate"] = iterate(context, module, callback, 1234)
out["users"] = [user for user, _ in seen]
functions = {}
for name in (b"twice", b"zero"):
    found = ctypes.c_void_p()
    check(cuda.cuModuleGetFunction(ctypes.byref(found), module, name))
    functions[found.value] = name.decode()
out["functions"] = [functions.get(function, "unknown") for _, function in seen]
out["iterate_bad_module"] = iterate(context, ctypes.c_void_p(16), callback, 0)
print(json.dumps(out))
