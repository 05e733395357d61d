"""The driver's linker, the legacy execution control and the queries about loaded code, through
ctypes (as numba-cuda's driver binding calls them) and cuda-python, on nvcc-built PTX and cubins:
a link of two PTX modules (one calling the other's device function) loaded and launched, the
launch recorded; JIT log buffers and their sizes written back; enumerations against the
modules' real kernels; legacy launches recorded with their packed parameters."""

from __future__ import annotations

import struct
import textwrap
from pathlib import Path

import pytest

from tests.conftest import CUDA_PYTHON, run_json
from tests.test_kernels import nvcc

EVERY_WAY = True
VGPUD_GPUS = "2xh100"

LIB_CU = r"""
extern "C" __device__ int twice(int x) { return 2 * x; }
extern "C" __global__ void fill(int *out, int value, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = twice(value);
}
"""

USE_CU = r"""
extern "C" __device__ int twice(int x);
extern "C" __global__ void apply(int *out, int x, double scale, char tag) { out[0] = twice(x) * scale + tag; }
"""

ORPHAN_CU = r"""
extern "C" __device__ int missing_function(int x);
extern "C" __global__ void orphan(int *out) { out[0] = missing_function(1); }
"""

LEGACY_CU = r"""
extern "C" __global__ void legacy(int *out, float f, int i, long long big) { out[0] = f * i + big; }
"""


@pytest.fixture(scope="module")
def code(tmp_path_factory) -> dict[str, Path]:
    """Relocatable PTX and cubins of the sources above, built with nvcc."""
    folder = tmp_path_factory.mktemp("link")
    built = {}
    for name, source in (("lib", LIB_CU), ("use", USE_CU), ("orphan", ORPHAN_CU), ("legacy", LEGACY_CU)):
        (folder / f"{name}.cu").write_text(source)
        built[f"{name}.ptx"] = folder / f"{name}.ptx"
        nvcc("-ptx", "-rdc=true", "-arch=sm_90", "-o", str(built[f"{name}.ptx"]), str(folder / f"{name}.cu"))
    built["lib.cubin"] = folder / "lib.cubin"
    nvcc("-cubin", "-rdc=true", "-arch=sm_90", "-o", str(built["lib.cubin"]), str(folder / "lib.cu"))
    built["legacy.cubin"] = folder / "legacy.cubin"
    nvcc("-cubin", "-arch=sm_90", "-o", str(built["legacy.cubin"]), str(folder / "legacy.cu"))
    built["sm80.ptx"] = folder / "sm80.ptx"
    nvcc("-ptx", "-rdc=true", "-arch=sm_80", "-o", str(built["sm80.ptx"]), str(folder / "use.cu"))
    return built


