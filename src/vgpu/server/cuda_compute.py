"""Kernels compute in vgpud: a launch whose module carries PTX for the device runs, compiled
for this host, in the process's executor (a worker that maps only that process's device
memory), in its stream's order.

While a kernel computes, the process's later frames wait (the daemon holds them) and the
ones it waits for a reply hear every second that work still runs; when the kernel ends its
printed output goes to the process, a failure becomes the process's sticky error, and the
waiting frames run.  Launches that cannot compute (SASS only, an instruction the engine does
not know) are recorded as not computed, with the reason, logged once per kernel.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from vgpu.compute import cache, compiler
from vgpu.compute.initializers import initial_bytes
from vgpu.compute.jobs import Buffer, Job
from vgpu.compute.launch import Launch, offset
from vgpu.compute.lower.kernel import ENTRY, KernelFacts, lower_kernel, observable
from vgpu.compute.lower.layout import function_ids
from vgpu.compute.lower.registry import Unsupported
from vgpu.compute.printf import format_records
from vgpu.compute.ptx.syntax import Module
from vgpu.device.launches import ComputeOutcome
from vgpu.images.model import LIBRARY_MEMBER, CodeImage

log = logging.getLogger("vgpud")
PRINTF_CAPACITY = 1 << 20
#: launch failures a GPU makes sticky for the context
STICKY = frozenset({700, 710, 715, 719})


@dataclass
class PreparedModule:
    """A module image's PTX for one architecture, parsed once."""

    text: str
    module: Module
    arch: int


def choose_ptx(image: CodeImage, arch: int) -> tuple[list[bytes], str]:
    """The PTX a device of ``arch`` runs: the highest architecture not above it, preferred to
    any SASS (host code picks kernels by the architectures it was built for); for a linked
    program, that of each input.  Empty, and why, when there is none."""
    if image.link_inputs is not None:
        sources = []
        for index in sorted(set(image.link_inputs)):
            codes = [c for c, i in zip(image.codes, image.link_inputs) if i == index]
            found = [c for c in codes if c.kind == "ptx" and c.arch <= arch and c.source]
            if found:
                sources.append(max(found, key=lambda c: c.arch).source)
            elif not index & LIBRARY_MEMBER:
                return [], f"a linked program with an input that is SASS only ({_sass(codes)})"
        return sources, ""
    candidates = [c for c in image.codes if c.kind == "ptx" and c.arch <= arch and c.source]
    if candidates:
        return [max(candidates, key=lambda c: c.arch).source], ""
    newer = sorted({c.arch for c in image.codes if c.kind == "ptx" and c.arch > arch})
    if newer:
        return [], f"PTX only for compute_{', compute_'.join(map(str, newer))}, newer than the device"
    return [], f"SASS only, {_sass(image.codes)}"


def _sass(codes: list) -> str:
    return ", ".join(f"sm_{a}" for a in sorted({c.arch for c in codes if c.kind == "cubin"})) or "no code"


def merged(modules: list[Module]) -> Module:
    """Linked PTX modules as one: a definition wins over a declaration of the same name."""
    result = Module(modules[0].version, modules[0].target, modules[0].address_size)
    variables: dict[str, object] = {}
    functions: dict[str, object] = {}
    for module in modules:
        for variable in module.variables:
            if variable.name not in variables or variables[variable.name].linkage == "extern":
                variables[variable.name] = variable
        for function in module.functions:
            if function.name not in functions or not functions[function.name].defined:
                functions[function.name] = function
    result.variables = list(variables.values())
    result.functions = list(functions.values())
    return result


