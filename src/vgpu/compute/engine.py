"""Run PTX kernels in this process: parse, compile (lazily, per kernel, cached on disk), launch
over the host's cores.  Device pointers are plain host addresses here (numpy arrays serve as
device memory); vgpud's executor runs the same compiled code where device memory is mapped at
its device addresses.

    program = Program.from_ptx(text)
    kernel = program.kernel("_Z5saxpyifPfS_")
    kernel.launch(grid=(n // 256, 1, 1), block=(256, 1, 1), args=[n, 2.0, x, y])
"""

from __future__ import annotations

import ctypes
import math
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import llvmlite.binding as llvm

from vgpu.compute import cache, compiler
from vgpu.compute.launch import Launch
from vgpu.compute.lower.kernel import ENTRY, KernelFacts, lower_kernel
from vgpu.compute.lower.layout import function_ids
from vgpu.compute.printf import format_records
from vgpu.compute.runner import run_ctas
from vgpu.compute.ptx.parser import parse
from vgpu.compute.ptx.syntax import Module

ENTRY_TYPE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32)
PRINTF_BUFFER = 1 << 20
DEFAULT_STACK = 1024
#: CTAs of a cooperative launch that run at once (each on a host thread)
MAX_COOPERATIVE_CTAS = 1024
_SCALAR = {"u8": "<B", "s8": "<b", "b8": "<B", "u16": "<H", "s16": "<h", "b16": "<H", "u32": "<I", "s32": "<i",
           "b32": "<I", "u64": "<Q", "s64": "<q", "b64": "<Q", "f32": "<f", "f64": "<d", "f16": "<e"}


def pack_parameters(kernel: str, offsets: dict[str, int], types: Sequence[str], size: int, args: Sequence[Any],
                    address: Any = None) -> bytes:
    """Parameters as a kernel's ``.param`` list lays them out: arrays by ``address(array)`` (by
    default their data's address), numpy scalars and bytes as their bytes, Python numbers in
    the PTX type."""
    if len(args) != len(types):
        raise TypeError(f"{kernel} takes {len(types)} parameters, {len(args)} given")
    buffer = bytearray(size)
    for (name, at), ptx_type, value in zip(offsets.items(), types, args):
        if getattr(value, "shape", None) == ():  # a numpy scalar: its bytes
            value = value.tobytes()
        elif hasattr(value, "__array_interface__"):  # an array: where its data is
            value = address(value) if address is not None else value.__array_interface__["data"][0]
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
        else:
            width = struct.calcsize(_SCALAR.get(ptx_type, "<Q"))
            if isinstance(value, float) or ptx_type[0] == "f":  # a float of the parameter's width
                data = struct.pack({2: "<e", 4: "<f"}.get(width, "<d"), value)
            else:  # an integer in the parameter's width, whatever its sign
                data = (int(value) & ((1 << 8 * width) - 1)).to_bytes(width, "little")
        buffer[at:at + len(data)] = data
    return bytes(buffer)


