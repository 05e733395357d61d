"""The compute engine's Program API over the CUDA driver API (cuda-python): the kernel
corpus's tests run on whatever libcuda.so.1 the process loads.

On a machine with an NVIDIA GPU this checks the corpus's references against real hardware
(NaN conversions, rounding modes, printf's formatting, error codes):

    VGPU_CORPUS_ON=driver pytest tests/compute/test_kernel_corpus.py

and under vgpu (`vgpu run -- env VGPU_CORPUS_ON=driver pytest ...`) it runs the corpus
through the library and vgpud rather than in-process.  Arrays given as arguments are copied
to device memory before a launch and back after it; a launch's printf output is what the
process wrote to its standard output meanwhile.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from typing import Any, Sequence

import numpy as np
from cuda.bindings import driver as cu

from vgpu.compute.engine import KernelError, LaunchResult, pack_parameters
from vgpu.compute.lower.layout import param_layout
from vgpu.compute.ptx.parser import parse

#: errors after which the context is gone (a GPU's sticky errors): the next launch gets a new one
STICKY = {700, 710, 715, 719}


def _check(result: Any) -> Any:
    error = result[0] if isinstance(result, tuple) else result
    if int(error) != 0:
        raise KernelError(int(error), f"CUDA error {int(error)}")
    if isinstance(result, tuple):
        return result[1] if len(result) == 2 else result[1:]
    return None


def _context() -> Any:
    _check(cu.cuInit(0))
    device = _check(cu.cuDeviceGet(0))
    context = _check(cu.cuDevicePrimaryCtxRetain(device))
    _check(cu.cuCtxSetCurrent(context))
    return device


class Program:
    def __init__(self, text: str) -> None:
        self.text = text
        self.ptx = parse(text)
        self._module: Any = None

    @classmethod
    def from_ptx(cls, text: str | bytes) -> "Program":
        return cls(text.decode() if isinstance(text, bytes) else text)

    def module(self) -> Any:
        if self._module is None:
            _context()
            self._module = _check(cu.cuModuleLoadData(self.text.encode() + b"\0"))
        return self._module

    def forget(self) -> None:
        """The context was reset (a sticky error): the module goes with it."""
        self._module = None

    def kernel(self, name: str) -> "Kernel":
        return Kernel(self, name)


class Kernel:
    def __init__(self, program: Program, name: str) -> None:
        self.program = program
        self.name = name
        params = program.ptx.function(name).params
        self.offsets, self.size = param_layout(params)
        self.types = [p.type for p in params]

    def launch(self, grid: Sequence[int], block: Sequence[int], args: Sequence[Any], shared: int = 0,
               threads: int | None = None, cooperative: bool = False) -> LaunchResult:
        function = _check(cu.cuModuleGetFunction(self.program.module(), self.name.encode()))
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        arrays = [a for a in args if isinstance(a, np.ndarray) and a.shape != ()]
        device = {id(a): int(_check(cu.cuMemAlloc(max(a.nbytes, 1)))) for a in arrays}
        for array in arrays:
            _check(cu.cuMemcpyHtoD(device[id(array)], array.ctypes.data, array.nbytes))
        packed = pack_parameters(self.name, self.offsets, self.types, self.size, args, lambda a: device[id(a)])
        buffer = ctypes.create_string_buffer(packed, max(len(packed), 1))
        size = ctypes.c_size_t(len(packed))
        config = (ctypes.c_void_p * 5)(1, ctypes.addressof(buffer), 2, ctypes.addressof(size), 0)
        printed, code = self._run(function, grid, block, shared, cooperative, ctypes.addressof(config))
        if code:
            if code in STICKY:
                cu.cuDevicePrimaryCtxReset(_check(cu.cuDeviceGet(0)))
                self.program.forget()
            raise KernelError(code, f"{self.name} failed with CUDA error {code}", printed)
        for array in arrays:
            _check(cu.cuMemcpyDtoH(array.ctypes.data, device[id(array)], array.nbytes))
            _check(cu.cuMemFree(device[id(array)]))
        return LaunchResult(printed, 0.0)

    def _run(self, function: Any, grid: tuple, block: tuple, shared: int, cooperative: bool,
             extra: int) -> tuple[str, int]:
        """Launch and synchronise, with the process's standard output caught in a file."""
        with tempfile.TemporaryFile() as caught:
            saved = os.dup(1)
            os.dup2(caught.fileno(), 1)
            try:
                if shared:
                    cu.cuFuncSetAttribute(function, cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                          shared)
                if cooperative:
                    code = self._cooperative(function, grid, block, shared, extra)
                else:
                    code = int(cu.cuLaunchKernel(function, *grid, *block, shared, 0, 0, extra)[0])
                if not code:
                    code = int(cu.cuCtxSynchronize()[0])
            finally:
                os.dup2(saved, 1)
                os.close(saved)
            caught.seek(0)
            return caught.read().decode(errors="replace"), code

    @staticmethod
    def _cooperative(function: Any, grid: tuple, block: tuple, shared: int, extra: int) -> int:
        """cuLaunchCooperativeKernel takes parameters as an array of pointers, not a buffer: a
        launch with the cooperative attribute takes the buffer."""
        attribute = cu.CUlaunchAttribute()
        attribute.id = cu.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_COOPERATIVE
        attribute.value.cooperative = 1
        config = cu.CUlaunchConfig()
        config.gridDimX, config.gridDimY, config.gridDimZ = grid
        config.blockDimX, config.blockDimY, config.blockDimZ = block
        config.sharedMemBytes = shared
        config.attrs = [attribute]
        config.numAttrs = 1
        return int(cu.cuLaunchKernelEx(config, function, 0, extra)[0])