class KernelCompute:
    def __init__(self, enabled: bool, executors: Callable[[Any], Any], finished: Callable[[Any, Any], None]) -> None:
        """``executors(session)``: the process's executor; ``finished(session, job)``: called on
        vgpud's selector thread when a job has ended."""
        self.enabled = enabled
        self._executors = executors
        self._finished = finished
        self._prepared: dict[tuple[int, int], PreparedModule | str] = {}
        self._compiled: dict[tuple[str, str], tuple[KernelFacts, bytes] | str] = {}
        self._said: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 2)), thread_name_prefix="vgpud-compute")

    def prepare(self, image: CodeImage, arch: int) -> PreparedModule | str:
        """The image's PTX for ``arch``, parsed; or why its kernels cannot compute."""
        key = (id(image), arch)
        found = self._prepared.get(key)
        if found is None:
            sources, reason = choose_ptx(image, arch)
            if not sources:
                found = reason
            else:
                from vgpu.compute.ptx.parser import PtxSyntaxError, parse
                texts = [source.split(b"\0", 1)[0].decode("utf-8", errors="replace") for source in sources]
                try:
                    modules = [parse(text) for text in texts]
                    found = PreparedModule("\n".join(texts), modules[0] if len(modules) == 1 else merged(modules), arch)
                except PtxSyntaxError as error:
                    found = f"PTX the engine cannot read: {error}"
            self._prepared[key] = found
        return found

    def forget(self, image: CodeImage) -> None:
        for key in [k for k in self._prepared if k[0] == id(image)]:
            del self._prepared[key]

    def observable(self, prepared: PreparedModule, kernel: str) -> bool:
        """Whether running the kernel can be seen at all (an empty kernel cannot: it needs no run)."""
        try:
            return observable(prepared.module.function(kernel))
        except KeyError:
            return True  # no body to look at: the compiler will say why

    def say_once(self, kernel: str, reason: str) -> None:
        if (kernel, reason) not in self._said:
            self._said.add((kernel, reason))
            log.warning("kernel %s is not computed: %s", kernel, reason)

    def start(self, session: Any, prepared: PreparedModule, kernel: str, grid: tuple[int, int, int],
              block: tuple[int, int, int], shared: int, params: bytes, globals_: dict[str, tuple[int, int]],
              write: Callable[[int, bytes], None], read: Callable[[int, int], bytes], stack_bytes: int,
              sm_count: int, cooperative: bool, outcome: ComputeOutcome) -> None:
        """Compile (once) and run a launch in the process's executor; the process waits."""
        session.computing = True
        job = _Job(session, outcome, write, read)
        job.origin = getattr(session, "serving", None)

        def run() -> None:
            try:
                facts, object_code = self._object(prepared, kernel)
                missing = [name for name, _ in facts.symbols if name not in globals_]
                if missing:
                    raise Unsupported(f"variables defined in other modules ({', '.join(missing)})")
                self._initialise(prepared, job, facts, globals_)
                launch = Launch()
                launch.grid[:] = grid
                launch.block[:] = block
                launch.dynamic_shared = shared
                launch.sm_count = sm_count
                launch.stack_bytes = max(stack_bytes, (facts.local_bytes + 15) // 16 * 16)
                launch.printf_capacity = PRINTF_CAPACITY
                symbols = struct.pack(f"<{len(facts.symbols)}Q", *(globals_[name][0] for name, _ in facts.symbols))
                buffers = [Buffer(offset("params"), max(len(params), 8), params),
                           Buffer(offset("symbols"), max(len(symbols), 8), symbols),
                           Buffer(offset("printf_buffer"), PRINTF_CAPACITY, returned=True,
                                  used_at=offset("printf_used"))]
                if cooperative:
                    buffers.append(Buffer(offset("grid_barrier"), 16))
                ctas = math.prod(grid)
                result = self._executors(session).run(Job(
                    key=cache.key(prepared.text, kernel, compiler.host_id()), object=object_code, entry=ENTRY,
                    launch=bytes(launch), ctas=ctas, threads=ctas if cooperative else None, buffers=tuple(buffers)))
                job.code, job.seconds = result.code, result.seconds
                job.printed = format_records(result.outputs[0] if result.outputs else b"", block, job.read_string)
                if result.code:
                    job.reason = result.detail or f"CUDA error {result.code}"
                outcome.status = "computed" if not result.code else "failed"
            except Unsupported as error:
                outcome.status, outcome.reason = "not computed", str(error)
                self.say_once(kernel, str(error))
            except Exception as error:  # a bug of ours costs this launch its results, not vgpud
                log.exception("computing %s failed in vgpud", kernel)
                outcome.status, outcome.reason = "not computed", f"internal error: {error}"
            outcome.host_seconds = job.seconds
            self._finished(session, job)

        self._pool.submit(run)

    def _object(self, prepared: PreparedModule, kernel: str) -> tuple[KernelFacts, bytes]:
        key = (prepared.text, kernel)
        with self._lock:
            found = self._compiled.get(key)
        if isinstance(found, str):
            raise Unsupported(found)
        if found is not None:
            return found
        name = cache.key(prepared.text, kernel, compiler.host_id())
        found = cache.load(name)
        if found is None:
            try:
                module, facts = lower_kernel(prepared.module, kernel)
            except Unsupported as error:
                with self._lock:
                    self._compiled[key] = str(error)
                raise
            found = (facts, compiler.compile_object(module))
            cache.store(name, *found)
        with self._lock:
            self._compiled[key] = found
        return found

    @staticmethod
    def _initialise(prepared: PreparedModule, job: "_Job", facts: KernelFacts,
                    globals_: dict[str, tuple[int, int]]) -> None:
        """Variables whose initial value holds other variables' addresses get them now (the
        loader wrote every number it could; addresses are known only once allocated)."""
        for variable in prepared.module.variables:
            if variable.name in globals_ and variable.initializer and any(
                    isinstance(v, tuple) for v in variable.initializer):
                ids = function_ids(prepared.module)
                data = initial_bytes(variable, lambda name: ids[name] if name in ids else globals_[name][0])
                job.write(globals_[variable.name][0], data)


@dataclass
class _Job:
    session: Any
    outcome: ComputeOutcome
    write: Callable[[int, bytes], None]
    read: Callable[[int, int], bytes]
    origin: Any = None
    code: int = 0
    seconds: float = 0.0
    printed: str = ""
    reason: str = ""
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.monotonic()

    def read_string(self, address: int) -> str:
        """A NUL-terminated string in the process's device memory (printf formats and %s)."""
        out = bytearray()
        while len(out) < 4096:
            try:
                chunk = self.read(address + len(out), 64)
            except ValueError:  # near the end of its allocation: a byte at a time
                try:
                    chunk = self.read(address + len(out), 1)
                except ValueError:
                    break
            end = chunk.find(b"\0")
            if end >= 0:
                out += chunk[:end]
                break
            out += chunk
        return out.decode("utf-8", errors="replace")

