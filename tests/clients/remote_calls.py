"""A CUDA and NVML client that keeps calling (the test client of the network failure tests):
it launches N kernels and synchronises, then prints one JSON line per round of calls,
{"t": seconds, "cuda": CUresult of a 4 KiB copy round trip, "nvml": nvmlReturn_t of a
temperature query}, until copies fail twice in a row or DEADLINE seconds pass.

    python remote_calls.py N DEADLINE
"""

import ctypes
import json
import sys
import time

LAUNCHES = int(sys.argv[1])
DEADLINE = float(sys.argv[2])
PTX = b".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry empty()\n{\n ret;\n}\n\0"

cuda = ctypes.CDLL("libcuda.so.1")
nvml = ctypes.CDLL("libnvidia-ml.so.1")
assert cuda.cuInit(0) == 0
context, module, kernel, device = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
assert cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), 0) == 0
assert cuda.cuCtxSetCurrent(context) == 0
assert cuda.cuModuleLoadData(ctypes.byref(module), PTX) == 0
assert cuda.cuModuleGetFunction(ctypes.byref(kernel), module, b"empty") == 0
for _ in range(LAUNCHES):
    assert cuda.cuLaunchKernel(kernel, 1, 1, 1, 32, 1, 1, 0, None, None, None) == 0
print(json.dumps({"launched": LAUNCHES, "sync": cuda.cuCtxSynchronize()}), flush=True)
assert nvml.nvmlInit_v2() == 0
assert nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(device)) == 0
dptr = ctypes.c_uint64()
assert cuda.cuMemAlloc_v2(ctypes.byref(dptr), 4096) == 0
out, back = ctypes.create_string_buffer(b"x" * 4096), ctypes.create_string_buffer(4096)
start = time.monotonic()
failures = 0
while time.monotonic() - start < DEADLINE and failures < 2:
    copy = cuda.cuMemcpyHtoD_v2(dptr, out, 4096) or cuda.cuMemcpyDtoH_v2(back, dptr, 4096)
    temperature = ctypes.c_uint()
    query = nvml.nvmlDeviceGetTemperature(device, 0, ctypes.byref(temperature))
    print(json.dumps({"t": round(time.monotonic() - start, 3), "cuda": copy, "nvml": query}), flush=True)
    failures = failures + 1 if copy else 0
    time.sleep(0.05)
