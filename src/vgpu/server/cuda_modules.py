"""Code on the simulated GPU: modules and libraries loaded from the images clients send,
their kernels and globals, launches (validated by the shim, recorded and timed here), and
the occupancy calculator.  Kernels are not computed: a launch moves its stream's modelled
time and the GPU's utilisation, and is kept in the daemon's LaunchLog.

A mixin of CudaService (vgpu.server.cuda_service), whose streams and contexts it uses.
Module and kernel ids are vgpud's; a function's id is its module's id << 16 | the kernel's
index in the image's sorted kernel names, so a CUfunction and a CUkernel of the same kernel
share an id.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from vgpu.api.manifest import load
from vgpu.device.gpu import Gpu, OutOfMemory
from vgpu.device.launches import ComputeOutcome
from vgpu.device.kernels import SHARED_UNIT, FunctionState, blocks_per_multiprocessor, launch_seconds
from vgpu.images import CodeImage, ImageError, ModuleCode, NoBinaryForGpu, PtxTooNew, read_image
from vgpu.server.dispatch import Caller
from vgpu.server.state import Later, Session
from vgpu.wire import protocol

log = logging.getLogger("vgpud")
C = load("cuda").constants
SUCCESS = C["CUDA_SUCCESS"]
INVALID_VALUE = C["CUDA_ERROR_INVALID_VALUE"]
#: function attributes, by number (CUfunction_attribute)
FA = {name.removeprefix("CU_FUNC_ATTRIBUTE_"): value for name, value in C.items()
      if name.startswith("CU_FUNC_ATTRIBUTE_") and name != "CU_FUNC_ATTRIBUTE_MAX"}
MODULE_FLAG_LIBRARY = 0x1
#: a green context's context id has this bit, and its SM count from bit GREEN_SM_SHIFT
#: (native/cuda/cuda_shim.c)
GREEN_CONTEXT = 1 << 34
GREEN_SM_SHIFT = 48
LAUNCHED = struct.pack("<i", SUCCESS)
#: images kept after reading them
IMAGE_CACHE = 64


@dataclass
class Instance:
    """A module's code on one GPU: the chosen piece of the image, its globals' addresses and
    its kernels' settable state."""

    gpu: Gpu
    code: ModuleCode
    globals: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (address, size)
    functions: dict[str, FunctionState] = field(default_factory=dict)


@dataclass
class LoadedModule:
    id: int
    owner: int
    image: CodeImage
    library: bool
    kernel_names: list[str]
    instances: dict[int, Instance] = field(default_factory=dict)  # GPU index -> instance
    #: for a module (not a library): the GPU of the context it was loaded in
    home: int | None = None


@dataclass(frozen=True)
class FunctionRef:
    """What a CUfunction or CUkernel id names."""

    module: LoadedModule
    index: int

    @property
    def name(self) -> str:
        return self.module.kernel_names[self.index]