#: a numba-cuda style linker over ctypes: cuLinkCreate with log buffers, inputs, cuLinkComplete
LINKER = CUDA_PYTHON + """
import sys
lib = ctypes.CDLL("libcuda.so.1")
void_pp = ctypes.POINTER(ctypes.c_void_p)
CU_JIT_WALL_TIME, CU_JIT_INFO_LOG_BUFFER, CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES = 2, 3, 4
CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES, CU_JIT_LOG_VERBOSE = 5, 6, 12
PTX, CUBIN, FATBIN, OBJECT, LIBRARY = 1, 0, 2, 3, 4
ok(cu.cuInit(0))
ctx = ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(0))))
ok(cu.cuCtxSetCurrent(ctx))

class Linker:
    def __init__(self, verbose=1):
        self.info = ctypes.create_string_buffer(4096)
        self.error = ctypes.create_string_buffer(4096)
        keys = [CU_JIT_INFO_LOG_BUFFER, CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES, CU_JIT_ERROR_LOG_BUFFER,
                CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES, CU_JIT_LOG_VERBOSE, CU_JIT_WALL_TIME]
        values = [ctypes.addressof(self.info), 4096, ctypes.addressof(self.error), 4096, verbose, 0]
        self.keys = (ctypes.c_int * len(keys))(*keys)
        self.values = (ctypes.c_void_p * len(values))(*values)  # kept alive with the state, as cuda.h says
        self.state = ctypes.c_void_p()
        ok(lib.cuLinkCreate_v2(len(keys), self.keys, self.values, ctypes.byref(self.state)))

    def add_data(self, kind, data, name):
        buf = ctypes.create_string_buffer(data, len(data))
        return lib.cuLinkAddData_v2(self.state, kind, buf, ctypes.c_size_t(len(data)), name.encode(), 0, None, None)

    def add_file(self, kind, path):
        return lib.cuLinkAddFile_v2(self.state, kind, path.encode(), 0, None, None)

    def complete(self):
        image, size = ctypes.c_void_p(), ctypes.c_size_t()
        rc = lib.cuLinkComplete(self.state, ctypes.byref(image), ctypes.byref(size))
        return rc, (ctypes.string_at(image, size.value) if rc == 0 else b"")

    def sizes(self):
        return self.values[1] or 0, self.values[3] or 0

    def wall_ms(self):
        return struct.unpack("<f", struct.pack("<I", (self.values[5] or 0) & 0xFFFFFFFF))[0]
import struct
"""


def test_two_ptx_modules_link_load_and_launch(vgpud, code):
    """numba-cuda's pattern: two PTX inputs, the second calling the first's device function; the
    linked image loads with cuModuleLoadData, holds both inputs' kernels with their parameter
    layouts, launches, and the launch is recorded with its packed parameters."""
    report = run_json(LINKER + textwrap.dedent(f"""
        link = Linker()
        added = [link.add_data(PTX, open({str(code['lib.ptx'])!r}, 'rb').read() + b'\\0', 'lib.ptx'),
                 link.add_file(PTX, {str(code['use.ptx'])!r})]
        rc, image = link.complete()
        module = ok(cu.cuModuleLoadData(image))
        names = sorted(ok(cu.cuFuncGetName(f)).decode() for f in
                       ok(cu.cuModuleEnumerateFunctions(ok(cu.cuModuleGetFunctionCount(module)), module)))
        apply = ok(cu.cuModuleGetFunction(module, b"apply"))
        layout = [ok(cu.cuFuncGetParamInfo(apply, i)) for i in range(ok(cu.cuFuncGetParamCount(apply)))]
        out = ok(cu.cuMemAlloc(64))
        args = [ctypes.c_uint64(int(out)), ctypes.c_int(21), ctypes.c_double(1.5), ctypes.c_char(b"x")]
        params = (ctypes.c_void_p * 4)(*[ctypes.addressof(a) for a in args])
        ok(cu.cuLaunchKernel(apply, 2, 1, 1, 32, 1, 1, 0, 0, ctypes.addressof(params), 0))
        ok(cu.cuCtxSynchronize())
        # the image stays the state's until cuLinkDestroy; cuLibraryLoadData reads it too
        library = ok(cu.cuLibraryLoadData(image, None, None, 0, None, None, 0))
        kernels = ok(cu.cuLibraryEnumerateKernels(ok(cu.cuLibraryGetKernelCount(library)), library))
        kernel_names = sorted(ok(cu.cuKernelGetName(k)).decode() for k in kernels)
        same_library = [int(ok(cu.cuKernelGetLibrary(k))) == int(library) for k in kernels]
        destroyed = lib.cuLinkDestroy(link.state)
        print(json.dumps({{"added": added, "rc": rc, "size": len(image), "names": names, "layout": layout,
                          "info": link.info.value.decode(), "error": link.error.value.decode(),
                          "sizes": link.sizes(), "wall": link.wall_ms(), "kernel_names": kernel_names,
                          "same_library": same_library, "destroyed": destroyed,
                          "destroy_again": lib.cuLinkDestroy(link.state), "pid": os.getpid()}}))
        """), vgpud.env)
    assert report["added"] == [0, 0] and report["rc"] == 0 and report["size"] > 0
    assert report["names"] == report["kernel_names"] == ["apply", "fill"]
    assert report["layout"] == [[0, 8], [8, 4], [16, 8], [24, 1]]
    assert report["same_library"] == [True, True]
    assert "lib.ptx" in report["info"] and "use.ptx" in report["info"] and "2 kernels" in report["info"]
    assert report["error"] == ""
    info_size, error_size = report["sizes"]
    assert info_size == len(report["info"].encode()) + 1 and error_size == 1
    assert report["wall"] >= 0
    assert report["destroyed"] == 0 and report["destroy_again"] == 400  # CUDA_ERROR_INVALID_HANDLE
    launches = [x for x in vgpud.control("launches")["launches"] if x["kernel"] == "apply" and x["pid"] == report["pid"]]
    assert len(launches) == 1 and launches[0]["grid"] == [2, 1, 1] and launches[0]["block"] == [32, 1, 1]
    args = bytes.fromhex(launches[0]["args_hex"])
    assert len(args) == 25 and struct.unpack_from("<Q", args)[0] != 0
    assert struct.unpack_from("<i", args, 8)[0] == 21 and struct.unpack_from("<d", args, 16)[0] == 1.5
    assert args[24:25] == b"x"


