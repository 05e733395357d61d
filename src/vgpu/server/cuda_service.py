"""The CUDA driver API, answered from the device model: versions and devices so far.

Conventions as in NvmlService: one method per driver function, named after it, taking
the decoded arguments and returning a CUresult.  Functions without a method answer
CUDA_ERROR_NOT_SUPPORTED in the shim.  CUdevice is the GPU's ordinal, as in the real
driver; UUID bytes and PCI location are the same as NVML's.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

from vgpu.api.manifest import load
from vgpu.device.cuda_attributes import attributes
from vgpu.device.gpu import Gpu, OutOfMemory
from vgpu.device.gpuset import parse_pci_bus_id
from vgpu.device.memory import Allocation, InvalidAddress, LegacyWindowFull, OutOfBacking
from vgpu.compute.executor import Executor
from vgpu.server.cuda_client_copies import ClientCopies
from vgpu.server.cuda_compute import KernelCompute
from vgpu.server.cuda_extras import ContextEvents, ManagedBatches
from vgpu.server.cuda_graphs import Graph, GraphExec, GraphNode, Graphs
from vgpu.server.cuda_hostmem import HostMemoryServing
from vgpu.server.cuda_ipc import InterprocessSharing, OpenedEvent
from vgpu.server.cuda_memops import StreamMemoryOperations
from vgpu.server.cuda_pools import LegacyNames, MemoryPools
from vgpu.server.cuda_sharing import ExternalSemaphore, SharedMemory
from vgpu.server.cuda_modules import GREEN_CONTEXT, FunctionRef, LoadedModule, ModuleServing
from vgpu.server.cuda_vmm import VirtualMemory
from vgpu.server.dispatch import Caller, implemented
from vgpu.server.state import DaemonState, Session
from vgpu.wire.codec import Buffer, ClientCopy

API = load("cuda")
C = API.constants
SUCCESS = C["CUDA_SUCCESS"]
INVALID_VALUE = C["CUDA_ERROR_INVALID_VALUE"]
INVALID_DEVICE = C["CUDA_ERROR_INVALID_DEVICE"]
#: the streams every context has: NULL, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD
DEFAULT_STREAMS = {0: "default", 1: "legacy", 2: "per-thread"}
#: ids of created streams and events start here (below are the default streams' constants)
STREAM_IDS_FROM = 4096
#: settable memory pool attributes and their values until set
POOL_DEFAULTS = {C["CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES"]: 1, C["CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC"]: 1,
                 C["CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES"]: 1, C["CU_MEMPOOL_ATTR_RELEASE_THRESHOLD"]: 0}
#: cuMemAllocPitch's row alignment
PITCH_ALIGNMENT = 512
#: cuCtxGetLimit's answers until set, as a real H200 (driver 580) answers them; the device
#: runtime's synchronisation depth is not supported there (CUDA_ERROR_UNSUPPORTED_LIMIT)
DEFAULT_LIMITS = {C["CU_LIMIT_STACK_SIZE"]: 1024, C["CU_LIMIT_PRINTF_FIFO_SIZE"]: 8650752,
                  C["CU_LIMIT_MALLOC_HEAP_SIZE"]: 8 << 20,
                  C["CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT"]: 2048, C["CU_LIMIT_MAX_L2_FETCH_GRANULARITY"]: 64,
                  C["CU_LIMIT_PERSISTING_L2_CACHE_SIZE"]: 0, C["CU_LIMIT_CIG_ENABLED"]: 0}
#: limits that can be read but not set
READ_ONLY_LIMITS = {C["CU_LIMIT_SHMEM_SIZE"], C["CU_LIMIT_CIG_ENABLED"]}
#: a copy's fixed cost in the model (driver and DMA set-up), seconds
COPY_LATENCY = 5e-6
#: the shim's context ids: a bit for primary or created contexts, the device ordinal in the low
#: 16 bits (native/cuda/cuda_shim.c)
PRIMARY_CONTEXT = 1 << 32
CREATED_CONTEXT = 1 << 33
#: attribute number -> its names without the CU_DEVICE_ATTRIBUTE_ prefix (old and new names share numbers)
ATTRIBUTES: dict[int, list[str]] = {}
for _name, _value in API.enum("CUdevice_attribute_enum").items():
    if _name != "CU_DEVICE_ATTRIBUTE_MAX":
        ATTRIBUTES.setdefault(_value, []).append(_name.removeprefix("CU_DEVICE_ATTRIBUTE_"))


def visible_devices(spec: str | None, uuids: list[str]) -> list[int]:
    """The GPUs a process sees through CUDA_VISIBLE_DEVICES, in its order: indices or (prefixes
    of) UUIDs, comma-separated; as with the real driver, the list ends at the first entry
    that names no GPU, names one twice or is ambiguous."""
    if spec is None:
        return list(range(len(uuids)))
    chosen: list[int] = []
    for entry in (item.strip() for item in spec.split(",")):
        if entry.lstrip("-").isdigit():
            index = int(entry)
            found = [index] if 0 <= index < len(uuids) else []
        else:
            prefix = entry if entry.startswith("GPU-") else f"GPU-{entry}"
            found = [i for i, uuid in enumerate(uuids) if entry and uuid.startswith(prefix)]
        if len(found) != 1 or found[0] in chosen:
            break
        chosen.append(found[0])
    return chosen


@dataclass
class Stream:
    """An ordered queue of work on one GPU, on the process's modelled timeline: work takes
    the time the cost model gives it, and the host's clock moves only when it waits."""

    id: int
    owner: int
    gpu: Gpu
    flags: int = 0
    priority: int = 0
    #: when the last queued work ends, in modelled seconds
    ready_at: float = 0.0
    #: the shim's id of the context it was created in (0 for a default stream: the caller's)
    context: int = 0
    #: cuStreamGetId's answer, unique in the process
    serial: int = 0
    #: stream attributes set (CUstreamAttrID -> the CUstreamAttrValue's bytes)
    attributes: dict[int, bytes] = field(default_factory=dict)

    def queue(self, now: float, seconds: float) -> float:
        """Queue work of a modelled duration, no earlier than the host's ``now``; when it ends."""
        self.ready_at = max(now, self.ready_at) + seconds
        self.gpu.run(self.owner, seconds)  # NVML's utilisation follows the work
        return self.ready_at


@dataclass
class Event:
    id: int
    owner: int
    flags: int
    recorded_at: float | None = None
    #: the stream capture it was last recorded in, if any
    capture: Any = None