class ModuleServing:
    """Modules, libraries, kernels, launches and occupancy (mixed into CudaService)."""

    def _init_modules(self) -> None:
        self.modules: dict[int, LoadedModule] = {}
        self._module_ids = itertools.count(1)
        self.private_ops = {protocol.OP_MODULE: self.load_module, protocol.OP_LAUNCH: self.launch}
        #: images already read, by content digest (a bounded cache; see _read_image)
        self._images: dict[bytes, CodeImage] = {}
        #: (session, launch head) -> what a repeated launch needs (see launch)
        self._launch_cache: dict[tuple[int, bytes], tuple] = {}
        self._last_seconds = 0.0
        self._last_outcome = ComputeOutcome("off")

    # loading ---------------------------------------------------------------------------
    def _instance(self, c: Caller | Session, module: LoadedModule, gpu: Gpu) -> Instance:
        """The module's code on a GPU, loaded (globals allocated and initialised) on first use."""
        found = module.instances.get(gpu.index)
        if found is not None:
            return found
        code = module.image.module_for(gpu.profile.compute_capability[0] * 10 + gpu.profile.compute_capability[1])
        instance = Instance(gpu, code)
        attrs = self._attributes[gpu.index]
        try:
            for name, variable in code.globals.items():
                size = max(variable.size, 1)
                gpu.hold(module.owner, gpu.memory.footprint(size), cuda=True)
                address = gpu.memory.allocate(module.owner, size).address
                if variable.initial:
                    gpu.memory.write(module.owner, address, variable.initial)
                instance.globals[name] = (address, variable.size)
        except OutOfMemory:
            self._unload_instance(module.owner, instance)
            raise
        instance.functions = {name: FunctionState(kernel, attrs) for name, kernel in code.kernels.items()}
        module.instances[gpu.index] = instance
        return instance

    @staticmethod
    def _unload_instance(owner: int, instance: Instance) -> None:
        for address, size in instance.globals.values():
            instance.gpu.memory.free(owner, address)
            instance.gpu.release(owner, instance.gpu.memory.footprint(max(size, 1)))
        instance.globals.clear()

    def load_module(self, session: Session, payload: bytes) -> bytes:
        """OP_MODULE: u64 context, u32 flags (1: a library), the image.  Reply: i32 CUresult,
        u64 module id, u32 kernel count, then per kernel u16 name length, name, u32 max
        threads per block, u32 launch bound (0: none), u32 max dynamic shared bytes, u32 x/y/z required block (0: any),
        u32 parameter count and (u32 offset, u32 size) per parameter."""
        if len(payload) < 12:
            return struct.pack("<iQI", INVALID_VALUE, 0, 0)
        context, flags = struct.unpack_from("<QI", payload)
        c = Caller(session, context)
        library = bool(flags & MODULE_FLAG_LIBRARY)
        gpu, rc = self._context_gpu(c)
        if gpu is None and library:
            visible = self._visible(c)
            gpu, rc = (self.state.gpus[visible[0]], SUCCESS) if visible else (None, C["CUDA_ERROR_NO_DEVICE"])
        if gpu is None:
            return struct.pack("<iQI", rc, 0, 0)
        # a refusal's reply carries why after its 16 bytes (cuLinkComplete's error log shows it)
        try:
            image = self._read_image(payload[12:])
        except ImageError as error:
            return struct.pack("<iQI", C["CUDA_ERROR_INVALID_IMAGE"], 0, 0) + str(error).encode()
        arch = gpu.profile.compute_capability[0] * 10 + gpu.profile.compute_capability[1]
        try:
            chosen = image.module_for(arch)
        except PtxTooNew as error:
            return struct.pack("<iQI", C["CUDA_ERROR_INVALID_PTX"], 0, 0) + str(error).encode()
        except NoBinaryForGpu as error:
            # a library loads lazily, as with CUDA_MODULE_LOADING=LAZY: its kernels can be named,
            # and using one on this GPU fails (cuBLASLt keeps libraries for other architectures)
            if not library or os.environ.get("CUDA_MODULE_LOADING") == "EAGER":
                return struct.pack("<iQI", C["CUDA_ERROR_NO_BINARY_FOR_GPU"], 0, 0) + str(error).encode()
            chosen = None
        except ImageError as error:  # a linked image with a reference no input defines
            return struct.pack("<iQI", C["CUDA_ERROR_INVALID_IMAGE"], 0, 0) + str(error).encode()
        names = sorted({name for code in image.codes for name in code.kernels})
        log.debug("pid %d loads a %s (%s) with %d kernels; %s runs %s", session.pid, image.format,
                  ", ".join(image.architectures), len(names), gpu.profile.name,
                  f"{chosen.kind}_{chosen.arch}" if chosen else "none of them")
        module = LoadedModule(next(self._module_ids), session.id, image, library, names,
                              home=None if library else gpu.index)
        try:
            instance = self._instance(c, module, gpu) if chosen is not None else None
        except OutOfMemory:
            return struct.pack("<iQI", C["CUDA_ERROR_OUT_OF_MEMORY"], 0, 0)
        self.modules[module.id] = module
        out = [struct.pack("<iQI", SUCCESS, module.id, len(names))]
        for name in names:
            function = instance.functions.get(name) if instance is not None else None
            if function is None:
                kernel = next(code.kernels[name] for code in image.codes if name in code.kernels)
                function = FunctionState(kernel, self._attributes[gpu.index])
            kernel = function.kernel
            encoded = name.encode()
            out.append(struct.pack("<H", len(encoded)) + encoded)
            out.append(struct.pack("<III3II", function.max_threads_per_block, kernel.max_threads,
                                   function.max_dynamic_shared,
                                   *(kernel.required_block or (0, 0, 0)), len(kernel.params)))
            out.extend(struct.pack("<II", p.offset, p.size) for p in kernel.params)
        return b"".join(out)

    def _read_image(self, data: bytes) -> CodeImage:
        """An image read once per content: every process that starts cuBLAS loads the same ones."""
        key = hashlib.sha256(data).digest()
        image = self._images.pop(key, None) or read_image(data)
        self._images[key] = image  # most recently used last
        while len(self._images) > IMAGE_CACHE:
            self._images.pop(next(iter(self._images)))
        return image

    def _forget_modules(self, session: Session) -> None:
        self._forget_launch_shapes()
        for key in [k for k, m in self.modules.items() if m.owner == session.id]:
            del self.modules[key]  # their memory went with the session's

    def _module_of(self, handle_id: int, caller: Caller, library: bool) -> LoadedModule | None:
        found = self.modules.get(handle_id)
        return found if found is not None and found.owner == caller.session.id and found.library == library else None

    def _function_of(self, handle_id: int, caller: Caller) -> FunctionRef | None:
        module = self.modules.get(handle_id >> 16)
        index = handle_id & 0xFFFF
        if module is None or module.owner != caller.session.id or index >= len(module.kernel_names):
            return None
        return FunctionRef(module, index)

    def _function_state(self, c: Caller, ref: FunctionRef, dev: int | None = None) -> tuple[FunctionState | None, int]:
        """The kernel on the GPU it runs on: a module's own GPU, or for a library's kernel the
        given device or the current context's."""
        module = ref.module
        if module.home is not None:
            gpu = self.state.gpus[module.home]
        elif dev is not None:
            gpu, rc = self._device_call(c, dev)
            if gpu is None:
                return None, rc
        else:
            gpu, rc = self._context_gpu(c)
            if gpu is None:
                return None, rc
        try:
            function = self._instance(c, module, gpu).functions.get(ref.name)
        except NoBinaryForGpu:
            return None, C["CUDA_ERROR_NO_BINARY_FOR_GPU"]
        except OutOfMemory:
            return None, C["CUDA_ERROR_OUT_OF_MEMORY"]
        return (function, SUCCESS) if function is not None else (None, C["CUDA_ERROR_NOT_FOUND"])

    # the driver functions ----------------------------------------------------------------
    def cuModuleUnload(self, c: Caller, hmod: LoadedModule) -> int:
        self._forget_launch_shapes()
        for instance in hmod.instances.values():
            self._unload_instance(hmod.owner, instance)
        del self.modules[hmod.id]
        return SUCCESS

    cuLibraryUnload = cuModuleUnload

    def _get_function(self, module: LoadedModule, out: Any, name: bytes | None) -> int:
        if name is None:
            return INVALID_VALUE
        try:
            index = module.kernel_names.index(name.decode(errors="replace"))
        except ValueError:
            return C["CUDA_ERROR_NOT_FOUND"]
        out.value = FunctionRef(module, index)
        return SUCCESS

    def cuModuleGetFunction(self, c: Caller, hfunc: Any, hmod: LoadedModule, name: bytes | None) -> int:
        return self._get_function(hmod, hfunc, name)

    def cuLibraryGetKernel(self, c: Caller, pKernel: Any, library: LoadedModule, name: bytes | None) -> int:
        return self._get_function(library, pKernel, name)

    def cuKernelGetFunction(self, c: Caller, pFunc: Any, kernel: FunctionRef) -> int:
        function, rc = self._function_state(c, kernel)
        if function is not None:
            pFunc.value = kernel
        return rc

    def cuFuncGetModule(self, c: Caller, hmod: Any, hfunc: FunctionRef) -> int:
        hmod.value = hfunc.module
        return SUCCESS

    def cuLibraryGetModule(self, c: Caller, pMod: Any, library: LoadedModule) -> int:
        pMod.value = library
        return SUCCESS

    def cuModuleGetFunctionCount(self, c: Caller, count: Any, mod: LoadedModule) -> int:
        count.value = len(mod.kernel_names)
        return SUCCESS

    cuLibraryGetKernelCount = cuModuleGetFunctionCount

    def _get_global(self, c: Caller, module: LoadedModule, dptr: Any, size: Any, name: bytes | None) -> int:
        if name is None:
            return INVALID_VALUE
        gpu = self.state.gpus[module.home] if module.home is not None else self._context_gpu(c)[0]
        if gpu is None:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        try:
            found = self._instance(c, module, gpu).globals.get(name.decode(errors="replace"))
        except (NoBinaryForGpu, OutOfMemory):
            return C["CUDA_ERROR_NOT_FOUND"]
        if found is None:
            return C["CUDA_ERROR_NOT_FOUND"]
        if dptr is not None:
            dptr.value = found[0]
        if size is not None:
            size.value = found[1]
        return SUCCESS

    def cuModuleGetGlobal_v2(self, c: Caller, dptr: Any, bytes: Any, hmod: LoadedModule, name: bytes | None) -> int:
        return self._get_global(c, hmod, dptr, bytes, name)

    def cuLibraryGetGlobal(self, c: Caller, dptr: Any, bytes: Any, library: LoadedModule, name: bytes | None) -> int:
        return self._get_global(c, library, dptr, bytes, name)

    def _attribute(self, function: FunctionState, attrib: int) -> int | None:
        kernel = function.kernel
        answers = {
            FA["MAX_THREADS_PER_BLOCK"]: function.max_threads_per_block,
            FA["SHARED_SIZE_BYTES"]: kernel.shared_bytes,
            FA["CONST_SIZE_BYTES"]: kernel.const_bytes,
            FA["LOCAL_SIZE_BYTES"]: kernel.local_bytes,
            FA["NUM_REGS"]: kernel.registers,
            FA["PTX_VERSION"]: function.attrs["COMPUTE_CAPABILITY_MAJOR"] * 10 + function.attrs["COMPUTE_CAPABILITY_MINOR"],
            FA["BINARY_VERSION"]: function.attrs["COMPUTE_CAPABILITY_MAJOR"] * 10 + function.attrs["COMPUTE_CAPABILITY_MINOR"],
            FA["CACHE_MODE_CA"]: 0,
            FA["MAX_DYNAMIC_SHARED_SIZE_BYTES"]: function.max_dynamic_shared,
            FA["PREFERRED_SHARED_MEMORY_CARVEOUT"]: function.preferred_carveout,
            FA["CLUSTER_SIZE_MUST_BE_SET"]: function.cluster_size_must_be_set,
            FA["REQUIRED_CLUSTER_WIDTH"]: 0, FA["REQUIRED_CLUSTER_HEIGHT"]: 0, FA["REQUIRED_CLUSTER_DEPTH"]: 0,
            FA["NON_PORTABLE_CLUSTER_SIZE_ALLOWED"]: function.non_portable_cluster_size_allowed,
            FA["CLUSTER_SCHEDULING_POLICY_PREFERENCE"]: 0,
        }
        return answers.get(attrib)

    def cuFuncGetAttribute(self, c: Caller, pi: Any, attrib: int, hfunc: FunctionRef) -> int:
        return self._get_attribute(c, pi, attrib, hfunc, None)

    def cuKernelGetAttribute(self, c: Caller, pi: Any, attrib: int, kernel: FunctionRef, dev: int) -> int:
        return self._get_attribute(c, pi, attrib, kernel, dev)

    def _get_attribute(self, c: Caller, pi: Any, attrib: int, ref: FunctionRef, dev: int | None) -> int:
        function, rc = self._function_state(c, ref, dev)
        if function is None:
            return rc
        value = self._attribute(function, attrib)
        if value is None:
            return INVALID_VALUE
        pi.value = value
        return SUCCESS

    def cuFuncSetAttribute(self, c: Caller, hfunc: FunctionRef, attrib: int, value: int) -> int:
        return self._set_attribute(c, hfunc, attrib, value, None)

    def cuKernelSetAttribute(self, c: Caller, attrib: int, val: int, kernel: FunctionRef, dev: int) -> int:
        return self._set_attribute(c, kernel, attrib, val, dev)

    def _set_attribute(self, c: Caller, ref: FunctionRef, attrib: int, value: int, dev: int | None) -> int:
        self._forget_launch_shapes()
        function, rc = self._function_state(c, ref, dev)
        if function is None:
            return rc
        if attrib == FA["MAX_DYNAMIC_SHARED_SIZE_BYTES"]:
            if not 0 <= value <= function.max_shared_optin:
                return INVALID_VALUE
            function.max_dynamic_shared = value
        elif attrib == FA["PREFERRED_SHARED_MEMORY_CARVEOUT"]:
            if not -1 <= value <= 100:
                return INVALID_VALUE
            function.preferred_carveout = value
        elif attrib == FA["CLUSTER_SIZE_MUST_BE_SET"]:
            function.cluster_size_must_be_set = int(bool(value))
        elif attrib == FA["NON_PORTABLE_CLUSTER_SIZE_ALLOWED"]:
            function.non_portable_cluster_size_allowed = int(bool(value))
        elif attrib not in (FA["REQUIRED_CLUSTER_WIDTH"], FA["REQUIRED_CLUSTER_HEIGHT"], FA["REQUIRED_CLUSTER_DEPTH"],
                            FA["CLUSTER_SCHEDULING_POLICY_PREFERENCE"]):
            return INVALID_VALUE  # the rest are read-only
        return SUCCESS

    def cuFuncSetCacheConfig(self, c: Caller, hfunc: FunctionRef, config: int) -> int:
        return SUCCESS if 0 <= config <= 3 else INVALID_VALUE

    def cuKernelSetCacheConfig(self, c: Caller, kernel: FunctionRef, config: int, dev: int) -> int:
        return SUCCESS if 0 <= config <= 3 else INVALID_VALUE

    def cuFuncSetSharedMemConfig(self, c: Caller, hfunc: FunctionRef, config: int) -> int:
        return SUCCESS if 0 <= config <= 2 else INVALID_VALUE

    def cuFuncIsLoaded(self, c: Caller, state: Any, function: FunctionRef) -> int:
        state.value = C["CU_FUNCTION_LOADING_STATE_LOADED"]
        return SUCCESS

    def cuFuncLoad(self, c: Caller, function: FunctionRef) -> int:
        return SUCCESS

    def _param_info(self, c: Caller, ref: FunctionRef, index: int, offset: Any, size: Any) -> int:
        function, rc = self._function_state(c, ref)
        if function is None:
            return rc
        params = function.kernel.params
        if not 0 <= index < len(params):
            return INVALID_VALUE
        if offset is not None:
            offset.value = params[index].offset
        if size is not None:
            size.value = params[index].size
        return SUCCESS

    def cuFuncGetParamInfo(self, c: Caller, func: FunctionRef, paramIndex: int, paramOffset: Any,
                           paramSize: Any) -> int:
        return self._param_info(c, func, paramIndex, paramOffset, paramSize)

    def cuKernelGetParamInfo(self, c: Caller, kernel: FunctionRef, paramIndex: int, paramOffset: Any,
                             paramSize: Any) -> int:
        return self._param_info(c, kernel, paramIndex, paramOffset, paramSize)

    # occupancy ---------------------------------------------------------------------------
    def cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(self, c: Caller, numBlocks: Any, func: FunctionRef,
                                                             blockSize: int, dynamicSMemSize: int, flags: int) -> int:
        function, rc = self._function_state(c, func)
        if function is None:
            return rc
        numBlocks.value = blocks_per_multiprocessor(function, blockSize, dynamicSMemSize)
        return SUCCESS

    def cuOccupancyAvailableDynamicSMemPerBlock(self, c: Caller, dynamicSmemSize: Any, func: FunctionRef,
                                                numBlocks: int, blockSize: int) -> int:
        function, rc = self._function_state(c, func)
        if function is None:
            return rc
        if numBlocks <= 0 or blocks_per_multiprocessor(function, blockSize, 0) < numBlocks:
            dynamicSmemSize.value = 0
            return SUCCESS
        attrs = function.attrs
        per_block = attrs["MAX_SHARED_MEMORY_PER_MULTIPROCESSOR"] // numBlocks - attrs.get(
            "RESERVED_SHARED_MEMORY_PER_BLOCK", 0)
        dynamicSmemSize.value = max(0, min(per_block // SHARED_UNIT * SHARED_UNIT, function.max_shared_optin))
        return SUCCESS

    # launches ----------------------------------------------------------------------------
    LAUNCH = struct.Struct("<QQQ3I3IIII")
    LAUNCH_COOPERATIVE = 0x1
    LAUNCH_GRAPH_NODE = 0x2
    #: a kernel node's parameters set or read, a graph launch run or resumed (cuda_graphs.Graphs._graph_frame)
    LAUNCH_NODE_SET = 0x4
    LAUNCH_NODE_GET = 0x8
    LAUNCH_GRAPH_RUN = 0x10
    LAUNCH_CAPTURE_HOST = 0x20
    LAUNCH_NODE_PARAMS = LAUNCH_NODE_SET | LAUNCH_NODE_GET
    LAUNCH_GRAPH_FRAMES = LAUNCH_NODE_PARAMS | LAUNCH_GRAPH_RUN | LAUNCH_CAPTURE_HOST

    def launch(self, session: Session, payload: bytes) -> bytes | Later:
        """OP_LAUNCH: launch records back to back (the shim sends a thread's consecutive
        launches in one frame, without waiting); the reply is the first failure's code.  A
        record: u64 context, u64 function id, u64 stream id, grid x/y/z, block x/y/z, u32
        dynamic shared bytes, u32 flags, u32 parameter bytes, then with LAUNCH_GRAPH_NODE (a
        frame of its own, with a reply) u64 graph id, u32 dependency count and u64 node ids,
        then the packed parameters.  Recorded and timed on the stream, captured when the
        stream captures, or added to the graph as a kernel node (reply: i32, u64 node id)."""
        at, size, head = 0, len(payload), self.LAUNCH.size
        first = SUCCESS
        quick = self._launch_cache
        host = self.host_time.get(session.id, 0.0)
        now = time.time()
        records: list[tuple] = []
        busy: dict[int, list] = {}  # id(stream) -> [stream, seconds] (streams are not hashable)
        while at < size:
            flags, args_size = struct.unpack_from("<II", payload, at + head - 8)
            if flags & self.LAUNCH_GRAPH_NODE:
                return self._launch(session, payload[at:])
            if flags & self.LAUNCH_GRAPH_FRAMES:
                return self._graph_frame(session, payload[at:])
            end = at + head + args_size
            if end > size:
                raise struct.error(f"a launch record of {args_size} parameter bytes runs past its frame")
            found = quick.get((session.id, payload[at:at + head]))
            if found is not None:  # seen before, and nothing it depends on changed since
                stream, name, grid, block, shared, seconds, cooperative, outcome = found
                start = host if host > stream.ready_at else stream.ready_at
                stream.ready_at = start + seconds
                busy.setdefault(id(stream), [stream, 0.0])[1] += seconds
                records.append((session.pid, session.id, now, stream.gpu.index, name, grid, block, shared,
                                stream.id, payload[at + head:end], start, seconds, cooperative, False, outcome))
            else:
                self.state.launches.extend(records)
                records = []
                rc = struct.unpack_from("<i", self._launch(session, payload[at:end]))[0]
                first = first or rc
            at = end
            if session.computing and at < size:  # the rest of the frame runs once the kernel has ended
                self.state.launches.extend(records)
                for stream, seconds in busy.values():
                    stream.gpu.run(stream.owner, seconds)
                rest = bytes(payload[at:])
                return Later(lambda: self.launch(session, rest))
        self.state.launches.extend(records)
        for stream, seconds in busy.values():
            stream.gpu.run(stream.owner, seconds)  # NVML's utilisation follows the work
        return LAUNCHED if first == SUCCESS else struct.pack("<i", first)

    def _launch(self, session: Session, payload: bytes) -> bytes:
        """One launch record, the long way (see launch)."""
        (context, function_id, stream_id, gx, gy, gz, bx, by, bz, shared, flags,
         args_size) = self.LAUNCH.unpack_from(payload)
        at = self.LAUNCH.size
        c = Caller(session, context)
        graph, dependencies = None, []
        if flags & self.LAUNCH_GRAPH_NODE:
            graph_id, count = struct.unpack_from("<QI", payload, at)
            at += 12
            ids = struct.unpack_from(f"<{count}Q", payload, at)
            at += 8 * count
            graph = self.resolve("CUgraph", graph_id, c)
            dependencies = [self.resolve("CUgraphNode", node, c) for node in ids]
            if graph is None or any(node is None or node not in graph.nodes for node in dependencies):
                return struct.pack("<iQ", C["CUDA_ERROR_INVALID_HANDLE"] if graph is None else INVALID_VALUE, 0)
        args = bytes(payload[at:at + args_size])
        ref = self._function_of(function_id, c)
        if ref is None:
            return struct.pack("<iQ", C["CUDA_ERROR_INVALID_HANDLE"], 0)
        kernel = (ref, (gx, gy, gz), (bx, by, bz), shared, args, flags)
        signature = ("kernel", ref.module.id, ref.index)
        if graph is not None:
            node = self._add_node(graph, C["CU_GRAPH_NODE_TYPE_KERNEL"], dependencies,
                                  self._replay_of(C["CU_GRAPH_NODE_TYPE_KERNEL"], kernel), signature, kernel)
            return struct.pack("<iQ", SUCCESS, node.id)
        stream = self.resolve("CUstream", stream_id, c)
        if stream is None:
            return struct.pack("<i", C["CUDA_ERROR_INVALID_HANDLE"])
        if self.capturing(stream) is not None:
            return struct.pack("<i", self._capture_node(
                stream, C["CU_GRAPH_NODE_TYPE_KERNEL"],
                self._replay_of(C["CU_GRAPH_NODE_TYPE_KERNEL"], kernel), signature, kernel))
        rc = self._run_kernel(c, stream, *kernel)
        if rc == SUCCESS and not session.computing and self._held(stream) is None:
            # nothing to run (not computed, or nothing to see): the next launch with the same
            # head takes the quick way (launch)
            self._launch_cache[(session.id, bytes(payload[:self.LAUNCH.size]))] = (
                stream, ref.name, (gx, gy, gz), (bx, by, bz), shared, self._last_seconds,
                bool(flags & self.LAUNCH_COOPERATIVE), self._last_outcome)
        return struct.pack("<i", rc)

    def _forget_launch_shapes(self) -> None:
        """Something a cached launch depends on changed (a stream, module, attribute, capture)."""
        self._launch_cache.clear()

    def _run_kernel(self, c: Caller, stream: Any, ref: FunctionRef, grid: tuple[int, int, int],
                    block: tuple[int, int, int], shared: int, args: bytes, flags: int, graph: bool = False) -> int:
        """A launch on the simulated GPU: timed on the stream by the cost model and recorded."""
        function, rc = self._function_state(c, ref)
        if function is None:
            return rc
        if ref.module.home is not None and stream.gpu.index != ref.module.home:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        if self._held(stream) is not None or (self._releasing and c.session.computing):
            # behind a stream memory wait (cuda_memops), or released from one while another
            # kernel of the process computes: it runs, on the memory as it is then, in its turn
            self._hold_behind_kernel(c, stream)
            return self._hold_work(c, stream, lambda: self._run_kernel(c, stream, ref, grid, block, shared, args,
                                                                       flags, graph))
        green_sms = (c.context >> GREEN_SM_SHIFT) & 0xFFF if c.context & GREEN_CONTEXT else None
        seconds = launch_seconds(function, grid[0] * grid[1] * grid[2], block[0] * block[1] * block[2], shared,
                                 green_sms)
        self._last_seconds = seconds
        start = max(self.host_time.get(c.session.id, 0.0), stream.ready_at)
        stream.queue(start, seconds)
        session = c.session
        outcome = self._compute(c, stream.gpu, ref, grid, block, shared, args, bool(flags & self.LAUNCH_COOPERATIVE))
        self._last_outcome = outcome
        if self._releasing and session.computing:  # the stream's work kept after it waits for it
            self._hold_behind_kernel(c, stream)
        self.state.launches.add((session.pid, session.id, time.time(), stream.gpu.index, ref.name, grid, block,
                                 shared, stream.id, args, start, seconds, bool(flags & self.LAUNCH_COOPERATIVE),
                                 graph, outcome))
        return SUCCESS

    def _compute(self, c: Caller, gpu: Gpu, ref: FunctionRef, grid: tuple[int, int, int],
                 block: tuple[int, int, int], shared: int, args: bytes, cooperative: bool) -> ComputeOutcome:
        """Start computing a launch where its module has PTX for the device (the process's
        later frames wait for it); what became of it."""
        compute = self.compute
        if not compute.enabled:
            return ComputeOutcome("off")
        arch = gpu.profile.compute_capability[0] * 10 + gpu.profile.compute_capability[1]
        try:
            prepared = compute.prepare(ref.module.image, arch)
        except Exception as error:  # a bug of ours costs the launch its results, not the process its connection
            log.exception("reading the PTX of %s failed in vgpud", ref.name)
            prepared = f"internal error: {error}"
        if isinstance(prepared, str):
            compute.say_once(ref.name, prepared)
            return ComputeOutcome("not computed", prepared)
        if not compute.observable(prepared, ref.name):
            return ComputeOutcome("computed")  # nothing it does can be seen: done as soon as launched
        owner = ref.module.owner
        instance = self._instance(c, ref.module, gpu)
        limits = self.limits.get((c.session.id, gpu.index), {})
        outcome = ComputeOutcome()
        compute.start(c.session, prepared, ref.name, grid, block, shared, args, instance.globals,
                      write=lambda address, data: gpu.memory.write(owner, address, data),
                      read=lambda address, length: bytes(gpu.memory.read(c.session.id, address, length)),
                      stack_bytes=limits.get(C["CU_LIMIT_STACK_SIZE"], 1024),
                      sm_count=self._attributes[gpu.index].get("MULTIPROCESSOR_COUNT", 1), cooperative=cooperative,
                      outcome=outcome)
        return outcome