def test_link_refusals_and_the_error_log(vgpud, code):
    """A reference no input defines fails cuLinkComplete with the name in the error log (and the
    log's size written back); inputs that are not what their type says, unknown types, missing
    files, PTX newer than the link target, and handles that are not link states are refused."""
    newer = code["use.ptx"].read_text().replace(".target sm_90", ".target sm_100")
    report = run_json(LINKER + textwrap.dedent(f"""
        link = Linker()
        orphan = link.add_file(PTX, {str(code['orphan.ptx'])!r})
        rc, image = link.complete()
        out = {{"orphan": orphan, "complete": rc, "error": link.error.value.decode(), "sizes": link.sizes()}}
        lib.cuLinkDestroy(link.state)
        other = Linker(verbose=0)
        out["not_ptx"] = other.add_data(PTX, b"this is not PTX\\0", "junk.ptx")
        out["not_cubin"] = other.add_data(CUBIN, b"\\x7fELF" + bytes(100), "junk.cubin")
        out["not_fatbin"] = other.add_data(FATBIN, bytes(64), "junk.fatbin")
        out["not_library"] = other.add_data(LIBRARY, bytes(64), "junk.a")
        out["bad_type"] = other.add_data(9, b"x", "x")
        out["nvvm"] = other.add_data(5, b"x", "x")
        out["missing_file"] = other.add_file(PTX, "/nonexistent.ptx")
        out["too_new"] = other.add_data(PTX, {newer.encode()!r} + b"\\0", "new.ptx")
        out["empty_complete"] = other.complete()[0]
        out["error_after"] = other.error.value.decode()
        out["info_quiet"] = other.info.value.decode()
        junk = ctypes.c_void_p(12345)
        image = ctypes.c_void_p()
        out["bad_handle"] = [lib.cuLinkAddFile_v2(junk, PTX, b"x", 0, None, None),
                             lib.cuLinkComplete(junk, ctypes.byref(image), None), lib.cuLinkDestroy(junk)]
        out["null_state"] = lib.cuLinkCreate_v2(0, None, None, None)
        opts = (ctypes.c_int * 1)(CU_JIT_WALL_TIME)
        vals = (ctypes.c_void_p * 1)(0)
        out["input_wall_time"] = lib.cuLinkAddFile_v2(other.state, PTX, {str(code['lib.ptx'])!r}.encode(), 1, opts, vals)
        print(json.dumps(out))
        """), vgpud.env)
    assert report["orphan"] == 0
    assert report["complete"] == 200  # CUDA_ERROR_INVALID_IMAGE
    assert "missing_function" in report["error"]
    assert report["sizes"][1] == len(report["error"].encode()) + 1
    assert (report["not_ptx"], report["not_cubin"], report["not_fatbin"], report["not_library"]) == (218, 200, 200, 200)
    assert report["bad_type"] == 1 and report["nvvm"] == 1 and report["missing_file"] == 301
    assert report["too_new"] == 218 and report["empty_complete"] == 200
    assert "junk.ptx" in report["error_after"] and "new.ptx" in report["error_after"]
    assert report["info_quiet"] == ""  # no CU_JIT_LOG_VERBOSE: no info lines
    assert report["bad_handle"] == [400, 400, 400] and report["null_state"] == 1 and report["input_wall_time"] == 1


