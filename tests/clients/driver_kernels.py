"""Modules and launches through the driver API with ctypes (the test client of
tests/test_kernels.py): a fat binary loaded through CUDART_INTERFACE's module slot, as
older runtimes load theirs; cuLaunchKernelEx with cluster and cooperative attributes; and
enough big launches to move NVML's utilisation.  Prints one JSON object."""

import ctypes
import json
import sys
import time

cuda = ctypes.CDLL("libcuda.so.1")
nvml = ctypes.CDLL("libnvidia-ml.so.1")


def ok(rc, what):
    if rc != 0:
        raise SystemExit(f"{what} answered {rc}")


class LaunchAttribute(ctypes.Structure):
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_uint32 * 16)]


class LaunchConfig(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(LaunchAttribute)), ("count", ctypes.c_uint)]


fatbin = open(sys.argv[1], "rb").read()
ok(cuda.cuInit(0), "cuInit")
context = ctypes.c_void_p()
ok(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), 0), "retain")
ok(cuda.cuCtxSetCurrent(context), "set current")
report = {}

# CUDART_INTERFACE slot 1: (CUmodule *, const __fatBinC_Wrapper_t *)
table = ctypes.c_void_p()
uuid = (ctypes.c_ubyte * 16)(*bytes.fromhex("6bd5fb6c5bf4e74a8987d93912fd9df9"))
ok(cuda.cuGetExportTable(ctypes.byref(table), uuid), "cuGetExportTable")
slots = ctypes.cast(table, ctypes.POINTER(ctypes.c_void_p))
load = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(slots[1])
image = ctypes.create_string_buffer(fatbin, len(fatbin))
wrapper = (ctypes.c_uint32 * 2)(0x466243B1, 1)
wrapper_struct = ctypes.create_string_buffer(24)
ctypes.memmove(wrapper_struct, wrapper, 8)
ctypes.memmove(ctypes.addressof(wrapper_struct) + 8, ctypes.byref(ctypes.c_void_p(ctypes.addressof(image))), 8)
module = ctypes.c_void_p()
report["slot_load"] = load(ctypes.byref(module), ctypes.addressof(wrapper_struct))
kernel = ctypes.c_void_p()
report["get_function"] = cuda.cuModuleGetFunction(ctypes.byref(kernel), module, b"_Z5emptyv")
# the same image from its file and as a fat binary in memory
from_file, fat = ctypes.c_void_p(), ctypes.c_void_p()
report["module_load_file"] = cuda.cuModuleLoad(ctypes.byref(from_file), sys.argv[1].encode())
report["module_load_fatbinary"] = cuda.cuModuleLoadFatBinary(ctypes.byref(fat), image)
report["module_load_missing_file"] = cuda.cuModuleLoad(ctypes.byref(from_file), b"/nonexistent.cubin")

# cuLaunchKernelEx: a cluster of 2 on a grid of 4, a cluster that does not divide the grid, a
# cooperative launch
attribute = LaunchAttribute()
attribute.id = 4  # CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
attribute.value[0], attribute.value[1], attribute.value[2] = 2, 1, 1
config = LaunchConfig((4, 1, 1), (64, 1, 1), 0, None, ctypes.pointer(attribute), 1)
report["ex_cluster"] = cuda.cuLaunchKernelEx(ctypes.byref(config), kernel, None, None)
config.grid[0] = 3
report["ex_cluster_uneven"] = cuda.cuLaunchKernelEx(ctypes.byref(config), kernel, None, None)
attribute.id = 2  # CU_LAUNCH_ATTRIBUTE_COOPERATIVE
attribute.value[0] = 1
config.grid[0] = 4
report["ex_cooperative"] = cuda.cuLaunchKernelEx(ctypes.byref(config), kernel, None, None)

# a second of modelled work: NVML's utilisation follows
ok(nvml.nvmlInit_v2(), "nvmlInit")
device = ctypes.c_void_p()
ok(nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(device)), "handle")


class Utilization(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


before = Utilization()
ok(nvml.nvmlDeviceGetUtilizationRates(device, ctypes.byref(before)), "utilization")
for _ in range(400):
    ok(cuda.cuLaunchKernel(kernel, 1 << 20, 1, 1, 256, 1, 1, 0, None, None, None), "launch")
ok(cuda.cuCtxSynchronize(), "sync")
time.sleep(0.6)
after = Utilization()
ok(nvml.nvmlDeviceGetUtilizationRates(device, ctypes.byref(after)), "utilization")
report["utilization"] = [before.gpu, after.gpu]
print(json.dumps(report))
