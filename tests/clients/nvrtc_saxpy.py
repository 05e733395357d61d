"""A kernel compiled at run time with NVRTC and launched through cuda-python's driver bindings
(the test client of tests/test_kernels.py): prints the architecture, the buffers and the
parameter layout the driver reports, as JSON."""
import json
import ctypes
from cuda.bindings import driver, nvrtc

source = b"""
extern "C" __global__ void saxpy(float a, const float *x, float *y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}
"""
def check(result):
    err, *rest = result
    assert int(err) == 0, err
    return rest[0] if len(rest) == 1 else rest

check(driver.cuInit(0))
device = check(driver.cuDeviceGet(0))
major = check(driver.cuDeviceGetAttribute(driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device))
minor = check(driver.cuDeviceGetAttribute(driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device))
program = check(nvrtc.nvrtcCreateProgram(source, b"saxpy.cu", 0, [], []))
options = [f"--gpu-architecture=sm_{major}{minor}".encode()]
err, = nvrtc.nvrtcCompileProgram(program, len(options), options)
assert int(err) == 0, err
size = check(nvrtc.nvrtcGetCUBINSize(program))
cubin = b" " * size
check(nvrtc.nvrtcGetCUBIN(program, cubin))
context = check(driver.cuDevicePrimaryCtxRetain(device))
check(driver.cuCtxSetCurrent(context))
module = check(driver.cuModuleLoadData(cubin))
kernel = check(driver.cuModuleGetFunction(module, b"saxpy"))
n = 1024
x = check(driver.cuMemAlloc(n * 4))
y = check(driver.cuMemAlloc(n * 4))
values = (ctypes.c_float(2.5), ctypes.c_uint64(int(x)), ctypes.c_uint64(int(y)), ctypes.c_int(n))
args = (ctypes.c_void_p * 4)(*[ctypes.addressof(v) for v in values])
stream = check(driver.cuStreamCreate(0))
check(driver.cuLaunchKernel(kernel, 4, 1, 1, 256, 1, 1, 0, stream, ctypes.addressof(args), 0))
check(driver.cuStreamSynchronize(stream))
offsets = [check(driver.cuFuncGetParamInfo(kernel, i)) for i in range(4)]
print(json.dumps({"arch": major * 10 + minor, "cubin": len(cubin), "x": int(x), "y": int(y),
                  "params": [[int(o), int(s)] for o, s in offsets]}))