def test_cubin_library_and_ptx_inputs_link(vgpud, code, tmp_path):
    """Inputs of every kind: a relocatable cubin, a device library (nvcc -lib: host objects that
    embed fat binaries), PTX; kernels of each input resolve."""
    nvcc("-dc", "-arch=sm_90", "-o", str(tmp_path / "lib.o"), str(code["lib.ptx"].with_suffix(".cu")))
    nvcc("-lib", "-o", str(tmp_path / "libtwice.a"), str(tmp_path / "lib.o"))
    report = run_json(LINKER + textwrap.dedent(f"""
        out = {{}}
        for first_kind, first in ((CUBIN, {str(code['lib.cubin'])!r}), (LIBRARY, {str(tmp_path / 'libtwice.a')!r})):
            link = Linker()
            added = [link.add_file(first_kind, first), link.add_file(PTX, {str(code['use.ptx'])!r})]
            rc, image = link.complete()
            module = ok(cu.cuModuleLoadData(image)) if rc == 0 else None
            names = sorted(ok(cu.cuFuncGetName(f)).decode() for f in ok(cu.cuModuleEnumerateFunctions(8, module))[:ok(
                cu.cuModuleGetFunctionCount(module))]) if module else []
            out[str(first_kind)] = {{"added": added, "rc": rc, "names": names, "error": link.error.value.decode()}}
            lib.cuLinkDestroy(link.state)
        print(json.dumps(out))
        """), vgpud.env)
    assert report["0"] == {"added": [0, 0], "rc": 0, "names": ["apply", "fill"], "error": ""}
    assert report["4"] == {"added": [0, 0], "rc": 0, "names": ["apply", "fill"], "error": ""}


LEGACY = CUDA_PYTHON + """
lib = ctypes.CDLL("libcuda.so.1")
ok(cu.cuInit(0))
ctx = ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(0))))
ok(cu.cuCtxSetCurrent(ctx))
"""