@dataclass
class MemoryPool:
    """A device's default memory pool, per process: allocations are made and freed at once."""

    id: int
    owner: int
    gpu: Gpu
    #: settable attributes (CUmemPool_attribute -> value)
    settings: dict[int, int] = field(default_factory=dict)
    used_high: int = 0
    #: a pool of cuMemPoolCreate's (cuda_pools.py): its own live allocations (address -> size)
    #: and the access other devices have (GPU index -> CUmemAccess_flags)
    created: bool = False
    allocations: dict[int, int] = field(default_factory=dict)
    access: dict[int, int] = field(default_factory=dict)
    #: CUmemAllocationHandleType bits it was created with; the pool it was imported from (cuda_sharing.py)
    handle_types: int = 0
    imported_from: Any = None


class CudaApi:
    """What every CUDA service shares (the simulator's, the real GPU's): the codes the
    dispatcher answers with, the device facts the shim fetches in bulk at cuInit, a default
    memory pool's attributes as one process sees them (its own use, its settings), and the
    calls that are another call with a default argument."""

    api = API
    CONTEXT_PREFIX = True
    INVALID_HANDLE = C["CUDA_ERROR_INVALID_HANDLE"]
    INVALID_ARGUMENT = INVALID_VALUE
    NOT_SUPPORTED = C["CUDA_ERROR_NOT_SUPPORTED"]
    INTERNAL_ERROR = C["CUDA_ERROR_UNKNOWN"]

    def _kernel_ended(self, session: Session, job: object) -> None:
        """On the selector thread: the process goes on (its waiting requests run), and so does
        the stream work kept behind the kernel (cuda_memops)."""
        self.state.kernel_ended(session, job)
        self._release_ready()

    def device_count(self, session: Session) -> int:
        raise NotImplementedError

    def immutable_calls(self, session: Session) -> list[tuple[str, dict[str, int]]]:
        """The device facts a runtime asks for at start-up, for the shim's one bulk fetch."""
        calls: list[tuple[str, dict[str, int]]] = [("cuDeviceGetCount", {})]
        for ordinal in range(self.device_count(session)):
            calls += [("cuDeviceGet", {"ordinal": ordinal}), ("cuDeviceGetName", {"len": 256, "dev": ordinal}),
                      ("cuDeviceGetUuid", {"dev": ordinal}), ("cuDeviceGetUuid_v2", {"dev": ordinal}),
                      ("cuDeviceTotalMem_v2", {"dev": ordinal}),
                      ("cuDeviceComputeCapability", {"dev": ordinal})]
            calls += [("cuDeviceGetAttribute", {"attrib": attribute, "dev": ordinal}) for attribute in ATTRIBUTES]
        return calls

    def cuMemPoolGetAttribute(self, c: Caller, pool: MemoryPool, attr: int, value: Any) -> int:
        """Each attribute as a u64 (the shim writes the caller's int or cuuint64_t)."""
        used = sum(pool.allocations.values()) if pool.created else pool.gpu.held.get(c.session.id, 0)
        pool.used_high = max(pool.used_high, used)
        live = {C["CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT"]: used, C["CU_MEMPOOL_ATTR_USED_MEM_CURRENT"]: used,
                C["CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH"]: pool.used_high, C["CU_MEMPOOL_ATTR_USED_MEM_HIGH"]: pool.used_high}
        if attr in live:
            value.value = live[attr]
        elif attr in POOL_DEFAULTS:
            value.value = pool.settings.get(attr, POOL_DEFAULTS[attr])
        else:
            return INVALID_VALUE
        return SUCCESS

    def cuMemPoolSetAttribute(self, c: Caller, pool: MemoryPool, attr: int, value: Any) -> int:
        if attr in POOL_DEFAULTS:
            pool.settings[attr] = value.value
        elif attr in (C["CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH"], C["CU_MEMPOOL_ATTR_USED_MEM_HIGH"]) and value.value == 0:
            pool.used_high = 0  # the high-water marks can only be reset
        else:
            return INVALID_VALUE
        return SUCCESS

    def cuMemPoolTrimTo(self, c: Caller, pool: MemoryPool, minBytesToKeep: int) -> int:
        return SUCCESS  # freed memory is returned at once: there is nothing to trim

    def cuOccupancyMaxActiveBlocksPerMultiprocessor(self, c: Caller, numBlocks: Any, func: Any, blockSize: int,
                                                    dynamicSMemSize: int) -> int:
        return self.cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(c, numBlocks, func, blockSize,
                                                                         dynamicSMemSize, 0)