class KernelError(RuntimeError):
    """A launch ended with a CUDA error (``code``): 700 illegal address, 710 assert, 715 trap..."""

    def __init__(self, code: int, message: str, printed: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.printed = printed


@dataclass
class LaunchResult:
    printed: str
    seconds: float


class Kernel:
    def __init__(self, program: "Program", name: str) -> None:
        self.program = program
        self.name = name
        self._facts: KernelFacts | None = None
        self._entry: Any = None
        self._lock = threading.Lock()

    def compile(self) -> KernelFacts:
        """Lower and compile (or take from the cache) once; later calls return at once."""
        with self._lock:
            if self._facts is None:
                self._facts, object_code = self.program._object(self.name)
                self._entry = ENTRY_TYPE(self.program._address(object_code))
            return self._facts

    def pack(self, args: Sequence[Any]) -> bytes:
        """Parameters as the kernel's ``.param`` list lays them out (see pack_parameters)."""
        facts = self.compile()
        return pack_parameters(self.name, facts.param_offsets, facts.param_types, facts.param_bytes, args)

    def launch(self, grid: Sequence[int], block: Sequence[int], args: Sequence[Any], shared: int = 0,
               threads: int | None = None, symbols: Sequence[int] | None = None,
               cooperative: bool = False) -> LaunchResult:
        """Run the kernel over a grid (``cooperative``: every CTA at once, each on a thread of
        its own, so grid-wide barriers work); KernelError when it fails."""
        facts = self.compile()
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        params = ctypes.create_string_buffer(self.pack(args), max(facts.param_bytes, 1))
        table = (ctypes.c_uint64 * max(len(facts.symbols), 1))(*(symbols or self.program.symbol_addresses(facts)))
        printf = ctypes.create_string_buffer(PRINTF_BUFFER)
        launch = Launch()
        launch.params = ctypes.addressof(params)
        launch.symbols = ctypes.addressof(table)
        launch.grid[:] = grid
        launch.block[:] = block
        launch.dynamic_shared = shared
        launch.sm_count = 132
        launch.stack_bytes = max(DEFAULT_STACK, (facts.local_bytes + 15) // 16 * 16)
        launch.printf_buffer = ctypes.addressof(printf)
        launch.printf_capacity = PRINTF_BUFFER
        barrier = ctypes.create_string_buffer(16)
        if cooperative:
            if math.prod(grid) > MAX_COOPERATIVE_CTAS:
                raise KernelError(720, f"a cooperative launch of {math.prod(grid)} CTAs: at most "
                                       f"{MAX_COOPERATIVE_CTAS} run at once here")
            launch.grid_barrier = ctypes.addressof(barrier)
        if not facts.observable:  # nothing it does can be seen
            return LaunchResult("", 0.0)
        started = time.perf_counter()
        ctas = math.prod(grid)
        code = run_ctas(self._entry, ctypes.addressof(launch), ctas, ctas if cooperative else threads)
        seconds = time.perf_counter() - started
        printed = format_records(printf.raw[:min(launch.printf_used, PRINTF_BUFFER)], block, _read_string)
        if code:
            where = f" (block {tuple(launch.error_cta)}, thread {tuple(launch.error_thread)})"
            raise KernelError(code, f"{self.name} failed with CUDA error {code}{where}", printed)
        return LaunchResult(printed, seconds)


def _read_string(address: int) -> str:
    return ctypes.string_at(address).decode("utf-8", errors="replace")


class Program:
    """A PTX module loaded in this process; its .global/.const variables get host memory."""

    def __init__(self, module: Module, text: str) -> None:
        self.module = module
        self.text = text
        self._kernels: dict[str, Kernel] = {}
        self._variables: dict[str, ctypes.Array] = {}
        self._engines: list[llvm.ExecutionEngine] = []

    @classmethod
    def from_ptx(cls, text: str | bytes) -> "Program":
        if isinstance(text, bytes):
            text = text.split(b"\0", 1)[0].decode()
        return cls(parse(text), text)

    def kernel(self, name: str) -> Kernel:
        if name not in self._kernels:
            function = self.module.function(name)
            if not function.is_kernel:
                raise KeyError(name)
            self._kernels[name] = Kernel(self, name)
        return self._kernels[name]

    def variable(self, name: str) -> ctypes.Array:
        """A module variable's storage (initialised from the PTX) in this process."""
        if name not in self._variables:
            from vgpu.compute.initializers import initial_bytes
            found = next(v for v in self.module.variables if v.name == name)
            data = initial_bytes(found, self.address_of)
            self._variables[name] = ctypes.create_string_buffer(data, max(len(data), found.size, 1))
        return self._variables[name]

    def address_of(self, name: str) -> int:
        """A variable's address, or a device function's (its number: see layout.function_ids)."""
        ids = function_ids(self.module)
        return ids[name] if name in ids else ctypes.addressof(self.variable(name))

    def symbol_addresses(self, facts: KernelFacts) -> list[int]:
        return [self.address_of(name) for name, _ in facts.symbols]

    def _object(self, name: str) -> tuple[KernelFacts, bytes]:
        key = cache.key(self.text, name, compiler.host_id())
        found = cache.load(key)
        if found is not None:
            return found
        module, facts = lower_kernel(self.module, name)
        object_code = compiler.compile_object(module)
        cache.store(key, facts, object_code)
        return facts, object_code

    def _address(self, object_code: bytes) -> int:
        engine, address = compiler.load_object(object_code, ENTRY)
        self._engines.append(engine)
        return address