def test_legacy_launches_are_recorded_with_their_packed_parameters(vgpud, code):
    """cuFuncSetBlockShape, cuFuncSetSharedSize, cuParamSetSize/Seti/Setf/Setv, then cuLaunch,
    cuLaunchGrid and cuLaunchGridAsync: each launch recorded with the shape and the bytes set."""
    report = run_json(LEGACY + textwrap.dedent(f"""
        image = open({str(code['legacy.cubin'])!r}, 'rb').read()
        module = ctypes.c_void_p()
        ok(lib.cuModuleLoadData(ctypes.byref(module), image))
        f = ctypes.c_void_p()
        ok(lib.cuModuleGetFunction(ctypes.byref(f), module, b"legacy"))
        out = {{"unshaped": lib.cuLaunchGrid(f, 1, 1)}}
        ok(lib.cuFuncSetBlockShape(f, 64, 2, 1))
        ok(lib.cuFuncSetSharedSize(f, 128))
        pointer = ctypes.c_uint64(0x7000_0000_1000)
        big = ctypes.c_int64(-5)
        ok(lib.cuParamSetv(f, 0, ctypes.byref(pointer), 8))
        ok(lib.cuParamSetf(f, 8, ctypes.c_float(2.5)))
        ok(lib.cuParamSeti(f, 12, 7))
        ok(lib.cuParamSetv(f, 16, ctypes.byref(big), 8))
        ok(lib.cuParamSetSize(f, 8))
        out["short_params"] = lib.cuLaunchGrid(f, 3, 2)
        ok(lib.cuParamSetSize(f, 24))
        ok(lib.cuLaunchGrid(f, 3, 2))
        ok(lib.cuLaunch(f))
        stream = ok(cu.cuStreamCreate(0))
        ok(lib.cuLaunchGridAsync(f, 5, 1, ctypes.c_void_p(int(stream))))
        ok(cu.cuCtxSynchronize())
        out["zero_grid"] = lib.cuLaunchGrid(f, 0, 1)
        out["negative_grid"] = lib.cuLaunchGrid(f, -1, 1)
        out["bad_shape"] = lib.cuFuncSetBlockShape(f, 0, 1, 1)
        out["too_many_threads"] = [lib.cuFuncSetBlockShape(f, 1024, 2, 1), lib.cuLaunch(f)]
        out["too_much_shared"] = [lib.cuFuncSetBlockShape(f, 32, 1, 1), lib.cuFuncSetSharedSize(f, 1 << 20),
                                  lib.cuLaunch(f)]
        junk = ctypes.c_void_p(4242)
        out["bad_handle"] = [lib.cuFuncSetBlockShape(junk, 1, 1, 1), lib.cuParamSeti(junk, 0, 1), lib.cuLaunch(junk),
                             lib.cuParamSetSize(junk, 4), lib.cuFuncSetSharedSize(junk, 0)]
        out["bad_offset"] = [lib.cuParamSeti(f, -4, 1), lib.cuParamSetv(f, 0, None, 8), lib.cuParamSetSize(f, 1 << 20)]
        out["pid"] = os.getpid()
        out["stream"] = int(stream)
        print(json.dumps(out))
        """), vgpud.env)
    assert report["unshaped"] == 1 and report["short_params"] == 1
    assert report["zero_grid"] == 1 and report["negative_grid"] == 1 and report["bad_shape"] == 1
    assert report["too_many_threads"] == [0, 1] and report["too_much_shared"] == [0, 0, 1]
    assert report["bad_handle"] == [400] * 5 and report["bad_offset"] == [1, 1, 1]
    mine = [x for x in vgpud.control("launches")["launches"] if x["pid"] == report["pid"]]
    assert [(x["grid"], x["block"], x["shared_bytes"]) for x in mine] == [
        ([3, 2, 1], [64, 2, 1], 128), ([1, 1, 1], [64, 2, 1], 128), ([5, 1, 1], [64, 2, 1], 128)]
    expected = struct.pack("<QfIq", 0x7000_0000_1000, 2.5, 7, -5)
    assert all(bytes.fromhex(x["args_hex"]) == expected for x in mine)
    assert mine[0]["stream"] == mine[1]["stream"] != mine[2]["stream"]