class CudaService(CudaApi, ModuleServing, VirtualMemory, Graphs, HostMemoryServing, InterprocessSharing,
                  StreamMemoryOperations, MemoryPools, LegacyNames, ContextEvents,
                  ManagedBatches, SharedMemory, ClientCopies):
    """The CUDA driver functions vgpud serves from the simulated GPUs."""

    def __init__(self, state: DaemonState) -> None:
        self.state = state
        self.implemented = implemented(self)
        self._attributes = [attributes(gpu.ident) for gpu in state.gpus]
        self.streams: dict[int, Stream] = {}
        self.events: dict[int, Event] = {}
        self.default_streams: dict[tuple[int, int], Stream] = {}
        #: each process's host clock on the modelled timeline (moves when the host waits)
        self.host_time: dict[int, float] = {}
        self.pools: dict[tuple[int, int], MemoryPool] = {}
        self.pool_ids: dict[int, MemoryPool] = {}
        self.peer_access: dict[int, set[tuple[int, int]]] = {}
        self.limits: dict[tuple[int, int], dict[int, int]] = {}
        #: cuCtxSetCacheConfig's preference per (process, context)
        self.cache_configs: dict[tuple[int, int], int] = {}
        self._ids = itertools.count(STREAM_IDS_FROM)
        self.executors: dict[int, Executor] = {}
        self._executors_lock = threading.Lock()
        self.compute = KernelCompute(state.compute, self._executor, lambda session, job: state.loop_calls.post(
            lambda: self._kernel_ended(session, job)))
        self._init_modules()
        self._init_vmm()
        self._init_graphs()
        self._init_ipc()
        self._init_memops()
        self._init_pools()
        self._init_sharing()
        self._init_client_copies()
        state.on_detach.append(self._forget)

    def _kernel_ended(self, session: Session, job: object) -> None:
        """On the selector thread: the process goes on (its waiting requests run), and so does
        the stream work kept behind the kernel (cuda_memops)."""
        self.state.kernel_ended(session, job)
        self._release_ready()

    def device_count(self, session: Session) -> int:
        return len(self._visible(Caller(session, 0)))

    def _executor(self, session: Session) -> Executor:
        """The process's executor: a worker that maps only this process's device memory
        (made on its first computed launch, ended with the process)."""
        with self._executors_lock:
            executor = self.executors.get(session.id)
            if executor is None:
                executor = self.executors[session.id] = Executor(
                    [*(gpu.memory for gpu in self.state.gpus), session.windows], session.id)
            return executor

    def _forget(self, session: Session) -> None:
        """A process ended: its streams and events go with it."""
        for table in (self.streams, self.events):
            for key in [k for k, v in table.items() if v.owner == session.id]:
                del table[key]
        for table in (self.default_streams, self.pools, self.limits, self.cache_configs):
            for key in [k for k in table if k[0] == session.id]:
                del table[key]
        for key in [k for k, v in self.pool_ids.items() if v.owner == session.id]:
            del self.pool_ids[key]
        self.host_time.pop(session.id, None)
        self.peer_access.pop(session.id, None)
        with self._executors_lock:
            executor = self.executors.pop(session.id, None)
        if executor is not None:
            executor.close()
        self._forget_modules(session)
        self._forget_vmm(session)
        self._forget_graphs(session)
        self._forget_ipc(session)
        self._forget_memops(session)
        self._forget_pools(session)
        self._forget_sharing(session)

    def _wait_until(self, c: Caller, moment: float) -> None:
        """The host waited for work that ends at ``moment``."""
        self.host_time[c.session.id] = max(self.host_time.get(c.session.id, 0.0), moment)

    def _session_streams(self, c: Caller) -> list[Stream]:
        mine = [s for s in self.streams.values() if s.owner == c.session.id]
        return mine + [s for (owner, _), s in self.default_streams.items() if owner == c.session.id]

    def resolve(self, handle_type: str, handle_id: int, caller: Caller) -> Any:
        if handle_type == "CUstream":
            if handle_id in DEFAULT_STREAMS:
                return self._default_stream(caller)
            found = self.streams.get(handle_id)
            return found if found is not None and found.owner == caller.session.id else None
        if handle_type == "CUevent":
            found = self.events.get(handle_id)
            return found if found is not None and found.owner == caller.session.id else None
        if handle_type == "CUmemoryPool":
            found = self.pool_ids.get(handle_id)
            return found if found is not None and found.owner == caller.session.id else None
        if handle_type in ("CUmodule", "CUlibrary"):
            return self._module_of(handle_id, caller, library=handle_type == "CUlibrary")
        if handle_type in ("CUfunction", "CUkernel"):
            return self._function_of(handle_id, caller)
        if handle_type in ("CUgraph", "CUgraphExec", "CUgraphNode"):
            table = {"CUgraph": self.graphs, "CUgraphExec": self.graph_execs, "CUgraphNode": self.graph_nodes}
            found = table[handle_type].get(handle_id)
            owner = getattr(found, "owner", None)
            return found if found is not None and owner in (None, caller.session.id) else None
        if handle_type == "CUexternalSemaphore":
            found = self.external_semaphores.get(handle_id)
            return found if found is not None and found.owner == caller.session.id else None
        if handle_type == "CUcontext" and (handle_id == 0 or handle_id & (PRIMARY_CONTEXT | CREATED_CONTEXT)):
            return handle_id  # a context of the shim's, or NULL for the current one
        return None

    def _default_stream(self, c: Caller) -> Stream | None:
        """The current context's default stream (NULL, legacy and per-thread alike)."""
        gpu, _ = self._context_gpu(c)
        if gpu is None:
            return None
        key = (c.session.id, gpu.index)
        if key not in self.default_streams:
            self.default_streams[key] = Stream(0, c.session.id, gpu, serial=next(self._ids))
        return self.default_streams[key]

    def handle_id(self, obj: Any) -> int:
        if isinstance(obj, int):
            return obj  # a context: the shim's own id
        if isinstance(obj, (Stream, Event, OpenedEvent, MemoryPool, LoadedModule, Graph, GraphExec, GraphNode)):
            return obj.id
        if isinstance(obj, FunctionRef):
            return obj.module.id << 16 | obj.index
        if isinstance(obj, ExternalSemaphore):
            return obj.id
        raise TypeError(f"no handle id for {obj!r}")

    @staticmethod
    def refusal(obj: Any) -> int | None:
        return None

    def _visible(self, c: Caller) -> list[int]:
        """The GPUs (indices into the daemon's) behind this process's CUDA ordinals: its
        tenant's, then as CUDA_VISIBLE_DEVICES picks among them."""
        s = c.session
        if s.cuda_visible is None:  # fixed for the session's life: worked out on its first call
            usable = [gpu.index for gpu in self.state.visible_gpus(s)]
            chosen = visible_devices(s.env.get("CUDA_VISIBLE_DEVICES"), [self.state.gpus[i].ident.uuid for i in usable])
            s.cuda_visible = [usable[i] for i in chosen]
        return s.cuda_visible

    def _gpu(self, s: Caller, dev: int) -> Gpu | None:
        """The GPU behind a CUDA ordinal of this process."""
        visible = self._visible(s)
        return self.state.gpus[visible[dev]] if 0 <= dev < len(visible) else None

    def _device_call(self, s: Caller, dev: int) -> tuple[Gpu | None, int]:
        """The GPU behind an ordinal, or the code a real driver answers for it."""
        gpu = self._gpu(s, dev)
        if gpu is None:
            return None, INVALID_DEVICE
        if gpu.lost:
            return None, C["CUDA_ERROR_DEVICE_UNAVAILABLE"]
        return gpu, SUCCESS

    # versions and devices -------------------------------------------------------------
    def cuDriverGetVersion(self, s: Caller, driverVersion: Any) -> int:
        driverVersion.value = self.state.gpuset.cuda_version
        return SUCCESS

    def cuDeviceGetCount(self, s: Caller, count: Any) -> int:
        count.value = len(self._visible(s))
        return SUCCESS

    def cuDeviceGet(self, s: Caller, device: Any, ordinal: int) -> int:
        if self._gpu(s, ordinal) is None:
            return INVALID_DEVICE
        device.value = ordinal
        return SUCCESS

    def cuDeviceGetName(self, s: Caller, name: Buffer, len: int, dev: int) -> int:
        gpu, rc = self._device_call(s, dev)
        if gpu is not None:
            name.value = gpu.profile.name.encode()  # the real driver truncates to fit
        return rc

    def cuDeviceGetUuid_v2(self, s: Caller, uuid: Any, dev: int) -> int:
        gpu, rc = self._device_call(s, dev)
        if gpu is not None:  # byte by byte: a char array field would stop at the first zero byte
            ctypes.memmove(ctypes.addressof(uuid) + type(uuid).bytes.offset, gpu.ident.uuid_bytes, 16)
        return rc

    cuDeviceGetUuid = cuDeviceGetUuid_v2

    def cuDeviceTotalMem_v2(self, s: Caller, bytes: Any, dev: int) -> int:
        gpu, rc = self._device_call(s, dev)
        if gpu is not None:
            bytes.value = self.state.memory_view(gpu, s.session, cuda=True)[0]
        return rc

    def cuDeviceComputeCapability(self, s: Caller, major: Any, minor: Any, dev: int) -> int:
        gpu, rc = self._device_call(s, dev)
        if gpu is not None:
            major.value, minor.value = gpu.profile.compute_capability
        return rc

    def cuDeviceGetAttribute(self, s: Caller, pi: Any, attrib: int, dev: int) -> int:
        gpu, rc = self._device_call(s, dev)
        if gpu is None:
            return rc
        if attrib not in ATTRIBUTES:
            return INVALID_VALUE
        values = self._attributes[gpu.index]
        pi.value = next((values[name] for name in ATTRIBUTES[attrib] if name in values), 0)
        return SUCCESS

    def cuDeviceGetPCIBusId(self, s: Caller, pciBusId: Buffer, len: int, dev: int) -> int:
        gpu, rc = self._device_call(s, dev)
        if gpu is not None:
            pciBusId.value = gpu.ident.pci_bus_id_legacy.encode()
        return rc

    def cuDeviceGetByPCIBusId(self, s: Caller, dev: Any, pciBusId: bytes | None) -> int:
        wanted = parse_pci_bus_id(pciBusId) if pciBusId is not None else None
        if wanted is None:
            return INVALID_VALUE
        for ordinal, index in enumerate(self._visible(s)):
            if self.state.gpus[index].ident.pci_location == wanted:
                dev.value = ordinal
                return SUCCESS
        return INVALID_DEVICE

    # contexts and memory ----------------------------------------------------------------
    def _context_gpu(self, c: Caller) -> tuple[Gpu | None, int]:
        """The GPU of the calling thread's current context (the shim's context ids carry the
        ordinal), or the code a real driver answers without one."""
        if not c.context & (PRIMARY_CONTEXT | CREATED_CONTEXT):
            return None, C["CUDA_ERROR_INVALID_CONTEXT"]
        gpu, rc = self._device_call(c, c.context & 0xFFFF)
        return gpu, rc if gpu is not None or rc != INVALID_DEVICE else C["CUDA_ERROR_INVALID_CONTEXT"]

    def cuCtxSynchronize(self, c: Caller) -> int:
        capture = self._session_capture(c)
        if capture is not None:
            return self._invalidate(capture)
        gpu, rc = self._context_gpu(c)
        held = self._held_for_sync(c)
        if held is not None:
            return held
        for stream in self._session_streams(c):
            if stream.gpu is gpu:
                self._wait_until(c, stream.ready_at)
        return rc

    def cuCtxSynchronize_v2(self, c: Caller, ctx: int) -> int:
        return self.cuCtxSynchronize(Caller(c.session, ctx) if ctx else c)

    def cuStreamSynchronize(self, c: Caller, hStream: Stream) -> int:
        if self.capturing(hStream) is not None:
            return self._invalidate(self.capturing(hStream))
        held = self._held_for_sync(c, stream=hStream)
        if held is not None:
            return held
        self._wait_until(c, hStream.ready_at)  # the work itself was done when it was queued
        return SUCCESS

    def cuStreamQuery(self, c: Caller, hStream: Stream) -> int:
        if self.capturing(hStream) is not None:
            return self._invalidate(self.capturing(hStream))
        held = self._held_for_sync(c, stream=hStream, query=True)
        return held if held is not None else SUCCESS


    def cuMemGetInfo_v2(self, c: Caller, free: Any, total: Any) -> int:
        gpu, rc = self._context_gpu(c)
        if gpu is not None:
            whole, used = self.state.memory_view(gpu, c.session, cuda=True)
            free.value, total.value = max(whole - used, 0), whole
        return rc

    def cuMemAlloc_v2(self, c: Caller, dptr: Any, bytesize: int) -> int:
        gpu, rc = self._context_gpu(c)
        if gpu is None:
            return rc
        return self._allocate_on(c, gpu, dptr, bytesize)

    def _allocate_on(self, c: Caller, gpu: Gpu, dptr: Any, bytesize: int, legacy: bool = False) -> int:
        """Device memory on ``gpu``; ``legacy``: below 4 GiB, for the v1 names' 32-bit pointers."""
        if bytesize == 0:
            return INVALID_VALUE
        footprint = gpu.memory.footprint(bytesize)
        try:
            gpu.hold(c.session.id, footprint, cuda=True)
        except OutOfMemory:
            return C["CUDA_ERROR_OUT_OF_MEMORY"]
        try:
            dptr.value = gpu.memory.allocate(c.session.id, bytesize, legacy=legacy).address
        except (LegacyWindowFull, OutOfBacking):
            gpu.release(c.session.id, footprint)
            return C["CUDA_ERROR_OUT_OF_MEMORY"]
        return SUCCESS

    def cuMemAllocPitch_v2(self, c: Caller, dptr: Any, pPitch: Any, WidthInBytes: int, Height: int,
                           ElementSizeBytes: int) -> int:
        if ElementSizeBytes not in (4, 8, 16) or not WidthInBytes or not Height:
            return INVALID_VALUE
        gpu, rc = self._context_gpu(c)
        if gpu is None:
            return rc
        pitch = -(-WidthInBytes // PITCH_ALIGNMENT) * PITCH_ALIGNMENT
        rc = self.cuMemAlloc_v2(c, dptr, pitch * Height)
        if rc == SUCCESS:
            pPitch.value = pitch
        return rc

    def cuMemAllocAsync(self, c: Caller, dptr: Any, bytesize: int, hStream: Stream) -> int:
        """Stream-ordered allocation: the memory exists at once, which honours any order."""
        rc = self._allocate_from_current_pool(c, dptr, bytesize)
        if rc == SUCCESS:
            hStream.queue(self.host_time.get(c.session.id, 0.0), COPY_LATENCY)
        return rc

    def cuMemFreeAsync(self, c: Caller, dptr: int, hStream: Stream) -> int:
        return self.cuMemFree_v2(c, dptr)


    def cuDeviceGetDefaultMemPool(self, c: Caller, pool_out: Any, dev: int) -> int:
        gpu, rc = self._device_call(c, dev)
        if gpu is not None:
            pool_out.value = self._pool(c, gpu)
        return rc

    def _pool(self, c: Caller, gpu: Gpu) -> MemoryPool:
        key = (c.session.id, gpu.index)
        if key not in self.pools:
            pool = MemoryPool(next(self._ids), c.session.id, gpu)
            self.pools[key] = self.pool_ids[pool.id] = pool
        return self.pools[key]

    def cuMemFree_v2(self, c: Caller, dptr: int) -> int:
        if dptr == 0:
            return SUCCESS  # as free(NULL); cuBLAS's runtime frees NULL while it starts
        graph_memory = self._free_graph_allocation(c, dptr)  # memory of a graph's allocation node (cuda_graphs)
        if graph_memory is not None:
            return graph_memory
        gpu = self._gpu_of_address(dptr)
        if gpu is None:
            managed = self._free_managed(c, dptr)
            return managed if managed is not None else INVALID_VALUE
        if self._free_imported_pointer(c, gpu, dptr):
            return SUCCESS
        try:
            allocation = gpu.memory.free(c.session.id, dptr)
        except InvalidAddress:
            return INVALID_VALUE
        gpu.release(c.session.id, gpu.memory.footprint(allocation.size))
        self._pool_freed(c, dptr)
        return SUCCESS

    def cuMemGetAddressRange_v2(self, c: Caller, pbase: Any, psize: Any, dptr: int) -> int:
        gpu, allocation = self._allocation_at(c, dptr)
        if allocation is None:
            return C["CUDA_ERROR_NOT_FOUND"]
        if pbase is not None:
            pbase.value = allocation.address
        if psize is not None:
            psize.value = allocation.size
        return SUCCESS

    # peers: every pair of simulated GPUs can reach each other (NVLink or PCIe)
    def cuDeviceCanAccessPeer(self, c: Caller, canAccessPeer: Any, dev: int, peerDev: int) -> int:
        first, rc = self._device_call(c, dev)
        second, peer_rc = self._device_call(c, peerDev)
        if first is None or second is None:
            return rc if first is None else peer_rc
        canAccessPeer.value = int(first is not second)
        return SUCCESS

    def cuDeviceGetP2PAttribute(self, c: Caller, value: Any, attrib: int, srcDevice: int, dstDevice: int) -> int:
        first, rc = self._device_call(c, srcDevice)
        second, peer_rc = self._device_call(c, dstDevice)
        if first is None or second is None or first is second:
            return INVALID_DEVICE if first is second else (rc if first is None else peer_rc)
        nvlink = first.profile.nvlinks and second.profile.nvlinks
        value.value = {C["CU_DEVICE_P2P_ATTRIBUTE_PERFORMANCE_RANK"]: 0 if nvlink else 1,
                       C["CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED"]: 1,
                       C["CU_DEVICE_P2P_ATTRIBUTE_NATIVE_ATOMIC_SUPPORTED"]: int(bool(nvlink)),
                       C["CU_DEVICE_P2P_ATTRIBUTE_CUDA_ARRAY_ACCESS_SUPPORTED"]: 1}.get(attrib, 0)
        return SUCCESS

    def cuCtxEnablePeerAccess(self, c: Caller, peerContext: int, Flags: int) -> int:
        peers = self.peer_access.setdefault(c.session.id, set())
        key = (c.context, peerContext)
        if Flags:
            return INVALID_VALUE
        if key in peers:
            return C["CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED"]
        peers.add(key)
        return SUCCESS

    def cuCtxDisablePeerAccess(self, c: Caller, peerContext: int) -> int:
        peers = self.peer_access.setdefault(c.session.id, set())
        if (c.context, peerContext) not in peers:
            return C["CUDA_ERROR_PEER_ACCESS_NOT_ENABLED"]
        peers.discard((c.context, peerContext))
        return SUCCESS

    def cuMemcpyPeerAsync(self, c: Caller, dstDevice: int, dstContext: int, srcDevice: int, srcContext: int,
                          ByteCount: int, hStream: Stream | None = None) -> int:
        source = self._gpu_of_address(srcDevice)
        if source is None or self._gpu_of_address(dstDevice) is None:
            return INVALID_VALUE
        if source.lost:
            return C["CUDA_ERROR_DEVICE_UNAVAILABLE"]
        return self._timed(c, hStream, self._pcie_seconds(source, ByteCount), lambda m: m.write(
            c.session.id, dstDevice, source.memory.read(c.session.id, srcDevice, ByteCount)), dstDevice)

    def cuMemcpyPeer(self, c: Caller, dstDevice: int, dstContext: int, srcDevice: int, srcContext: int,
                     ByteCount: int) -> int:
        return self.cuMemcpyPeerAsync(c, dstDevice, dstContext, srcDevice, srcContext, ByteCount)


    # context limits and settings ---------------------------------------------------------
    def cuCtxGetLimit(self, c: Caller, pvalue: Any, limit: int) -> int:
        gpu, rc = self._context_gpu(c)
        if gpu is None:
            return rc
        if limit == C["CU_LIMIT_SHMEM_SIZE"]:  # what a kernel may use: the per-block opt-in maximum
            pvalue.value = self._attributes[gpu.index].get("MAX_SHARED_MEMORY_PER_BLOCK_OPTIN", 49152)
            return SUCCESS
        if limit not in DEFAULT_LIMITS:
            return C["CUDA_ERROR_UNSUPPORTED_LIMIT"]
        pvalue.value = self.limits.get((c.session.id, gpu.index), {}).get(limit, DEFAULT_LIMITS[limit])
        return SUCCESS

    def cuCtxSetLimit(self, c: Caller, limit: int, value: int) -> int:
        gpu, rc = self._context_gpu(c)
        if gpu is None:
            return rc
        if limit not in DEFAULT_LIMITS or limit in READ_ONLY_LIMITS:
            return C["CUDA_ERROR_UNSUPPORTED_LIMIT"]
        self.limits.setdefault((c.session.id, gpu.index), {})[limit] = value
        return SUCCESS

    def cuCtxGetApiVersion(self, c: Caller, ctx: int, version: Any) -> int:
        gpu, rc = self._context_gpu(Caller(c.session, ctx) if ctx else c)
        if gpu is not None:
            version.value = 3020  # the context API version every current driver reports
        return rc

    def cuPointerGetAttribute(self, c: Caller, data: Any, attribute: int, ptr: int) -> int:
        """Facts about a device pointer, each as a u64 (the shim writes the caller's size)."""
        managed = self._managed_pointer_attribute(c, data, attribute, ptr)
        if managed is not None:
            return managed
        gpu, allocation = self._allocation_at(c, ptr)
        visible = self._visible(c)
        if allocation is None or gpu.index not in visible:
            return INVALID_VALUE
        ordinal = visible.index(gpu.index)
        a = {name.removeprefix("CU_POINTER_ATTRIBUTE_"): value
             for name, value in API.enum("CUpointer_attribute_enum").items()}
        answers = {
            a["CONTEXT"]: PRIMARY_CONTEXT | ordinal, a["MEMORY_TYPE"]: C["CU_MEMORYTYPE_DEVICE"],
            a["DEVICE_POINTER"]: ptr, a["SYNC_MEMOPS"]: int((c.session.id, gpu.index, allocation.address) in self.sync_memops), a["BUFFER_ID"]: allocation.address,
            a["IS_MANAGED"]: 0, a["DEVICE_ORDINAL"]: ordinal, a["IS_LEGACY_CUDA_IPC_CAPABLE"]: 1,
            a["RANGE_START_ADDR"]: allocation.address, a["RANGE_SIZE"]: allocation.size, a["MAPPED"]: 1,
            a["ALLOWED_HANDLE_TYPES"]: 0, a["IS_GPU_DIRECT_RDMA_CAPABLE"]: 0,
            a["ACCESS_FLAGS"]: C["CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READWRITE"], a["MEMPOOL_HANDLE"]: 0,
            a["MAPPING_SIZE"]: gpu.memory.footprint(allocation.size), a["MAPPING_BASE_ADDR"]: allocation.address,
            a["MEMORY_BLOCK_ID"]: allocation.address,
        }
        if attribute not in answers:
            return INVALID_VALUE  # HOST_POINTER of device memory, P2P tokens
        data.value = answers[attribute]
        return SUCCESS

    def _gpu_of_address(self, address: int) -> Gpu | None:
        return next((gpu for gpu in self.state.gpus if gpu.memory.owns(address)), None)

    def _allocation_at(self, c: Caller, address: int) -> tuple[Gpu | None, Allocation | None]:
        """The GPU holding an address and the caller's allocation around it (None outside one)."""
        gpu = self._gpu_of_address(address)
        if gpu is None:
            return self._managed_allocation(c, address)
        try:
            return gpu, gpu.memory.find(c.session.id, address)
        except InvalidAddress:
            return gpu, None

    def _access(self, c: Caller, action: Any, *addresses: int) -> int:
        """Run a memory access on the memory its addresses name (one GPU's, or the caller's
        page-locked and managed windows: cuda_hostmem); CUDA_ERROR_INVALID_VALUE for any
        address outside the caller's allocations."""
        gpu, memory = self._address_space(c, addresses)
        if memory is None:
            return INVALID_VALUE
        if gpu.lost:
            return C["CUDA_ERROR_DEVICE_UNAVAILABLE"]
        try:
            action(memory)
        except InvalidAddress:
            return INVALID_VALUE
        return SUCCESS

    # copies and memsets: done at once (contents are exact), timed on a stream by the model.
    # The synchronous forms run on the current context's default stream.
    def _timed(self, c: Caller, stream: Stream | None, seconds: float, action: Any, *addresses: int) -> int:
        """Do a copy or memset and queue its modelled time; without a stream (the synchronous
        forms) on the default stream, with the host waiting for it."""
        queue_on = stream if stream is not None else self._default_stream(c)
        if queue_on is None:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        if self.capturing(stream) is not None:  # done when the graph is launched
            return self._capture_node(stream, C["CU_GRAPH_NODE_TYPE_MEMCPY"], lambda caller, on: self._timed(
                caller, on, seconds, action, *addresses), ("memory", len(addresses)))
        if self._held(queue_on) is not None:  # behind a stream memory wait (cuda_memops)
            return self._hold_work(c, queue_on, lambda: self._timed(c, stream, seconds, action, *addresses),
                                   waits=stream is None)
        rc = self._access(c, action, *addresses)
        if rc == SUCCESS:
            end = queue_on.queue(self.host_time.get(c.session.id, 0.0), seconds)
            if stream is None:
                self._wait_until(c, end)
            self._release_ready(end)
        return rc

    @staticmethod
    def _pcie_seconds(gpu: Gpu | None, nbytes: int) -> float:
        """Host-device transfer time: about 3.94 GB/s per PCIe 4/5 lane-generation unit, 80 % used."""
        if gpu is None:
            return COPY_LATENCY
        p = gpu.profile
        bandwidth = 0.8 * p.pcie_width * 0.985e9 * 2 ** (p.pcie_generation - 3)
        return COPY_LATENCY + nbytes / bandwidth

    @staticmethod
    def _memory_seconds(gpu: Gpu | None, nbytes: int) -> float:
        """On-device traffic at the profile's memory bandwidth (bus width x double data rate)."""
        if gpu is None:
            return COPY_LATENCY
        p = gpu.profile
        return COPY_LATENCY + nbytes / (p.bus_width / 8 * p.max_mem_clock_mhz * 1e6 * 2)

    def cuMemcpyHtoDAsync_v2(self, c: Caller, dstDevice: int, srcHost: Any, ByteCount: int,
                             hStream: Stream | None = None) -> int:
        if srcHost is None:
            return INVALID_VALUE
        if isinstance(srcHost, ClientCopy):
            return self._client_copy(c, hStream, dstDevice, srcHost)
        if self.capturing(hStream) is not None and not isinstance(srcHost, memoryview):
            return self._invalidate(self.capturing(hStream))  # only page-locked memory can be captured
        if not isinstance(srcHost, memoryview) and self._held(hStream) is not None:
            srcHost = self._pageable_now(srcHost)  # kept behind a stream memory wait (cuda_memops)
        return self._timed(c, hStream, self._pcie_seconds(self._gpu_of_address(dstDevice), ByteCount),
                           lambda m: m.write(c.session.id, dstDevice, srcHost), dstDevice)

    def cuMemcpyDtoHAsync_v2(self, c: Caller, dstHost: Any, srcDevice: int, ByteCount: int,
                             hStream: Stream | None = None) -> int:
        if dstHost is None:
            return INVALID_VALUE
        if isinstance(dstHost, ClientCopy):
            return self._client_copy(c, hStream, srcDevice, dstHost)
        if self.capturing(hStream) is not None and not isinstance(dstHost, memoryview):
            return self._invalidate(self.capturing(hStream))  # only page-locked memory can be captured
        if not isinstance(dstHost, memoryview) and self._held(hStream) is not None:
            return self._refuse_held(self._held(hStream))  # the caller waits for its pageable buffer
        return self._timed(c, hStream, self._pcie_seconds(self._gpu_of_address(srcDevice), ByteCount),
                           lambda m: m.read(c.session.id, srcDevice, ByteCount, dstHost),
                           srcDevice)

    def cuMemcpyDtoDAsync_v2(self, c: Caller, dstDevice: int, srcDevice: int, ByteCount: int,
                             hStream: Stream | None = None) -> int:
        destination, source = self._gpu_of_address(dstDevice), self._gpu_of_address(srcDevice)
        if destination is not None and source is not None and destination is not source:  # unified addressing
            return self.cuMemcpyPeerAsync(c, dstDevice, 0, srcDevice, 0, ByteCount, hStream)
        return self._timed(c, hStream, self._memory_seconds(self._gpu_of_address(dstDevice), 2 * ByteCount),
                           lambda m: m.copy(c.session.id, dstDevice, srcDevice, ByteCount), dstDevice, srcDevice)

    def _memset(self, c: Caller, stream: Stream | None, dstDevice: int, pattern: bytes, N: int) -> int:
        if self.capturing(stream) is not None:  # a memset node, its parameters kept (cuda_graphs)
            return self._capture_memset(stream, dstDevice, pattern, N)
        seconds = self._memory_seconds(self._gpu_of_address(dstDevice), len(pattern) * N)
        return self._timed(c, stream, seconds, lambda m: m.fill(c.session.id, dstDevice, pattern, N), dstDevice)

    def cuMemsetD8Async(self, c: Caller, dstDevice: int, uc: int, N: int, hStream: Stream | None = None) -> int:
        return self._memset(c, hStream, dstDevice, uc.to_bytes(1, "little"), N)

    def cuMemsetD16Async(self, c: Caller, dstDevice: int, us: int, N: int, hStream: Stream | None = None) -> int:
        return self._memset(c, hStream, dstDevice, us.to_bytes(2, "little"), N)

    def cuMemsetD32Async(self, c: Caller, dstDevice: int, ui: int, N: int, hStream: Stream | None = None) -> int:
        return self._memset(c, hStream, dstDevice, ui.to_bytes(4, "little"), N)

    cuMemcpyHtoD_v2 = cuMemcpyHtoDAsync_v2
    cuMemcpyDtoH_v2 = cuMemcpyDtoHAsync_v2
    cuMemcpyDtoD_v2 = cuMemcpyDtoDAsync_v2
    cuMemsetD8_v2 = cuMemsetD8Async
    cuMemsetD16_v2 = cuMemsetD16Async
    cuMemsetD32_v2 = cuMemsetD32Async

    # streams and events ------------------------------------------------------------------
    def cuCtxGetStreamPriorityRange(self, c: Caller, leastPriority: Any, greatestPriority: Any) -> int:
        if leastPriority is not None:
            leastPriority.value = 0
        if greatestPriority is not None:
            greatestPriority.value = -5
        return SUCCESS

    def cuStreamCreateWithPriority(self, c: Caller, phStream: Any, flags: int, priority: int) -> int:
        gpu, rc = self._context_gpu(c)
        if gpu is None:
            return rc
        if flags & ~C["CU_STREAM_NON_BLOCKING"]:
            return INVALID_VALUE
        ident = next(self._ids)
        stream = Stream(ident, c.session.id, gpu, flags, max(-5, min(0, priority)), context=c.context, serial=ident)
        self.streams[stream.id] = stream
        phStream.value = stream
        return SUCCESS

    def cuStreamCreate(self, c: Caller, phStream: Any, Flags: int) -> int:
        return self.cuStreamCreateWithPriority(c, phStream, Flags, 0)

    def cuStreamDestroy_v2(self, c: Caller, hStream: Stream) -> int:
        self._forget_launch_shapes()
        if hStream.id == 0:
            return C["CUDA_ERROR_INVALID_HANDLE"]
        del self.streams[hStream.id]
        return SUCCESS

    def cuStreamGetPriority(self, c: Caller, hStream: Stream, priority: Any) -> int:
        priority.value = hStream.priority
        return SUCCESS

    def cuStreamGetFlags(self, c: Caller, hStream: Stream, flags: Any) -> int:
        flags.value = hStream.flags
        return SUCCESS

    def cuStreamWaitEvent(self, c: Caller, hStream: Stream, hEvent: Event, Flags: int) -> int:
        if hEvent.capture is not None and self.capturing(hStream) is None and hStream.id:
            self.captures[hStream.id] = hEvent.capture  # the stream joins the capture (fork)
            self._forget_launch_shapes()
        if self.capturing(hStream) is not None:
            return self._capture_node(hStream, C["CU_GRAPH_NODE_TYPE_WAIT_EVENT"], None, ("wait",))
        kept = self._wait_event_held(c, hStream, hEvent, lambda: self.cuStreamWaitEvent(c, hStream, hEvent, Flags))
        if kept is not None:
            return kept
        if hEvent.recorded_at is not None:  # later work on the stream starts after the event
            hStream.ready_at = max(hStream.ready_at, hEvent.recorded_at)
        return SUCCESS

    def cuEventCreate(self, c: Caller, phEvent: Any, Flags: int) -> int:
        known = C["CU_EVENT_BLOCKING_SYNC"] | C["CU_EVENT_DISABLE_TIMING"] | C["CU_EVENT_INTERPROCESS"]
        if Flags & ~known:
            return INVALID_VALUE
        event = Event(next(self._ids), c.session.id, Flags)
        self.events[event.id] = event
        phEvent.value = event
        return SUCCESS

    def cuEventDestroy_v2(self, c: Caller, hEvent: Event) -> int:
        del self.events[hEvent.id]
        return SUCCESS

    def cuEventRecord(self, c: Caller, hEvent: Event, hStream: Stream) -> int:
        capture = self.capturing(hStream)
        if capture is not None:
            hEvent.capture = capture
            return self._capture_node(hStream, C["CU_GRAPH_NODE_TYPE_EVENT_RECORD"],
                                      lambda caller, on: self.cuEventRecord(caller, hEvent, on), ("event",))
        kept = self._record_held(c, hStream, hEvent, lambda: self.cuEventRecord(c, hEvent, hStream))
        if kept is not None:
            return kept
        hEvent.capture = None
        hEvent.recorded_at = max(hStream.ready_at, self.host_time.get(c.session.id, 0.0))
        self._release_ready(hEvent.recorded_at)
        return SUCCESS

    def cuEventRecordWithFlags(self, c: Caller, hEvent: Event, hStream: Stream, flags: int) -> int:
        return self.cuEventRecord(c, hEvent, hStream)

    def cuEventQuery(self, c: Caller, hEvent: Event) -> int:
        held = self._held_for_sync(c, event=hEvent, query=True)
        return held if held is not None else SUCCESS  # the work an event follows is done when queued

    def cuEventSynchronize(self, c: Caller, hEvent: Event) -> int:
        held = self._held_for_sync(c, event=hEvent)
        if held is not None:
            return held
        if hEvent.recorded_at is not None:
            self._wait_until(c, hEvent.recorded_at)
        return SUCCESS

    def cuEventElapsedTime_v2(self, c: Caller, pMilliseconds: Any, hStart: Event, hEnd: Event) -> int:
        if (hStart.flags | hEnd.flags) & C["CU_EVENT_DISABLE_TIMING"]:
            return C["CUDA_ERROR_INVALID_HANDLE"]
        if hStart.recorded_at is None or hEnd.recorded_at is None:
            return C["CUDA_ERROR_INVALID_HANDLE"]
        pMilliseconds.value = (hEnd.recorded_at - hStart.recorded_at) * 1000
        return SUCCESS

    cuEventElapsedTime = cuEventElapsedTime_v2

    # what a stream belongs to, its attributes, and cache preferences ------------------------
    def _stream_context(self, c: Caller, stream: Stream) -> int:
        """The shim's id of a stream's context: a default stream is the caller's current one."""
        return stream.context or c.context

    def cuStreamGetCtx(self, c: Caller, hStream: Stream, pctx: Any) -> int:
        pctx.value = self._stream_context(c, hStream)
        return SUCCESS

    def cuStreamGetCtx_v2(self, c: Caller, hStream: Stream, pCtx: Any, pGreenCtx: Any) -> int:
        """An ordinary stream's context and no green context (NULL); a green context's stream:
        the device's primary context and the green context (whose handle id is its context's)."""
        context = self._stream_context(c, hStream)
        green = context & GREEN_CONTEXT
        pCtx.value = PRIMARY_CONTEXT | context & 0xFFFF if green else context
        if pGreenCtx is not None:
            pGreenCtx.value = context if green else None
        return SUCCESS

    def cuStreamGetDevice(self, c: Caller, hStream: Stream, device: Any) -> int:
        device.value = self._stream_context(c, hStream) & 0xFFFF  # context ids carry the ordinal
        return SUCCESS

    def cuStreamGetId(self, c: Caller, hStream: Stream, streamId: Any) -> int:
        streamId.value = hStream.serial
        return SUCCESS

    def _attribute_default(self, stream: Stream, attr: int) -> Any:
        """A stream attribute's value until set, or None for an attribute streams do not have."""
        value = API.ctype_named("CUstreamAttrValue")()
        if attr == C["CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY"]:
            value.syncPolicy = C["CU_SYNC_POLICY_AUTO"]
        elif attr == C["CU_LAUNCH_ATTRIBUTE_PRIORITY"]:
            value.priority = stream.priority
        elif attr == C["CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN_MAP"]:
            value.memSyncDomainMap.remote = 1 if self._attributes[stream.gpu.index].get("MEM_SYNC_DOMAIN_COUNT", 1) > 1 else 0
        elif attr not in (C["CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW"], C["CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN"]):
            return None
        return value

    def cuStreamGetAttribute(self, c: Caller, hStream: Stream, attr: int, value: Any) -> int:
        default = self._attribute_default(hStream, attr)
        if default is None:
            return INVALID_VALUE
        ctypes.memmove(ctypes.addressof(value), hStream.attributes.get(attr, bytes(default)), ctypes.sizeof(value))
        return SUCCESS

    def cuStreamSetAttribute(self, c: Caller, hStream: Stream, attr: int, param: Any) -> int:
        """Checked as a real driver checks them: an access policy window within the device's
        maximum, a hit ratio in [0, 1], a miss property other than persisting; a known
        synchronisation policy; priorities clamped to the device's range; domains it has."""
        if self._attribute_default(hStream, attr) is None:
            return INVALID_VALUE
        facts = self._attributes[hStream.gpu.index]
        if attr == C["CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW"]:
            window = param.accessPolicyWindow
            properties = (C["CU_ACCESS_PROPERTY_NORMAL"], C["CU_ACCESS_PROPERTY_STREAMING"], C["CU_ACCESS_PROPERTY_PERSISTING"])
            if (window.num_bytes > facts.get("MAX_ACCESS_POLICY_WINDOW_SIZE", 0) or not 0.0 <= window.hitRatio <= 1.0
                    or window.hitProp not in properties or window.missProp not in properties[:2]):
                return INVALID_VALUE
        elif attr == C["CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY"]:
            if not C["CU_SYNC_POLICY_AUTO"] <= param.syncPolicy <= C["CU_SYNC_POLICY_BLOCKING_SYNC"]:
                return INVALID_VALUE
        elif attr == C["CU_LAUNCH_ATTRIBUTE_PRIORITY"]:
            hStream.priority = param.priority = max(-5, min(0, param.priority))
        elif attr == C["CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN_MAP"]:
            domains = facts.get("MEM_SYNC_DOMAIN_COUNT", 1)
            if param.memSyncDomainMap.default_ >= domains or param.memSyncDomainMap.remote >= domains:
                return INVALID_VALUE
        elif not C["CU_LAUNCH_MEM_SYNC_DOMAIN_DEFAULT"] <= param.memSyncDomain <= C["CU_LAUNCH_MEM_SYNC_DOMAIN_REMOTE"]:
            return INVALID_VALUE
        hStream.attributes[attr] = bytes(param)
        return SUCCESS

    def cuStreamCopyAttributes(self, c: Caller, dstStream: Stream, srcStream: Stream) -> int:
        """The source's attributes, set or not, become the destination's."""
        dstStream.attributes = dict(srcStream.attributes)
        dstStream.priority = srcStream.priority
        return SUCCESS

    def cuCtxGetCacheConfig(self, c: Caller, pconfig: Any) -> int:
        gpu, rc = self._context_gpu(c)
        if gpu is not None:
            pconfig.value = self.cache_configs.get((c.session.id, c.context), C["CU_FUNC_CACHE_PREFER_NONE"])
        return rc

    def cuCtxSetCacheConfig(self, c: Caller, config: int) -> int:
        gpu, rc = self._context_gpu(c)
        if gpu is None:
            return rc
        if not C["CU_FUNC_CACHE_PREFER_NONE"] <= config <= C["CU_FUNC_CACHE_PREFER_EQUAL"]:
            return INVALID_VALUE
        self.cache_configs[(c.session.id, c.context)] = config
        return SUCCESS

    def cuCtxGetSharedMemConfig(self, c: Caller, pConfig: Any) -> int:
        """Every simulated GPU has fixed four-byte banks, which is what a real driver reports."""
        gpu, rc = self._context_gpu(c)
        if gpu is not None:
            pConfig.value = C["CU_SHARED_MEM_CONFIG_FOUR_BYTE_BANK_SIZE"]
        return rc

    def cuCtxSetSharedMemConfig(self, c: Caller, config: int) -> int:
        """Does nothing on fixed banks, as documented; an unknown configuration is refused."""
        gpu, rc = self._context_gpu(c)
        if gpu is None:
            return rc
        return SUCCESS if 0 <= config <= C["CU_SHARED_MEM_CONFIG_EIGHT_BYTE_BANK_SIZE"] else INVALID_VALUE