def test_queries_about_loaded_code(vgpud, code):
    """Names, parameter counts and enumerations answer from the image's real kernels; refusals
    with the documented codes."""
    report = run_json(LEGACY + textwrap.dedent(f"""
        module = ok(cu.cuModuleLoadData(open({str(code['lib.cubin'])!r}, 'rb').read()))
        library = ok(cu.cuLibraryLoadData(open({str(code['legacy.cubin'])!r}, 'rb').read(), None, None, 0, None,
                                          None, 0))
        fill = ok(cu.cuModuleGetFunction(module, b"fill"))
        kernel = ok(cu.cuLibraryGetKernel(library, b"legacy"))
        name = ctypes.c_char_p()
        count = ctypes.c_size_t()
        functions = (ctypes.c_void_p * 4)()
        out = {{
            "func_name": ok(cu.cuFuncGetName(fill)).decode(), "kernel_name": ok(cu.cuKernelGetName(kernel)).decode(),
            "func_params": ok(cu.cuFuncGetParamCount(fill)), "kernel_params": ok(cu.cuKernelGetParamCount(kernel)),
            "library_of": int(ok(cu.cuKernelGetLibrary(kernel))) == int(library),
            "module_function_library": lib.cuKernelGetLibrary(ctypes.byref(ctypes.c_void_p()),
                                                              ctypes.c_void_p(int(fill))),
            "enumerate_zero": lib.cuModuleEnumerateFunctions(functions, 0, ctypes.c_void_p(int(module))),
            "enumerate_null": lib.cuModuleEnumerateFunctions(None, 1, ctypes.c_void_p(int(module))),
            "enumerate_library_as_module": lib.cuModuleEnumerateFunctions(functions, 4, ctypes.c_void_p(int(library))),
            "enumerate_module_as_library": lib.cuLibraryEnumerateKernels(functions, 4, ctypes.c_void_p(int(module))),
            "null_name": lib.cuFuncGetName(None, ctypes.c_void_p(int(fill))),
            "null_count": lib.cuKernelGetParamCount(ctypes.c_void_p(int(kernel)), None),
            "junk": [lib.cuFuncGetName(ctypes.byref(name), ctypes.c_void_p(99)),
                     lib.cuFuncGetParamCount(ctypes.c_void_p(99), ctypes.byref(count))],
        }}
        print(json.dumps(out))
        """), vgpud.env)
    assert report["func_name"] == "fill" and report["kernel_name"] == "legacy"
    assert report["func_params"] == 3 and report["kernel_params"] == 4
    assert report["library_of"] and report["module_function_library"] == 400
    assert report["enumerate_zero"] == 0 and report["enumerate_null"] == 1
    assert report["enumerate_library_as_module"] == 400 and report["enumerate_module_as_library"] == 400
    assert report["null_name"] == 1 and report["null_count"] == 1 and report["junk"] == [400, 400]


def test_a_stream_has_its_context_sm_resources(vgpud):
    """cuStreamGetDevResource: a green context's stream has the green context's SMs, an ordinary
    stream the device's; workqueue types and bad handles are refused."""
    report = run_json(LEGACY + textwrap.dedent("""
        SM = cu.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM
        dev = ok(cu.cuDeviceGet(0))
        whole = ok(cu.cuDeviceGetDevResource(dev, SM))
        groups, count, _ = ok(cu.cuDevSmResourceSplitByCount(1, whole, 0, 16))
        green = ok(cu.cuGreenCtxCreate(ok(cu.cuDevResourceGenerateDesc(groups[:1], 1)), dev,
                                       cu.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM))
        green_stream = ok(cu.cuGreenCtxStreamCreate(green, cu.CUstream_flags.CU_STREAM_NON_BLOCKING, 0))
        stream = ok(cu.cuStreamCreate(0))
        resource = ctypes.create_string_buffer(256)
        out = {"device": whole.sm.smCount, "group": groups[0].sm.smCount,
               "green": ok(cu.cuStreamGetDevResource(green_stream, SM)).sm.smCount,
               "ordinary": ok(cu.cuStreamGetDevResource(stream, SM)).sm.smCount,
               "null": ok(cu.cuStreamGetDevResource(0, SM)).sm.smCount,
               "workqueue": code(cu.cuStreamGetDevResource(stream, cu.CUdevResourceType.CU_DEV_RESOURCE_TYPE_WORKQUEUE_CONFIG)),
               "bad_stream": lib.cuStreamGetDevResource(ctypes.c_void_p(77777), resource, 1),
               "null_out": lib.cuStreamGetDevResource(None, None, 1)}
        print(json.dumps(out))
        """), vgpud.env)
    assert report["device"] == report["ordinary"] == report["null"] == 132
    assert report["green"] == report["group"] == 16
    assert report["workqueue"] == 914 and report["bad_stream"] == 400 and report["null_out"] == 1
