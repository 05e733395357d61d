"""The CUDA driver API answered by a real GPU on this host (``vgpud --backend cuda``),
through cuda-python's driver bindings (``cuda.bindings.driver``).

Clients keep their shims: vgpud makes the calls on the real driver in its own process,
in the primary context of the device behind the client's context, and hands back real
device addresses, so kernels launched with the clients' packed parameters compute on the
GPU. Modules are loaded from the images clients send (their parameter layouts read with
vgpu.images, as the simulator does); streams, events, functions and modules are vgpud's
real objects behind ids. What a process held is freed when it ends.

Served here: devices, context synchronisation and limits, memory (pitched, stream-ordered
from the devices' default pools), copies and memsets, peer access and peer copies, streams,
events, stream capture, graphs made by capture and node by node (kernel, memset, empty
nodes, dependencies, update), virtual memory management, modules, libraries, kernels and
their attributes, occupancy, launches (cooperative ones too). The rest answers
CUDA_ERROR_NOT_SUPPORTED (the shim logs each one once; see docs/remote.md).

Memory is accounted to the process's session on vgpud's model of the GPU as well, so NVML
shows each process's use and a tenant's quota (a network client's token) is enforced.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import itertools
import struct
import time
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from cuda.bindings import driver as cu

from vgpu.api.manifest import load
from vgpu.device.gpu import OutOfMemory
from vgpu.device.kernels import FunctionState
from vgpu.device.launches import ComputeOutcome
from vgpu.images import ImageError, NoBinaryForGpu, read_image
from vgpu.server.cuda_modules import ModuleServing
from vgpu.server.cuda_pools import LegacyNames
from vgpu.server.cuda_service import DEFAULT_STREAMS, PRIMARY_CONTEXT, CudaApi, MemoryPool, visible_devices
from vgpu.server.dispatch import Caller, implemented
from vgpu.server.state import DaemonState, Session
from vgpu.server.windows import RemoteBuffer
from vgpu.wire import protocol

API = load("cuda")
C = API.constants
SUCCESS = C["CUDA_SUCCESS"]
INVALID_VALUE = C["CUDA_ERROR_INVALID_VALUE"]
LAUNCH = ModuleServing.LAUNCH
#: what became of a launch's results on this backend: the GPU ran it
ON_THE_GPU = ComputeOutcome("computed", "run by the GPU")
UPDATE_RESULT_INFO = API.ctype({"kind": "name", "name": "CUgraphExecUpdateResultInfo"})
#: the device attributes a kernel's launch limits depend on
LIMIT_ATTRIBUTES = [(name, getattr(cu.CUdevice_attribute, f"CU_DEVICE_ATTRIBUTE_{name}")) for name in (
    "MAX_THREADS_PER_BLOCK", "MAX_REGISTERS_PER_BLOCK", "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN")]
#: the limits the shim is told for a kernel known only from PTX: the driver's to enforce
UNCHECKED_LIMITS = (1024, 1 << 30)


def rc(result: Any) -> int:
    """The CUresult of a cuda-python call's answer (a tuple whose first item it is)."""
    return int(result[0] if isinstance(result, tuple) else result)


@functools.cache
def _driver() -> ctypes.CDLL:
    """The driver library cuda-python uses, for the calls it cannot make as the API does."""
    return ctypes.CDLL("libcuda.so.1")


def answered(result: Any, out: Any, index: int = 1) -> int:
    """A cuda-python call's CUresult; on success its ``index``-th item goes to ``out``."""
    if rc(result) == SUCCESS:
        out.value = result[index]
    return rc(result)


def answered_text(result: Any, out: Any, capacity: int) -> int:
    """answered() for a char* output of ``capacity`` bytes: the text up to its NUL, cut to
    leave room for one."""
    if rc(result) == SUCCESS:
        out.value = result[1].split(b"\0")[0][:max(capacity - 1, 0)]
    return rc(result)


def real_devices() -> list[tuple[bytes, tuple[int, int, int]]]:
    """(UUID bytes, (PCI domain, bus, device)) of each GPU the driver on this host sees, for
    NVML's identities."""
    if rc(cu.cuInit(0)) != SUCCESS:
        raise RuntimeError("the CUDA driver on this host does not initialise; is an NVIDIA GPU and its driver "
                           "installed?")
    found = []
    for ordinal in range(cu.cuDeviceGetCount()[1]):
        device = cu.cuDeviceGet(ordinal)[1]
        A = cu.CUdevice_attribute
        location = tuple(cu.cuDeviceGetAttribute(a, device)[1] for a in (
            A.CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, A.CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, A.CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID))
        found.append((bytes(cu.cuDeviceGetUuid(device)[1].bytes), location))
    return found


class Ranges:
    """Device address ranges a process may name: its allocations, reserved ranges and its
    modules' globals. vgpud's contexts are shared by its clients, so the driver itself would
    let one process's copy reach another's memory."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.sizes: dict[int, int] = {}

    def add(self, start: int, size: int) -> None:
        if start not in self.sizes:
            bisect.insort(self.starts, start)
        self.sizes[start] = size

    def remove(self, start: int) -> None:
        if self.sizes.pop(start, None) is not None:
            self.starts.remove(start)

    def covers(self, address: int, size: int = 1) -> bool:
        at = bisect.bisect_right(self.starts, address) - 1
        return at >= 0 and address + max(size, 1) <= self.starts[at] + self.sizes[self.starts[at]]


@dataclass
class Owned:
    """What one process made on the real GPU, to free when it ends."""

    allocations: dict[int, tuple[int, int]] = field(default_factory=dict)  # address -> (ordinal, bytes)
    physical: dict[int, tuple[int, int]] = field(default_factory=dict)     # VMM handle -> (ordinal, bytes)
    graphs: dict[int, Any] = field(default_factory=dict)        # id -> CUgraph
    execs: dict[int, Any] = field(default_factory=dict)         # id -> CUgraphExec
    streams: dict[int, Any] = field(default_factory=dict)       # id -> CUstream
    stream_contexts: dict[int, int] = field(default_factory=dict)  # id -> the shim's context id
    events: dict[int, Any] = field(default_factory=dict)        # id -> CUevent
    modules: dict[int, Any] = field(default_factory=dict)       # id -> (CUmodule or CUlibrary, library?)
    nodes: dict[int, Any] = field(default_factory=dict)         # id -> CUgraphNode
    node_ids: dict[int, int] = field(default_factory=dict)      # int(CUgraphNode) -> id
    pools: dict[int, MemoryPool] = field(default_factory=dict)  # id -> a device's default pool, as seen here
    peers: set = field(default_factory=set)                     # (context id, peer context id)
    ranges: Ranges = field(default_factory=Ranges)
    retained: dict[int, int] = field(default_factory=dict)      # VMM handle -> references retained


@dataclass(frozen=True)
class RealFunction:
    module: int
    index: int
    name: str
    handle: Any          # CUfunction
    kernel: Any = None   # CUkernel, for a library's


class RealCudaService(CudaApi, LegacyNames):
    """The CUDA driver functions vgpud serves from a real GPU."""

    def __init__(self, state: DaemonState) -> None:
        self.state = state
        check = rc(cu.cuInit(0))
        if check != SUCCESS:
            raise RuntimeError(f"the CUDA driver on this host answered cuInit with {check}; is an NVIDIA GPU and "
                               "its driver installed?")
        count = cu.cuDeviceGetCount()[1]
        self.devices = [cu.cuDeviceGet(i)[1] for i in range(count)]
        self.contexts = [cu.cuDevicePrimaryCtxRetain(device)[1] for device in self.devices]
        self.uuids = [f"GPU-{uuid.UUID(bytes=bytes(cu.cuDeviceGetUuid(d)[1].bytes))}" for d in self.devices]
        #: what a compiled kernel's launch limits follow from, per device (vgpu.device.kernels)
        self.limits = [{name: cu.cuDeviceGetAttribute(attribute, device)[1] for name, attribute in LIMIT_ATTRIBUTES}
                       for device in self.devices]
        self.owned: dict[int, Owned] = {}
        self.functions: dict[int, RealFunction] = {}
        self.layouts: dict[int, list[tuple[str, list[tuple[int, int]], int, int]]] = {}
        self._ids = itertools.count(4096)
        #: module id -> its kernels' names, sorted: a function's id is module id << 16 | the
        #: position of its name (the shim finds the parameter layout by that position)
        self.kernel_names: dict[int, list[str]] = {}
        self.private_ops = {protocol.OP_MODULE: self.load_module, protocol.OP_LAUNCH: self.launch}
        #: graph or executable graph id -> its kernels (name, grid, block, shared bytes, parameters,
        #: cooperative), recorded as launches each time it runs
        self._records: dict[int, list[tuple]] = {}
        #: session -> capture id -> the kernels launched into that capture so far
        self._captures: dict[int, dict[int | None, list[tuple]]] = {}
        self.implemented = implemented(self)
        state.on_detach.append(self._forget)

    # who and where ---------------------------------------------------------------------
    def _visible(self, s: Session) -> list[int]:
        return visible_devices(s.env.get("CUDA_VISIBLE_DEVICES"), self.uuids)

    def _ordinal(self, c: Caller, dev: int) -> int | None:
        """The real device behind a process's CUDA ordinal."""
        visible = self._visible(c.session)
        return visible[dev] if 0 <= dev < len(visible) else None

    def _enter(self, c: Caller) -> int | None:
        """Make the caller's device current in vgpud; its real ordinal, or None without a context."""
        if not c.context & PRIMARY_CONTEXT and not c.context & (1 << 33):
            return None
        ordinal = self._ordinal(c, c.context & 0xFFFF)
        if ordinal is not None:
            cu.cuCtxSetCurrent(self.contexts[ordinal])
        return ordinal

    def _mine(self, c: Caller) -> Owned:
        return self.owned.setdefault(c.session.id, Owned())

    def _forget(self, session: Session) -> None:
        """A process ended: free what it made on the GPU."""
        owned = self.owned.pop(session.id, None)
        if owned is None:
            return
        for address, (ordinal, _) in owned.allocations.items():
            cu.cuCtxSetCurrent(self.contexts[ordinal])
            cu.cuMemFree(address)
        for handle in owned.physical:
            cu.cuMemRelease(handle)
        for graph_exec in owned.execs.values():
            cu.cuGraphExecDestroy(graph_exec)
        for graph in owned.graphs.values():
            cu.cuGraphDestroy(graph)
        for key in [*owned.execs, *owned.graphs]:
            self._records.pop(key, None)
        self._captures.pop(session.id, None)
        for stream in owned.streams.values():
            cu.cuStreamDestroy(stream)
        for event in owned.events.values():
            cu.cuEventDestroy(event)
        for handle, library in owned.modules.values():
            (cu.cuLibraryUnload if library else cu.cuModuleUnload)(handle)
        for key in [k for k, f in self.functions.items() if f.module in owned.modules]:
            del self.functions[key]
        for module_id in owned.modules:
            self.kernel_names.pop(module_id, None)

    # the dispatcher's hooks ------------------------------------------------------------
    def resolve(self, handle_type: str, handle_id: int, caller: Caller) -> Any:
        owned = self._mine(caller)
        if handle_type == "CUstream":
            if handle_id in DEFAULT_STREAMS:
                return (handle_id, cu.CUstream(handle_id))
            found = owned.streams.get(handle_id)
            return (handle_id, found) if found is not None else None
        if handle_type == "CUevent":
            found = owned.events.get(handle_id)
            return (handle_id, found) if found is not None else None
        if handle_type in ("CUmodule", "CUlibrary"):
            return handle_id if handle_id in owned.modules else None
        if handle_type in ("CUfunction", "CUkernel"):
            found = self.functions.get(handle_id)
            if found is None and handle_id >> 16 in owned.modules:  # handed out by an enumeration
                found = self._enumerated(handle_id, caller)
            return found if found is not None and found.module in owned.modules else None
        if handle_type in ("CUgraph", "CUgraphExec"):
            found = (owned.graphs if handle_type == "CUgraph" else owned.execs).get(handle_id)
            return (handle_id, found) if found is not None else None
        if handle_type == "CUgraphNode":
            found = owned.nodes.get(handle_id)
            return (handle_id, found) if found is not None else None
        if handle_type == "CUmemoryPool":
            return owned.pools.get(handle_id)
        if handle_type == "CUcontext":
            return handle_id
        return None

    def _node(self, c: Caller, node: Any) -> tuple[int, Any]:
        """A real graph node as a handle the client holds (the same id each time)."""
        owned = self._mine(c)
        key = int(node)
        if key not in owned.node_ids:
            owned.node_ids[key] = next(self._ids)
            owned.nodes[owned.node_ids[key]] = node
        return owned.node_ids[key], node

    def handle_id(self, obj: Any) -> int:
        if isinstance(obj, tuple):
            return obj[0]
        if isinstance(obj, MemoryPool):
            return obj.id
        if isinstance(obj, RealFunction):
            return obj.module << 16 | obj.index
        if isinstance(obj, int):
            return obj
        raise TypeError(f"no handle id for {obj!r}")

    @staticmethod
    def refusal(obj: Any) -> int | None:
        return None

    def device_count(self, session: Session) -> int:
        return len(self._visible(session))

    # devices -----------------------------------------------------------------------------
    def cuDriverGetVersion(self, c: Caller, driverVersion: Any) -> int:
        result = cu.cuDriverGetVersion()
        return answered(result, driverVersion)

    def cuDeviceGetCount(self, c: Caller, count: Any) -> int:
        count.value = len(self._visible(c.session))
        return SUCCESS

    def cuDeviceGet(self, c: Caller, device: Any, ordinal: int) -> int:
        if self._ordinal(c, ordinal) is None:
            return C["CUDA_ERROR_INVALID_DEVICE"]
        device.value = ordinal
        return SUCCESS

    def _device(self, c: Caller, dev: int) -> Any:
        ordinal = self._ordinal(c, dev)
        return self.devices[ordinal] if ordinal is not None else None

    def cuDeviceGetName(self, c: Caller, name: Any, len: int, dev: int) -> int:
        device = self._device(c, dev)
        if device is None:
            return C["CUDA_ERROR_INVALID_DEVICE"]
        return answered_text(cu.cuDeviceGetName(len, device), name, len)

    def cuDeviceGetUuid_v2(self, c: Caller, uuid: Any, dev: int) -> int:
        device = self._device(c, dev)
        if device is None:
            return C["CUDA_ERROR_INVALID_DEVICE"]
        result = cu.cuDeviceGetUuid(device)
        ctypes.memmove(ctypes.addressof(uuid), bytes(result[1].bytes), 16)
        return rc(result)

    cuDeviceGetUuid = cuDeviceGetUuid_v2

    def cuDeviceTotalMem_v2(self, c: Caller, bytes: Any, dev: int) -> int:
        device = self._device(c, dev)
        if device is None:
            return C["CUDA_ERROR_INVALID_DEVICE"]
        result = cu.cuDeviceTotalMem(device)
        return answered(result, bytes)

    def cuDeviceComputeCapability(self, c: Caller, major: Any, minor: Any, dev: int) -> int:
        device = self._device(c, dev)
        if device is None:
            return C["CUDA_ERROR_INVALID_DEVICE"]
        A = cu.CUdevice_attribute
        major.value = cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)[1]
        minor.value = cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)[1]
        return SUCCESS

    def cuDeviceGetAttribute(self, c: Caller, pi: Any, attrib: int, dev: int) -> int:
        device = self._device(c, dev)
        if device is None:
            return C["CUDA_ERROR_INVALID_DEVICE"]
        try:
            result = cu.cuDeviceGetAttribute(cu.CUdevice_attribute(attrib), device)
        except ValueError:
            return INVALID_VALUE
        return answered(result, pi)

    def cuDeviceGetPCIBusId(self, c: Caller, pciBusId: Any, len: int, dev: int) -> int:
        device = self._device(c, dev)
        if device is None:
            return C["CUDA_ERROR_INVALID_DEVICE"]
        return answered_text(cu.cuDeviceGetPCIBusId(len, device), pciBusId, len)

    def cuDeviceGetByPCIBusId(self, c: Caller, dev: Any, pciBusId: bytes | None) -> int:
        if pciBusId is None:
            return INVALID_VALUE
        result = cu.cuDeviceGetByPCIBusId(pciBusId)
        if rc(result) != SUCCESS:
            return rc(result)
        visible = self._visible(c.session)
        if int(result[1]) not in visible:
            return C["CUDA_ERROR_INVALID_DEVICE"]
        dev.value = visible.index(int(result[1]))
        return SUCCESS

    # context ----------------------------------------------------------------------------------
    def cuCtxSynchronize(self, c: Caller) -> int:
        return SUCCESS if self._enter(c) is None else rc(cu.cuCtxSynchronize())

    def cuCtxSynchronize_v2(self, c: Caller, ctx: int) -> int:
        return self.cuCtxSynchronize(c)

    def cuCtxGetLimit(self, c: Caller, pvalue: Any, limit: int) -> int:
        self._enter(c)
        result = cu.cuCtxGetLimit(cu.CUlimit(limit))
        return answered(result, pvalue)

    def cuCtxSetLimit(self, c: Caller, limit: int, value: int) -> int:
        self._enter(c)
        return rc(cu.cuCtxSetLimit(cu.CUlimit(limit), value))

    def cuCtxGetStreamPriorityRange(self, c: Caller, leastPriority: Any, greatestPriority: Any) -> int:
        self._enter(c)
        result = cu.cuCtxGetStreamPriorityRange()
        if rc(result) == SUCCESS and leastPriority is not None:
            leastPriority.value = result[1]
        if rc(result) == SUCCESS and greatestPriority is not None:
            greatestPriority.value = result[2]
        return rc(result)

    # memory -----------------------------------------------------------------------------------
    def cuMemGetInfo_v2(self, c: Caller, free: Any, total: Any) -> int:
        ordinal = self._enter(c)
        if ordinal is None:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        result = cu.cuMemGetInfo()
        free.value, total.value = result[1], result[2]
        tenant = c.session.tenant
        if tenant is not None and tenant.memory is not None and ordinal < len(self.state.gpus):
            used = self.state.gpus[ordinal].tenant_used(tenant.name)  # the quota is the tenant's GPU
            total.value = min(tenant.memory, result[2])
            if rc(result) == SUCCESS:
                free.value = max(0, min(result[1], total.value - used))
        return rc(result)

    def _account(self, c: Caller, ordinal: int, nbytes: int) -> bool:
        """Hold ``nbytes`` for the session on vgpud's model of the GPU (NVML's figures, a
        tenant's quota); False when the quota refuses it."""
        if ordinal >= len(self.state.gpus):
            return True
        try:
            self.state.gpus[ordinal].hold(c.session.id, nbytes, cuda=True)
        except OutOfMemory:
            return False
        return True

    def _unaccount(self, session_id: int, ordinal: int, nbytes: int) -> None:
        if ordinal < len(self.state.gpus):
            self.state.gpus[ordinal].release(session_id, nbytes)

    def cuMemAlloc_v2(self, c: Caller, dptr: Any, bytesize: int) -> int:
        ordinal = self._enter(c)
        if ordinal is None:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        if not self._account(c, ordinal, bytesize):
            return C["CUDA_ERROR_OUT_OF_MEMORY"]
        result = cu.cuMemAlloc(bytesize)
        if rc(result) == SUCCESS:
            dptr.value = int(result[1])
            self._mine(c).allocations[dptr.value] = (ordinal, bytesize)
            self._mine(c).ranges.add(dptr.value, bytesize)
        else:
            self._unaccount(c.session.id, ordinal, bytesize)
        return rc(result)

    def cuMemFree_v2(self, c: Caller, dptr: int) -> int:
        if dptr == 0:
            return SUCCESS
        owned = self._mine(c)
        if dptr not in owned.allocations:
            return INVALID_VALUE
        ordinal, nbytes = owned.allocations.pop(dptr)
        owned.ranges.remove(dptr)
        cu.cuCtxSetCurrent(self.contexts[ordinal])
        self._unaccount(c.session.id, ordinal, nbytes)
        return rc(cu.cuMemFree(dptr))

    def _allocated(self, c: Caller, ordinal: int, address: int, nbytes: int) -> int:
        """Keep a new allocation for the process (freed when it ends), or free it again when
        the quota refuses it."""
        if not self._account(c, ordinal, nbytes):
            cu.cuMemFree(address)
            return C["CUDA_ERROR_OUT_OF_MEMORY"]
        self._mine(c).allocations[address] = (ordinal, nbytes)
        self._mine(c).ranges.add(address, nbytes)
        return SUCCESS

    def cuMemAllocPitch_v2(self, c: Caller, dptr: Any, pPitch: Any, WidthInBytes: int, Height: int,
                           ElementSizeBytes: int) -> int:
        ordinal = self._enter(c)
        if ordinal is None:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        result = cu.cuMemAllocPitch(WidthInBytes, Height, ElementSizeBytes)
        if rc(result) != SUCCESS:
            return rc(result)
        code = self._allocated(c, ordinal, int(result[1]), result[2] * Height)
        if code == SUCCESS:
            dptr.value, pPitch.value = int(result[1]), result[2]
        return code

    def cuMemAllocAsync(self, c: Caller, dptr: Any, bytesize: int, hStream: Any) -> int:
        """From the device's default pool, in stream order."""
        ordinal = self._enter(c)
        if ordinal is None:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        result = cu.cuMemAllocAsync(bytesize, hStream[1])
        if rc(result) != SUCCESS:
            return rc(result)
        code = self._allocated(c, ordinal, int(result[1]), bytesize)
        if code == SUCCESS:
            dptr.value = int(result[1])
        return code

    def cuMemFreeAsync(self, c: Caller, dptr: int, hStream: Any) -> int:
        owned = self._mine(c)
        if dptr not in owned.allocations:
            return INVALID_VALUE
        ordinal, nbytes = owned.allocations.pop(dptr)
        owned.ranges.remove(dptr)
        self._enter(c)
        self._unaccount(c.session.id, ordinal, nbytes)
        return rc(cu.cuMemFreeAsync(dptr, hStream[1]))

    def cuDeviceGetDefaultMemPool(self, c: Caller, pool_out: Any, dev: int) -> int:
        """The device's default pool, which stream-ordered allocations come from; its
        attributes are the process's own (CudaApi)."""
        ordinal = self._ordinal(c, dev)
        if ordinal is None:
            return C["CUDA_ERROR_INVALID_DEVICE"]
        owned = self._mine(c)
        pool = next((p for p in owned.pools.values() if p.gpu.index == ordinal), None)
        if pool is None:
            pool = MemoryPool(next(self._ids), c.session.id, self.state.gpus[min(ordinal, len(self.state.gpus) - 1)])
            owned.pools[pool.id] = pool
        pool_out.value = pool
        return SUCCESS

    cuDeviceGetMemPool = cuDeviceGetDefaultMemPool

    # peers: access is turned on in vgpud's contexts, which its clients share; each process
    # sees the pairs it enabled itself
    def _real_context(self, c: Caller, context_id: int) -> tuple[int | None, Any]:
        ordinal = self._ordinal(c, context_id & 0xFFFF) if context_id & (PRIMARY_CONTEXT | 1 << 33) else None
        return ordinal, self.contexts[ordinal] if ordinal is not None else None

    def cuDeviceCanAccessPeer(self, c: Caller, canAccessPeer: Any, dev: int, peerDev: int) -> int:
        device, peer = self._device(c, dev), self._device(c, peerDev)
        if device is None or peer is None:
            return C["CUDA_ERROR_INVALID_DEVICE"]
        result = cu.cuDeviceCanAccessPeer(device, peer)
        return answered(result, canAccessPeer)

    def cuDeviceGetP2PAttribute(self, c: Caller, value: Any, attrib: int, srcDevice: int, dstDevice: int) -> int:
        source, target = self._device(c, srcDevice), self._device(c, dstDevice)
        if source is None or target is None:
            return C["CUDA_ERROR_INVALID_DEVICE"]
        try:
            result = cu.cuDeviceGetP2PAttribute(cu.CUdevice_P2PAttribute(attrib), source, target)
        except ValueError:
            return INVALID_VALUE
        return answered(result, value)

    def cuCtxEnablePeerAccess(self, c: Caller, peerContext: int, Flags: int) -> int:
        ordinal = self._enter(c)
        peer_ordinal, peer = self._real_context(c, peerContext)
        if ordinal is None or peer is None:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        owned = self._mine(c)
        if (c.context, peerContext) in owned.peers:
            return C["CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED"]
        result = rc(cu.cuCtxEnablePeerAccess(peer, Flags))
        if result not in (SUCCESS, C["CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED"]):  # another process's doing
            return result
        owned.peers.add((c.context, peerContext))
        return SUCCESS

    def cuCtxDisablePeerAccess(self, c: Caller, peerContext: int) -> int:
        """The pair is the process's no more; the shared context keeps it for other processes."""
        owned = self._mine(c)
        if (c.context, peerContext) not in owned.peers:
            return C["CUDA_ERROR_PEER_ACCESS_NOT_ENABLED"]
        owned.peers.discard((c.context, peerContext))
        return SUCCESS

    def cuMemcpyPeerAsync(self, c: Caller, dstDevice: int, dstContext: int, srcDevice: int, srcContext: int,
                          ByteCount: int, hStream: Any = None) -> int:
        _, target = self._real_context(c, dstContext)
        _, source = self._real_context(c, srcContext)
        if target is None or source is None:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        ranges = self._mine(c).ranges
        if not ranges.covers(dstDevice, ByteCount) or not ranges.covers(srcDevice, ByteCount):
            return INVALID_VALUE
        self._enter(c)
        return rc(cu.cuMemcpyPeerAsync(dstDevice, target, srcDevice, source, ByteCount, self._stream(hStream)))

    def cuMemcpyPeer(self, c: Caller, dstDevice: int, dstContext: int, srcDevice: int, srcContext: int,
                     ByteCount: int) -> int:
        code = self.cuMemcpyPeerAsync(c, dstDevice, dstContext, srcDevice, srcContext, ByteCount)
        return code if code != SUCCESS else rc(cu.cuStreamSynchronize(cu.CUstream(0)))

    def cuCtxGetApiVersion(self, c: Caller, ctx: int, version: Any) -> int:
        _, context = self._real_context(c, ctx or c.context)
        if context is None:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        result = cu.cuCtxGetApiVersion(context)
        return answered(result, version)

    def cuMemGetAddressRange_v2(self, c: Caller, pbase: Any, psize: Any, dptr: int) -> int:
        self._enter(c)
        result = cu.cuMemGetAddressRange(dptr)
        if rc(result) == SUCCESS:
            pbase.value, psize.value = int(result[1]), result[2]
        return rc(result)

    def cuPointerGetAttribute(self, c: Caller, data: Any, attribute: int, ptr: int) -> int:
        """The real driver's answer about the process's own memory, with its context and
        device as the process numbers them."""
        if not self._mine(c).ranges.covers(ptr):
            return INVALID_VALUE
        self._enter(c)
        A = cu.CUpointer_attribute
        asked = A.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL if attribute == A.CU_POINTER_ATTRIBUTE_CONTEXT else attribute
        try:
            result = cu.cuPointerGetAttribute(A(asked), ptr)
        except ValueError:
            return INVALID_VALUE
        if rc(result) != SUCCESS:
            return rc(result)
        value = int(result[1])
        if asked == A.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
            visible = self._visible(c.session)
            if value not in visible:
                return INVALID_VALUE
            value = visible.index(value) | (PRIMARY_CONTEXT if attribute == A.CU_POINTER_ATTRIBUTE_CONTEXT else 0)
        data.value = value
        return SUCCESS

    # copies and memsets: data the client sent is copied synchronously on its stream (the
    # frame's bytes do not outlive the call); page-locked windows stay mapped, so their copies
    # stay asynchronous
    @staticmethod
    def _stream(hStream: Any) -> Any:
        return hStream[1] if hStream is not None else cu.CUstream(0)

    def cuMemcpyHtoDAsync_v2(self, c: Caller, dstDevice: int, srcHost: Any, ByteCount: int,
                             hStream: Any = None) -> int:
        if srcHost is None or not self._mine(c).ranges.covers(dstDevice, ByteCount):
            return INVALID_VALUE
        self._enter(c)
        stream = self._stream(hStream)
        if isinstance(srcHost, RemoteBuffer):
            staged = bytearray(ByteCount)
            srcHost.copy_to([memoryview(staged)])
            srcHost = staged
        result = rc(cu.cuMemcpyHtoDAsync(dstDevice, srcHost, ByteCount, stream))
        if result == SUCCESS and not isinstance(srcHost, memoryview):
            result = rc(cu.cuStreamSynchronize(stream))
        return result

    def cuMemcpyDtoHAsync_v2(self, c: Caller, dstHost: Any, srcDevice: int, ByteCount: int,
                             hStream: Any = None) -> int:
        if dstHost is None or not self._mine(c).ranges.covers(srcDevice, ByteCount):
            return INVALID_VALUE
        self._enter(c)
        stream = self._stream(hStream)
        target = bytearray(ByteCount) if isinstance(dstHost, RemoteBuffer) else dstHost
        result = rc(cu.cuMemcpyDtoHAsync(target, srcDevice, ByteCount, stream))
        if result == SUCCESS and not isinstance(dstHost, memoryview):
            result = rc(cu.cuStreamSynchronize(stream))
            if isinstance(dstHost, RemoteBuffer):
                dstHost.copy_from([memoryview(target)])
        return result

    def cuMemcpyDtoDAsync_v2(self, c: Caller, dstDevice: int, srcDevice: int, ByteCount: int,
                             hStream: Any = None) -> int:
        ranges = self._mine(c).ranges
        if not ranges.covers(dstDevice, ByteCount) or not ranges.covers(srcDevice, ByteCount):
            return INVALID_VALUE
        self._enter(c)
        return rc(cu.cuMemcpyDtoDAsync(dstDevice, srcDevice, ByteCount, self._stream(hStream)))

    cuMemcpyHtoD_v2 = cuMemcpyHtoDAsync_v2
    cuMemcpyDtoH_v2 = cuMemcpyDtoHAsync_v2
    cuMemcpyDtoD_v2 = cuMemcpyDtoDAsync_v2

    def cuMemsetD8Async(self, c: Caller, dstDevice: int, uc: int, N: int, hStream: Any = None) -> int:
        if not self._mine(c).ranges.covers(dstDevice, N * 1):
            return INVALID_VALUE
        self._enter(c)
        return rc(cu.cuMemsetD8Async(dstDevice, uc, N, self._stream(hStream)))

    def cuMemsetD16Async(self, c: Caller, dstDevice: int, us: int, N: int, hStream: Any = None) -> int:
        if not self._mine(c).ranges.covers(dstDevice, N * 2):
            return INVALID_VALUE
        self._enter(c)
        return rc(cu.cuMemsetD16Async(dstDevice, us, N, self._stream(hStream)))

    def cuMemsetD32Async(self, c: Caller, dstDevice: int, ui: int, N: int, hStream: Any = None) -> int:
        if not self._mine(c).ranges.covers(dstDevice, N * 4):
            return INVALID_VALUE
        self._enter(c)
        return rc(cu.cuMemsetD32Async(dstDevice, ui, N, self._stream(hStream)))

    cuMemsetD8_v2 = cuMemsetD8Async
    cuMemsetD16_v2 = cuMemsetD16Async
    cuMemsetD32_v2 = cuMemsetD32Async

    # streams and events -------------------------------------------------------------------------
    def cuStreamCreateWithPriority(self, c: Caller, phStream: Any, flags: int, priority: int) -> int:
        self._enter(c)
        result = cu.cuStreamCreateWithPriority(flags, priority)
        if rc(result) == SUCCESS:
            stream_id = next(self._ids)
            self._mine(c).streams[stream_id] = result[1]
            self._mine(c).stream_contexts[stream_id] = c.context
            if rc(result) == SUCCESS:
                phStream.value = (stream_id, result[1])
        return rc(result)

    def cuStreamCreate(self, c: Caller, phStream: Any, Flags: int) -> int:
        return self.cuStreamCreateWithPriority(c, phStream, Flags, 0)

    def cuStreamDestroy_v2(self, c: Caller, hStream: Any) -> int:
        if hStream[0] in DEFAULT_STREAMS:
            return self.INVALID_HANDLE
        del self._mine(c).streams[hStream[0]]
        self._mine(c).stream_contexts.pop(hStream[0], None)
        return rc(cu.cuStreamDestroy(hStream[1]))

    def cuStreamSynchronize(self, c: Caller, hStream: Any) -> int:
        self._enter(c)
        return rc(cu.cuStreamSynchronize(hStream[1]))

    def cuStreamQuery(self, c: Caller, hStream: Any) -> int:
        self._enter(c)
        return rc(cu.cuStreamQuery(hStream[1]))

    def cuStreamWaitEvent(self, c: Caller, hStream: Any, hEvent: Any, Flags: int) -> int:
        self._enter(c)
        return rc(cu.cuStreamWaitEvent(hStream[1], hEvent[1], Flags))

    def cuCtxRecordEvent(self, c: Caller, hCtx: int, hEvent: Any) -> int:
        _, real = self._real_context(c, hCtx or c.context)
        return C["CUDA_ERROR_INVALID_CONTEXT"] if real is None else rc(cu.cuCtxRecordEvent(real, hEvent[1]))

    def cuCtxWaitEvent(self, c: Caller, hCtx: int, hEvent: Any) -> int:
        _, real = self._real_context(c, hCtx or c.context)
        return C["CUDA_ERROR_INVALID_CONTEXT"] if real is None else rc(cu.cuCtxWaitEvent(real, hEvent[1]))

    def _stream_context(self, c: Caller, stream: Any) -> int:
        """The shim's id of a stream's context (a default stream's is the caller's), or 0."""
        return self._mine(c).stream_contexts.get(stream[0], c.context)

    def cuStreamGetCtx(self, c: Caller, hStream: Any, pctx: Any) -> int:
        pctx.value = self._stream_context(c, hStream)
        return SUCCESS if pctx.value else C["CUDA_ERROR_INVALID_CONTEXT"]

    def cuStreamGetCtx_v2(self, c: Caller, hStream: Any, pCtx: Any, pGreenCtx: Any) -> int:
        if pGreenCtx is not None:
            pGreenCtx.value = None  # an ordinary stream has no green context
        return self.cuStreamGetCtx(c, hStream, pCtx)

    def cuStreamGetDevice(self, c: Caller, hStream: Any, device: Any) -> int:
        context = self._stream_context(c, hStream)
        device.value = context & 0xFFFF
        return SUCCESS if context else C["CUDA_ERROR_INVALID_CONTEXT"]

    def cuStreamGetId(self, c: Caller, hStream: Any, streamId: Any) -> int:
        self._enter(c)
        return answered(cu.cuStreamGetId(hStream[1]), streamId)

    def cuStreamGetAttribute(self, c: Caller, hStream: Any, attr: int, value: Any) -> int:
        """The real driver's value, copied byte for byte into the caller's union."""
        self._enter(c)
        try:
            result = cu.cuStreamGetAttribute(hStream[1], cu.CUstreamAttrID(attr))
        except ValueError:
            return INVALID_VALUE  # not an attribute cuda.h names
        if rc(result) == SUCCESS:
            ctypes.memmove(ctypes.addressof(value), result[1].getPtr(), ctypes.sizeof(value))
        return rc(result)

    def cuStreamSetAttribute(self, c: Caller, hStream: Any, attr: int, param: Any) -> int:
        self._enter(c)
        wanted = cu.CUstreamAttrValue()
        ctypes.memmove(wanted.getPtr(), ctypes.addressof(param), ctypes.sizeof(param))
        try:
            return rc(cu.cuStreamSetAttribute(hStream[1], cu.CUstreamAttrID(attr), wanted))
        except ValueError:
            return INVALID_VALUE

    def cuStreamCopyAttributes(self, c: Caller, dstStream: Any, srcStream: Any) -> int:
        self._enter(c)
        return rc(cu.cuStreamCopyAttributes(dstStream[1], srcStream[1]))

    def cuCtxGetCacheConfig(self, c: Caller, pconfig: Any) -> int:
        if self._enter(c) is None:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        result = cu.cuCtxGetCacheConfig()
        if rc(result) == SUCCESS:
            pconfig.value = int(result[1])
        return rc(result)

    def cuCtxSetCacheConfig(self, c: Caller, config: int) -> int:
        if self._enter(c) is None:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        try:
            return rc(cu.cuCtxSetCacheConfig(cu.CUfunc_cache(config)))
        except ValueError:
            return INVALID_VALUE

    def cuCtxGetSharedMemConfig(self, c: Caller, pConfig: Any) -> int:
        if self._enter(c) is None:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        result = cu.cuCtxGetSharedMemConfig()
        if rc(result) == SUCCESS:
            pConfig.value = int(result[1])
        return rc(result)

    def cuCtxSetSharedMemConfig(self, c: Caller, config: int) -> int:
        if self._enter(c) is None:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        try:
            return rc(cu.cuCtxSetSharedMemConfig(cu.CUsharedconfig(config)))
        except ValueError:
            return INVALID_VALUE

    def cuStreamGetPriority(self, c: Caller, hStream: Any, priority: Any) -> int:
        result = cu.cuStreamGetPriority(hStream[1])
        return answered(result, priority)

    def cuStreamGetFlags(self, c: Caller, hStream: Any, flags: Any) -> int:
        result = cu.cuStreamGetFlags(hStream[1])
        return answered(result, flags)

    def cuStreamIsCapturing(self, c: Caller, hStream: Any, captureStatus: Any) -> int:
        self._enter(c)
        result = cu.cuStreamIsCapturing(hStream[1])
        if rc(result) == SUCCESS:
            captureStatus.value = int(result[1])
        return rc(result)

    def cuStreamGetCaptureInfo(self, c: Caller, hStream: Any, captureStatus_out: Any, id_out: Any) -> int:
        self._enter(c)
        result = cu.cuStreamGetCaptureInfo(hStream[1])
        if rc(result) == SUCCESS:
            captureStatus_out.value = int(result[1])
            if id_out is not None:
                id_out.value = int(result[2])
        return rc(result)

    def cuEventCreate(self, c: Caller, phEvent: Any, Flags: int) -> int:
        self._enter(c)
        result = cu.cuEventCreate(Flags)
        if rc(result) == SUCCESS:
            event_id = next(self._ids)
            self._mine(c).events[event_id] = result[1]
            if rc(result) == SUCCESS:
                phEvent.value = (event_id, result[1])
        return rc(result)

    def cuEventDestroy_v2(self, c: Caller, hEvent: Any) -> int:
        del self._mine(c).events[hEvent[0]]
        return rc(cu.cuEventDestroy(hEvent[1]))

    def cuEventRecord(self, c: Caller, hEvent: Any, hStream: Any) -> int:
        self._enter(c)
        return rc(cu.cuEventRecord(hEvent[1], hStream[1]))

    def cuEventRecordWithFlags(self, c: Caller, hEvent: Any, hStream: Any, flags: int) -> int:
        self._enter(c)
        return rc(cu.cuEventRecordWithFlags(hEvent[1], hStream[1], flags))

    def cuEventQuery(self, c: Caller, hEvent: Any) -> int:
        return rc(cu.cuEventQuery(hEvent[1]))

    def cuEventSynchronize(self, c: Caller, hEvent: Any) -> int:
        return rc(cu.cuEventSynchronize(hEvent[1]))

    def cuEventElapsedTime_v2(self, c: Caller, pMilliseconds: Any, hStart: Any, hEnd: Any) -> int:
        result = cu.cuEventElapsedTime(hStart[1], hEnd[1])
        return answered(result, pMilliseconds)

    cuEventElapsedTime = cuEventElapsedTime_v2

    # modules, libraries and kernels ------------------------------------------------------------
    def load_module(self, session: Session, payload: bytes) -> bytes:
        """OP_MODULE, answered as the simulator answers it (vgpu.server.cuda_modules), with the
        image loaded on the real driver."""
        if len(payload) < 12:
            return struct.pack("<iQI", INVALID_VALUE, 0, 0)
        context, flags = struct.unpack_from("<QI", payload)
        c = Caller(session, context)
        library = bool(flags & 1)
        ordinal = self._enter(c)
        if ordinal is None and not library:
            return struct.pack("<iQI", C["CUDA_ERROR_INVALID_CONTEXT"], 0, 0)
        data = bytes(payload[12:])
        try:
            image = read_image(data)
        except ImageError:
            return struct.pack("<iQI", C["CUDA_ERROR_INVALID_IMAGE"], 0, 0)
        image_buffer = ctypes.create_string_buffer(data + b"\0", len(data) + 1)
        if library:
            result = cu.cuLibraryLoadData(image_buffer, None, None, 0, None, None, 0)
        else:
            result = cu.cuModuleLoadData(image_buffer)
        if rc(result) != SUCCESS:  # with the reason vgpu's reader finds, if it finds one
            return struct.pack("<iQI", rc(result), 0, 0) + self._refusal(image, ordinal)
        module_id = next(self._ids)
        self._mine(c).modules[module_id] = (result[1], library)
        names = sorted({name for code in image.codes for name in code.kernels})
        self.kernel_names[module_id] = names
        out = [struct.pack("<iQI", SUCCESS, module_id, len(names))]
        arch = None
        if ordinal is not None:
            A = cu.CUdevice_attribute
            device = self.devices[ordinal]
            arch = cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)[1] * 10 + \
                cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)[1]
        try:
            chosen = image.module_for(arch) if arch is not None else None
        except NoBinaryForGpu:
            chosen = None
        for name in names:
            kernel = (chosen.kernels.get(name) if chosen else None) or next(
                code.kernels[name] for code in image.codes if name in code.kernels)
            # a compiled kernel's limits are the simulator's (which match a real H200's answers),
            # so the shim refuses a bad launch at once, as the driver does; a PTX kernel's are
            # the driver's to enforce (its registers are known once compiled)
            if ordinal is not None and chosen is not None and kernel.compiled:
                function = FunctionState(kernel, self.limits[ordinal])
                max_threads, max_dynamic_shared = function.max_threads_per_block, function.max_dynamic_shared
            else:
                max_threads, max_dynamic_shared = UNCHECKED_LIMITS
            encoded = name.encode()
            out.append(struct.pack("<H", len(encoded)) + encoded)
            out.append(struct.pack("<III3II", max_threads, kernel.max_threads, max_dynamic_shared,
                                   *(kernel.required_block or (0, 0, 0)), len(kernel.params)))
            out.extend(struct.pack("<II", p.offset, p.size) for p in kernel.params)
        return b"".join(out)

    def _function(self, module_id: int, library: bool, handle: Any, name: bytes | None, out: Any,
                  c: Caller) -> int:
        if name is None:
            return INVALID_VALUE
        if library:
            result = cu.cuLibraryGetKernel(handle, name)
            if rc(result) != SUCCESS:
                return rc(result)
            kernel = result[1]
            function = cu.cuKernelGetFunction(kernel)
            if rc(function) != SUCCESS:
                return rc(function)
            found = RealFunction(module_id, self._index(module_id, name.decode()), name.decode(), function[1], kernel)
        else:
            result = cu.cuModuleGetFunction(handle, name)
            if rc(result) != SUCCESS:
                return rc(result)
            found = RealFunction(module_id, self._index(module_id, name.decode()), name.decode(), result[1])
        self.functions[found.module << 16 | found.index] = found
        out.value = found
        return SUCCESS

    def _refusal(self, image: Any, ordinal: int | None) -> bytes:
        """Why an image does not load on a device, as the simulator says it (b"" if it would)."""
        if ordinal is None:
            return b""
        A = cu.CUdevice_attribute
        device = self.devices[ordinal]
        arch = cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)[1] * 10 + \
            cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)[1]
        try:
            image.module_for(arch)
        except ImageError as error:
            return str(error).encode()
        return b""

    def _enumerated(self, handle_id: int, caller: Caller) -> RealFunction | None:
        """A function the shim handed out by its index (cuModuleEnumerateFunctions,
        cuLibraryEnumerateKernels), found on the real driver by its name."""
        module_id, index = handle_id >> 16, handle_id & 0xFFFF
        names = self.kernel_names.get(module_id, [])
        if index >= len(names):
            return None
        handle, library = self._mine(caller).modules[module_id]
        holder = SimpleNamespace(value=None)
        self._function(module_id, library, handle, names[index].encode(), holder, caller)
        return holder.value

    def cuModuleGetFunctionCount(self, c: Caller, count: Any, mod: int) -> int:
        handle, library = self._mine(c).modules[mod]
        result = (cu.cuLibraryGetKernelCount if library else cu.cuModuleGetFunctionCount)(handle)
        if rc(result) == SUCCESS:
            count.value = result[1]
        return rc(result)

    cuLibraryGetKernelCount = cuModuleGetFunctionCount

    def _index(self, module_id: int, name: str) -> int:
        names = self.kernel_names.get(module_id, [])
        return names.index(name) if name in names else len(names)

    def cuModuleGetFunction(self, c: Caller, hfunc: Any, hmod: int, name: bytes | None) -> int:
        self._enter(c)
        handle, library = self._mine(c).modules[hmod]
        return self._function(hmod, library, handle, name, hfunc, c)

    def cuLibraryGetKernel(self, c: Caller, pKernel: Any, library: int, name: bytes | None) -> int:
        self._enter(c)
        handle, is_library = self._mine(c).modules[library]
        return self._function(library, is_library, handle, name, pKernel, c)

    def cuKernelGetFunction(self, c: Caller, pFunc: Any, kernel: RealFunction) -> int:
        pFunc.value = kernel
        return SUCCESS

    def cuModuleUnload(self, c: Caller, hmod: int) -> int:
        handle, library = self._mine(c).modules.pop(hmod)
        self.kernel_names.pop(hmod, None)
        for key in [k for k, f in self.functions.items() if f.module == hmod]:
            del self.functions[key]
        return rc((cu.cuLibraryUnload if library else cu.cuModuleUnload)(handle))

    cuLibraryUnload = cuModuleUnload

    def _global(self, c: Caller, module: int, dptr: Any, size: Any, name: bytes | None) -> int:
        if name is None:
            return INVALID_VALUE
        self._enter(c)
        handle, library = self._mine(c).modules[module]
        result = (cu.cuLibraryGetGlobal if library else cu.cuModuleGetGlobal)(handle, name)
        if rc(result) == SUCCESS:
            self._mine(c).ranges.add(int(result[1]), result[2])
            if dptr is not None:
                dptr.value = int(result[1])
            if size is not None:
                size.value = result[2]
        return rc(result)

    def cuModuleGetGlobal_v2(self, c: Caller, dptr: Any, bytes: Any, hmod: int, name: bytes | None) -> int:
        return self._global(c, hmod, dptr, bytes, name)

    def cuLibraryGetGlobal(self, c: Caller, dptr: Any, bytes: Any, library: int, name: bytes | None) -> int:
        return self._global(c, library, dptr, bytes, name)

    def cuFuncGetAttribute(self, c: Caller, pi: Any, attrib: int, hfunc: RealFunction) -> int:
        self._enter(c)
        result = cu.cuFuncGetAttribute(cu.CUfunction_attribute(attrib), hfunc.handle)
        return answered(result, pi)

    def cuKernelGetAttribute(self, c: Caller, pi: Any, attrib: int, kernel: RealFunction, dev: int) -> int:
        return self.cuFuncGetAttribute(c, pi, attrib, kernel)

    def cuFuncSetAttribute(self, c: Caller, hfunc: RealFunction, attrib: int, value: int) -> int:
        self._enter(c)
        return rc(cu.cuFuncSetAttribute(hfunc.handle, cu.CUfunction_attribute(attrib), value))

    def cuKernelSetAttribute(self, c: Caller, attrib: int, val: int, kernel: RealFunction, dev: int) -> int:
        return self.cuFuncSetAttribute(c, kernel, attrib, val)

    def cuFuncSetCacheConfig(self, c: Caller, hfunc: RealFunction, config: int) -> int:
        try:
            return rc(cu.cuFuncSetCacheConfig(hfunc.handle, cu.CUfunc_cache(config)))
        except ValueError:
            return INVALID_VALUE  # not a CUfunc_cache

    def cuKernelSetCacheConfig(self, c: Caller, kernel: RealFunction, config: int, dev: int) -> int:
        return self.cuFuncSetCacheConfig(c, kernel, config)

    def cuFuncSetSharedMemConfig(self, c: Caller, hfunc: RealFunction, config: int) -> int:
        try:
            return rc(cu.cuFuncSetSharedMemConfig(hfunc.handle, cu.CUsharedconfig(config)))
        except ValueError:
            return INVALID_VALUE  # not a CUsharedconfig

    def cuFuncGetParamInfo(self, c: Caller, func: RealFunction, paramIndex: int, paramOffset: Any,
                           paramSize: Any) -> int:
        result = cu.cuFuncGetParamInfo(func.handle, paramIndex)
        if rc(result) == SUCCESS:
            if paramOffset is not None:
                paramOffset.value = result[1]
            if paramSize is not None:
                paramSize.value = result[2]
        return rc(result)

    def cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(self, c: Caller, numBlocks: Any, func: RealFunction,
                                                             blockSize: int, dynamicSMemSize: int, flags: int) -> int:
        self._enter(c)
        result = cu.cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(func.handle, blockSize, dynamicSMemSize,
                                                                         flags)
        return answered(result, numBlocks)

    def cuOccupancyAvailableDynamicSMemPerBlock(self, c: Caller, dynamicSmemSize: Any, func: RealFunction,
                                                numBlocks: int, blockSize: int) -> int:
        self._enter(c)
        result = cu.cuOccupancyAvailableDynamicSMemPerBlock(func.handle, numBlocks, blockSize)
        return answered(result, dynamicSmemSize)

    # virtual memory management ---------------------------------------------------------------
    def _prop(self, c: Caller, prop: Any) -> tuple[Any, int] | None:
        """cuda-python's CUmemAllocationProp for a client's, and the real device ordinal."""
        if prop is None or prop.location.type != C["CU_MEM_LOCATION_TYPE_DEVICE"]:
            return None
        ordinal = self._ordinal(c, prop.location.id)
        if ordinal is None:
            return None
        real = cu.CUmemAllocationProp()
        real.type = cu.CUmemAllocationType(prop.type)
        real.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        real.location.id = ordinal
        return real, ordinal

    def cuMemGetAllocationGranularity(self, c: Caller, granularity: Any, prop: Any, option: int) -> int:
        converted = self._prop(c, prop)
        if converted is None:
            return INVALID_VALUE
        result = cu.cuMemGetAllocationGranularity(converted[0], cu.CUmemAllocationGranularity_flags(option))
        return answered(result, granularity)

    def cuMemAddressReserve(self, c: Caller, ptr: Any, size: int, alignment: int, addr: int, flags: int) -> int:
        self._enter(c)
        result = cu.cuMemAddressReserve(size, alignment, addr, flags)
        if rc(result) == SUCCESS:
            ptr.value = int(result[1])
            self._mine(c).ranges.add(ptr.value, size)
        return rc(result)

    def cuMemAddressFree(self, c: Caller, ptr: int, size: int) -> int:
        owned = self._mine(c)
        if not owned.ranges.covers(ptr, size):
            return INVALID_VALUE
        owned.ranges.remove(ptr)
        return rc(cu.cuMemAddressFree(ptr, size))

    def cuPointerSetAttribute(self, c: Caller, value: Any, attribute: int, ptr: int) -> int:
        """SYNC_MEMOPS on the process's own memory (the shim has checked the attribute)."""
        if value is None or not self._mine(c).ranges.covers(ptr):
            return INVALID_VALUE
        self._enter(c)
        # cuda-python takes the attribute's value itself (a bool for SYNC_MEMOPS), not its address
        return rc(cu.cuPointerSetAttribute(bool(value.value), cu.CUpointer_attribute(attribute), ptr))

    def cuMemCreate(self, c: Caller, handle: Any, size: int, prop: Any, flags: int) -> int:
        converted = self._prop(c, prop)
        if converted is None:
            return INVALID_VALUE
        real, ordinal = converted
        if not self._account(c, ordinal, size):
            return C["CUDA_ERROR_OUT_OF_MEMORY"]
        result = cu.cuMemCreate(size, real, flags)
        if rc(result) == SUCCESS:
            handle.value = int(result[1])
            self._mine(c).physical[handle.value] = (ordinal, size)
        else:
            self._unaccount(c.session.id, ordinal, size)
        return rc(result)

    def cuMemRelease(self, c: Caller, handle: int) -> int:
        """One reference fewer (cuMemCreate's or a cuMemRetainAllocationHandle's); the last
        one returns the memory to the quota."""
        owned = self._mine(c)
        if handle not in owned.physical:
            return INVALID_VALUE
        if owned.retained.get(handle, 0):
            owned.retained[handle] -= 1
        else:
            ordinal, size = owned.physical.pop(handle)
            self._unaccount(c.session.id, ordinal, size)
        return rc(cu.cuMemRelease(handle))

    def cuMemGetAllocationPropertiesFromHandle(self, c: Caller, prop: Any, handle: int) -> int:
        if handle not in self._mine(c).physical:
            return INVALID_VALUE
        result = cu.cuMemGetAllocationPropertiesFromHandle(handle)
        if rc(result) != SUCCESS:
            return rc(result)
        visible = self._visible(c.session)
        prop.type = int(result[1].type)
        prop.location.type = int(result[1].location.type)
        prop.location.id = visible.index(result[1].location.id) if result[1].location.id in visible else -1
        return SUCCESS

    def cuMemRetainAllocationHandle(self, c: Caller, handle: Any, addr: int) -> int:
        owned = self._mine(c)
        if not owned.ranges.covers(addr):
            return INVALID_VALUE
        result = cu.cuMemRetainAllocationHandle(addr)
        if rc(result) != SUCCESS:
            return rc(result)
        if int(result[1]) not in owned.physical:  # mapped there by another process
            cu.cuMemRelease(result[1])
            return INVALID_VALUE
        owned.retained[int(result[1])] = owned.retained.get(int(result[1]), 0) + 1
        handle.value = int(result[1])
        return SUCCESS

    def cuMemMap(self, c: Caller, ptr: int, size: int, offset: int, handle: int, flags: int) -> int:
        if handle not in self._mine(c).physical:
            return INVALID_VALUE
        return rc(cu.cuMemMap(ptr, size, offset, handle, flags))

    def cuMemUnmap(self, c: Caller, ptr: int, size: int) -> int:
        return rc(cu.cuMemUnmap(ptr, size))

    def cuMemSetAccess(self, c: Caller, ptr: int, size: int, desc: Any, count: int) -> int:
        descs = []
        for entry in desc or []:
            ordinal = self._ordinal(c, entry.location.id)
            if ordinal is None:
                return INVALID_VALUE
            real = cu.CUmemAccessDesc()
            real.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
            real.location.id = ordinal
            real.flags = cu.CUmemAccess_flags(entry.flags)
            descs.append(real)
        return rc(cu.cuMemSetAccess(ptr, size, descs, len(descs)))

    def cuMemGetAccess(self, c: Caller, flags: Any, location: Any, ptr: int) -> int:
        ordinal = self._ordinal(c, location.id) if location is not None else None
        if ordinal is None:
            return INVALID_VALUE
        real = cu.CUmemLocation()
        real.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        real.id = ordinal
        result = cu.cuMemGetAccess(real, ptr)
        return answered(result, flags)

    # stream capture and graphs made by capture ---------------------------------------------------
    def cuStreamBeginCapture_v2(self, c: Caller, hStream: Any, mode: int) -> int:
        """Captured in relaxed mode: vgpud's one thread serves every client, so a global (or
        thread-local) capture would refuse other clients' calls, and this client's own
        cuThreadExchangeStreamCaptureMode stays in its library."""
        self._enter(c)
        if mode not in (C["CU_STREAM_CAPTURE_MODE_GLOBAL"], C["CU_STREAM_CAPTURE_MODE_THREAD_LOCAL"],
                        C["CU_STREAM_CAPTURE_MODE_RELAXED"]):
            return INVALID_VALUE
        code = rc(cu.cuStreamBeginCapture(hStream[1], cu.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_RELAXED))
        if code == SUCCESS:
            self._captures.setdefault(c.session.id, {})[self._capture_id(hStream)] = []
        return code

    @staticmethod
    def _capture_id(hStream: Any) -> int | None:
        """The id of the capture a stream takes part in; None when it captures nothing."""
        result = cu.cuStreamGetCaptureInfo(hStream[1])
        active = rc(result) == SUCCESS and result[1] == cu.CUstreamCaptureStatus.CU_STREAM_CAPTURE_STATUS_ACTIVE
        return int(result[2]) if active else None

    def cuStreamEndCapture(self, c: Caller, hStream: Any, phGraph: Any) -> int:
        self._enter(c)
        launches = self._captures.get(c.session.id, {}).pop(self._capture_id(hStream), [])
        result = cu.cuStreamEndCapture(hStream[1])
        if rc(result) == SUCCESS:
            graph_id = next(self._ids)
            self._mine(c).graphs[graph_id] = result[1]
            self._records[graph_id] = launches
            phGraph.value = (graph_id, result[1])
        return rc(result)

    def _instantiated(self, c: Caller, result: Any, out: Any, graph_id: int) -> int:
        if rc(result) == SUCCESS:
            exec_id = next(self._ids)
            self._mine(c).execs[exec_id] = result[1]
            self._records[exec_id] = list(self._records.get(graph_id, []))
            out.value = (exec_id, result[1])
        return rc(result)

    def cuGraphInstantiateWithFlags(self, c: Caller, phGraphExec: Any, hGraph: Any, flags: int) -> int:
        self._enter(c)
        return self._instantiated(c, cu.cuGraphInstantiate(hGraph[1], flags), phGraphExec, hGraph[0])

    def cuGraphLaunch(self, c: Caller, hGraphExec: Any, hStream: Any) -> int:
        """Run on the GPU; its kernels are recorded as graph launches (`vgpu launches`)."""
        ordinal = self._enter(c)
        code = rc(cu.cuGraphLaunch(hGraphExec[1], hStream[1]))
        if code == SUCCESS:
            now, session = time.time(), c.session
            for name, grid, block, shared, args, cooperative in self._records.get(hGraphExec[0], []):
                self.state.launches.add((session.pid, session.id, now, ordinal or 0, name, grid, block, shared,
                                         hStream[0], args, 0.0, 0.0, cooperative, True, ON_THE_GPU))
        return code

    def cuGraphUpload(self, c: Caller, hGraphExec: Any, hStream: Any) -> int:
        self._enter(c)
        return rc(cu.cuGraphUpload(hGraphExec[1], hStream[1]))

    def cuGraphExecDestroy(self, c: Caller, hGraphExec: Any) -> int:
        del self._mine(c).execs[hGraphExec[0]]
        self._records.pop(hGraphExec[0], None)
        return rc(cu.cuGraphExecDestroy(hGraphExec[1]))

    def cuGraphDestroy(self, c: Caller, hGraph: Any) -> int:
        del self._mine(c).graphs[hGraph[0]]
        self._records.pop(hGraph[0], None)
        return rc(cu.cuGraphDestroy(hGraph[1]))

    def cuGraphGetNodes(self, c: Caller, hGraph: Any, nodes: Any, numNodes: Any) -> int:
        """Without ``nodes`` the count; with it, up to numNodes nodes and how many were given."""
        result = cu.cuGraphGetNodes(hGraph[1], nodes.capacity if nodes is not None else 0)
        if rc(result) != SUCCESS:
            return rc(result)
        if nodes is not None:
            nodes.value = [self._node(c, node) for node in result[1][:nodes.capacity]]
            numNodes.value = len(nodes.value)
        else:
            numNodes.value = result[2]
        return SUCCESS

    # graphs built node by node ----------------------------------------------------------------
    def _graph_made(self, c: Caller, result: Any, out: Any) -> int:
        if rc(result) == SUCCESS:
            graph_id = next(self._ids)
            self._mine(c).graphs[graph_id] = result[1]
            if rc(result) == SUCCESS:
                out.value = (graph_id, result[1])
        return rc(result)

    def cuGraphCreate(self, c: Caller, phGraph: Any, flags: int) -> int:
        return self._graph_made(c, cu.cuGraphCreate(flags), phGraph)

    def _node_made(self, c: Caller, result: Any, out: Any) -> int:
        if rc(result) == SUCCESS:
            if rc(result) == SUCCESS:
                out.value = self._node(c, result[1])
        return rc(result)

    def cuGraphAddEmptyNode(self, c: Caller, phGraphNode: Any, hGraph: Any, dependencies: Any,
                            numDependencies: int) -> int:
        nodes = [node for _, node in dependencies or []]
        return self._node_made(c, cu.cuGraphAddEmptyNode(hGraph[1], nodes, len(nodes)), phGraphNode)

    def cuGraphAddMemsetNode(self, c: Caller, phGraphNode: Any, hGraph: Any, dependencies: Any,
                             numDependencies: int, memsetParams: Any, ctx: int) -> int:
        if memsetParams is None:
            return INVALID_VALUE
        _, context = self._real_context(c, ctx or c.context)
        if context is None:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        params = cu.CUDA_MEMSET_NODE_PARAMS()
        params.dst, params.pitch, params.value = memsetParams.dst, memsetParams.pitch, memsetParams.value
        params.elementSize, params.width, params.height = (memsetParams.elementSize, memsetParams.width,
                                                           memsetParams.height)
        nodes = [node for _, node in dependencies or []]
        return self._node_made(c, cu.cuGraphAddMemsetNode(hGraph[1], nodes, len(nodes), params, context),
                               phGraphNode)

    def cuGraphAddDependencies_v2(self, c: Caller, hGraph: Any, from_: Any, to: Any, edgeData: Any,
                                  numDependencies: int) -> int:
        if edgeData is not None:
            return self.NOT_SUPPORTED  # edge data (programmatic dependencies): not on this backend
        sources, targets = [node for _, node in from_ or []], [node for _, node in to or []]
        if len(sources) != len(targets):
            return INVALID_VALUE
        return rc(cu.cuGraphAddDependencies(hGraph[1], sources, targets, None, len(sources)))

    def cuGraphNodeGetType(self, c: Caller, hNode: Any, type: Any) -> int:
        result = cu.cuGraphNodeGetType(hNode[1])
        if rc(result) == SUCCESS:
            type.value = int(result[1])
        return rc(result)

    def cuGraphInstantiateWithParams(self, c: Caller, phGraphExec: Any, hGraph: Any, instantiateParams: Any) -> int:
        self._enter(c)
        params = cu.CUDA_GRAPH_INSTANTIATE_PARAMS()
        params.flags = instantiateParams.flags if instantiateParams is not None else 0
        result = cu.cuGraphInstantiateWithParams(hGraph[1], params)
        if instantiateParams is not None:
            instantiateParams.result_out = int(params.result_out)
        if rc(result) == SUCCESS:
            exec_id = next(self._ids)
            self._mine(c).execs[exec_id] = result[1]
            if rc(result) == SUCCESS:
                phGraphExec.value = (exec_id, result[1])
        return rc(result)

    def cuGraphExecUpdate_v2(self, c: Caller, hGraphExec: Any, hGraph: Any, resultInfo: Any) -> int:
        """Called through ctypes: cuda-python drops the result information when the update
        fails, which is when it says why."""
        self._enter(c)
        info = resultInfo if resultInfo is not None else UPDATE_RESULT_INFO()
        code = _driver().cuGraphExecUpdate_v2(ctypes.c_void_p(int(hGraphExec[1])), ctypes.c_void_p(int(hGraph[1])),
                                             ctypes.byref(info))
        info.errorNode = self._node(c, cu.CUgraphNode(info.errorNode))[0] if info.errorNode else 0
        info.errorFromNode = self._node(c, cu.CUgraphNode(info.errorFromNode))[0] if info.errorFromNode else 0
        if code == SUCCESS:
            self._records[hGraphExec[0]] = list(self._records.get(hGraph[0], []))
        return code

    # graph structure, clones, ids and event, child graph and memset nodes (cuda_graphs has the
    # simulator's); edge data other than the default is not served here ------------------------------
    def _nodes_out(self, c: Caller, found: Any, count: int, out: Any, number: Any) -> None:
        """Hand out real nodes as the client's handles: up to the capacity, NULL past the end."""
        if out is None:
            number.value = count
            return
        given = [self._node(c, node) for node in list(found)[:min(count, out.capacity)]]
        out.value = given + [None] * (out.capacity - len(given))
        number.value = len(given)

    def cuGraphGetEdges_v2(self, c: Caller, hGraph: Any, from_: Any, to: Any, edgeData: Any, numEdges: Any) -> int:
        if (from_ is None) != (to is None):
            return INVALID_VALUE
        result = cu.cuGraphGetEdges(hGraph[1], numEdges.value if from_ is not None else 0)
        if rc(result) == SUCCESS:
            count = result[4]
            self._nodes_out(c, result[1], count, from_, numEdges)
            if to is not None:
                self._nodes_out(c, result[2], count, to, numEdges)
        return rc(result)

    def cuGraphGetEdges(self, c: Caller, hGraph: Any, from_: Any, to: Any, numEdges: Any) -> int:
        return self.cuGraphGetEdges_v2(c, hGraph, from_, to, None, numEdges)

    def cuGraphGetRootNodes(self, c: Caller, hGraph: Any, rootNodes: Any, numRootNodes: Any) -> int:
        result = cu.cuGraphGetRootNodes(hGraph[1], numRootNodes.value if rootNodes is not None else 0)
        if rc(result) == SUCCESS:
            self._nodes_out(c, result[1], result[2], rootNodes, numRootNodes)
        return rc(result)

    def cuGraphNodeGetDependencies_v2(self, c: Caller, hNode: Any, dependencies: Any, edgeData: Any,
                                      numDependencies: Any) -> int:
        result = cu.cuGraphNodeGetDependencies(hNode[1], numDependencies.value if dependencies is not None else 0)
        if rc(result) == SUCCESS:
            self._nodes_out(c, result[1], result[3], dependencies, numDependencies)
        return rc(result)

    def cuGraphNodeGetDependencies(self, c: Caller, hNode: Any, dependencies: Any, numDependencies: Any) -> int:
        return self.cuGraphNodeGetDependencies_v2(c, hNode, dependencies, None, numDependencies)

    def cuGraphNodeGetDependentNodes_v2(self, c: Caller, hNode: Any, dependentNodes: Any, edgeData: Any,
                                        numDependentNodes: Any) -> int:
        result = cu.cuGraphNodeGetDependentNodes(hNode[1], numDependentNodes.value if dependentNodes is not None else 0)
        if rc(result) == SUCCESS:
            self._nodes_out(c, result[1], result[3], dependentNodes, numDependentNodes)
        return rc(result)

    def cuGraphNodeGetDependentNodes(self, c: Caller, hNode: Any, dependentNodes: Any, numDependentNodes: Any) -> int:
        return self.cuGraphNodeGetDependentNodes_v2(c, hNode, dependentNodes, None, numDependentNodes)

    def cuGraphAddDependencies(self, c: Caller, hGraph: Any, from_: Any, to: Any, numDependencies: int) -> int:
        return self.cuGraphAddDependencies_v2(c, hGraph, from_, to, None, numDependencies)

    def cuGraphRemoveDependencies_v2(self, c: Caller, hGraph: Any, from_: Any, to: Any, edgeData: Any,
                                     numDependencies: int) -> int:
        if edgeData is not None:
            return self.NOT_SUPPORTED
        sources, targets = [node for _, node in from_ or []], [node for _, node in to or []]
        return rc(cu.cuGraphRemoveDependencies(hGraph[1], sources, targets, None, len(sources)))

    def cuGraphRemoveDependencies(self, c: Caller, hGraph: Any, from_: Any, to: Any, numDependencies: int) -> int:
        return self.cuGraphRemoveDependencies_v2(c, hGraph, from_, to, None, numDependencies)

    def cuGraphDestroyNode(self, c: Caller, hNode: Any) -> int:
        code = rc(cu.cuGraphDestroyNode(hNode[1]))
        if code == SUCCESS:
            owned = self._mine(c)
            owned.nodes.pop(hNode[0], None)
            owned.node_ids.pop(int(hNode[1]), None)
        return code

    def cuGraphClone(self, c: Caller, phGraphClone: Any, originalGraph: Any) -> int:
        code = self._graph_made(c, cu.cuGraphClone(originalGraph[1]), phGraphClone)
        if code == SUCCESS:
            self._records[phGraphClone.value[0]] = list(self._records.get(originalGraph[0], []))
        return code

    def cuGraphNodeFindInClone(self, c: Caller, phNode: Any, hOriginalNode: Any, hClonedGraph: Any) -> int:
        return self._node_made(c, cu.cuGraphNodeFindInClone(hOriginalNode[1], hClonedGraph[1]), phNode)

    def _graph_handle(self, c: Caller, graph: Any) -> tuple[int, Any]:
        """A real graph as the client's handle (the same id each time; a child graph gets one)."""
        owned = self._mine(c)
        found = next((key for key, known in owned.graphs.items() if int(known) == int(graph)), None)
        if found is None:
            found = next(self._ids)
            owned.graphs[found] = graph
        return found, graph

    def cuGraphNodeGetContainingGraph(self, c: Caller, hNode: Any, phGraph: Any) -> int:
        result = cu.cuGraphNodeGetContainingGraph(hNode[1])
        if rc(result) == SUCCESS:
            phGraph.value = self._graph_handle(c, result[1])
        return rc(result)

    def cuGraphChildGraphNodeGetGraph(self, c: Caller, hNode: Any, phGraph: Any) -> int:
        result = cu.cuGraphChildGraphNodeGetGraph(hNode[1])
        if rc(result) == SUCCESS:
            phGraph.value = self._graph_handle(c, result[1])
        return rc(result)

    def cuGraphGetId(self, c: Caller, hGraph: Any, graphId: Any) -> int:
        return answered(cu.cuGraphGetId(hGraph[1]), graphId)

    def cuGraphExecGetId(self, c: Caller, hGraphExec: Any, graphId: Any) -> int:
        return answered(cu.cuGraphExecGetId(hGraphExec[1]), graphId)

    def cuGraphNodeGetLocalId(self, c: Caller, hNode: Any, nodeId: Any) -> int:
        return answered(cu.cuGraphNodeGetLocalId(hNode[1]), nodeId)

    def cuGraphNodeGetToolsId(self, c: Caller, hNode: Any, toolsNodeId: Any) -> int:
        return answered(cu.cuGraphNodeGetToolsId(hNode[1]), toolsNodeId)

    def cuGraphExecGetFlags(self, c: Caller, hGraphExec: Any, flags: Any) -> int:
        result = cu.cuGraphExecGetFlags(hGraphExec[1])
        if rc(result) == SUCCESS:
            flags.value = int(result[1])
        return rc(result)

    def cuGraphNodeSetEnabled(self, c: Caller, hGraphExec: Any, hNode: Any, isEnabled: int) -> int:
        return rc(cu.cuGraphNodeSetEnabled(hGraphExec[1], hNode[1], isEnabled))

    def cuGraphNodeGetEnabled(self, c: Caller, hGraphExec: Any, hNode: Any, isEnabled: Any) -> int:
        return answered(cu.cuGraphNodeGetEnabled(hGraphExec[1], hNode[1]), isEnabled)

    def cuGraphAddEventRecordNode(self, c: Caller, phGraphNode: Any, hGraph: Any, dependencies: Any,
                                  numDependencies: int, event: Any) -> int:
        nodes = [node for _, node in dependencies or []]
        return self._node_made(c, cu.cuGraphAddEventRecordNode(hGraph[1], nodes, len(nodes), event[1]), phGraphNode)

    def cuGraphAddEventWaitNode(self, c: Caller, phGraphNode: Any, hGraph: Any, dependencies: Any,
                                numDependencies: int, event: Any) -> int:
        nodes = [node for _, node in dependencies or []]
        return self._node_made(c, cu.cuGraphAddEventWaitNode(hGraph[1], nodes, len(nodes), event[1]), phGraphNode)

    def _event_handle(self, c: Caller, event: Any) -> tuple[int, Any] | None:
        owned = self._mine(c)
        found = next((key for key, known in owned.events.items() if int(known) == int(event)), None)
        return (found, event) if found is not None else None

    def cuGraphEventRecordNodeGetEvent(self, c: Caller, hNode: Any, event_out: Any) -> int:
        return self._event_out(c, cu.cuGraphEventRecordNodeGetEvent(hNode[1]), event_out)

    def cuGraphEventWaitNodeGetEvent(self, c: Caller, hNode: Any, event_out: Any) -> int:
        return self._event_out(c, cu.cuGraphEventWaitNodeGetEvent(hNode[1]), event_out)

    def _event_out(self, c: Caller, result: Any, out: Any) -> int:
        if rc(result) == SUCCESS:
            out.value = self._event_handle(c, result[1])
        return rc(result)

    def cuGraphEventRecordNodeSetEvent(self, c: Caller, hNode: Any, event: Any) -> int:
        return rc(cu.cuGraphEventRecordNodeSetEvent(hNode[1], event[1]))

    def cuGraphEventWaitNodeSetEvent(self, c: Caller, hNode: Any, event: Any) -> int:
        return rc(cu.cuGraphEventWaitNodeSetEvent(hNode[1], event[1]))

    def cuGraphExecEventRecordNodeSetEvent(self, c: Caller, hGraphExec: Any, hNode: Any, event: Any) -> int:
        return rc(cu.cuGraphExecEventRecordNodeSetEvent(hGraphExec[1], hNode[1], event[1]))

    def cuGraphExecEventWaitNodeSetEvent(self, c: Caller, hGraphExec: Any, hNode: Any, event: Any) -> int:
        return rc(cu.cuGraphExecEventWaitNodeSetEvent(hGraphExec[1], hNode[1], event[1]))

    def cuGraphAddChildGraphNode(self, c: Caller, phGraphNode: Any, hGraph: Any, dependencies: Any,
                                 numDependencies: int, childGraph: Any) -> int:
        nodes = [node for _, node in dependencies or []]
        return self._node_made(c, cu.cuGraphAddChildGraphNode(hGraph[1], nodes, len(nodes), childGraph[1]),
                               phGraphNode)

    def cuGraphExecChildGraphNodeSetParams(self, c: Caller, hGraphExec: Any, hNode: Any, childGraph: Any) -> int:
        return rc(cu.cuGraphExecChildGraphNodeSetParams(hGraphExec[1], hNode[1], childGraph[1]))

    def cuGraphInstantiate_v2(self, c: Caller, phGraphExec: Any, hGraph: Any, phErrorNode: Any, logBuffer: Any,
                              bufferSize: int) -> int:
        """The CUDA 11 form, as flags 0 (the log stays empty)."""
        if logBuffer is not None:
            logBuffer.value = b""
        return self.cuGraphInstantiateWithFlags(c, phGraphExec, hGraph, 0)

    cuGraphInstantiate = cuGraphInstantiate_v2

    def cuGraphExecUpdate(self, c: Caller, hGraphExec: Any, hGraph: Any, hErrorNode_out: Any,
                          updateResult_out: Any) -> int:
        info = UPDATE_RESULT_INFO()
        code = self.cuGraphExecUpdate_v2(c, hGraphExec, hGraph, info)
        updateResult_out.value = info.result
        hErrorNode_out.value = (info.errorNode, self._mine(c).nodes[info.errorNode]) if info.errorNode else None
        return code

    @staticmethod
    def _memset_params(p: Any) -> Any:
        params = cu.CUDA_MEMSET_NODE_PARAMS()
        params.dst, params.pitch, params.value = p.dst, p.pitch, p.value
        params.elementSize, params.width, params.height = p.elementSize, p.width, p.height
        return params

    def cuGraphMemsetNodeGetParams(self, c: Caller, hNode: Any, nodeParams: Any) -> int:
        result = cu.cuGraphMemsetNodeGetParams(hNode[1])
        if rc(result) == SUCCESS:
            p = result[1]
            nodeParams.dst, nodeParams.pitch, nodeParams.value = int(p.dst), p.pitch, p.value
            nodeParams.elementSize, nodeParams.width, nodeParams.height = p.elementSize, p.width, p.height
        return rc(result)

    def cuGraphMemsetNodeSetParams(self, c: Caller, hNode: Any, nodeParams: Any) -> int:
        return rc(cu.cuGraphMemsetNodeSetParams(hNode[1], self._memset_params(nodeParams)))

    def cuGraphExecMemsetNodeSetParams(self, c: Caller, hGraphExec: Any, hNode: Any, memsetParams: Any,
                                       ctx: int) -> int:
        _, context = self._real_context(c, ctx or c.context)
        if context is None:
            return C["CUDA_ERROR_INVALID_CONTEXT"]
        return rc(cu.cuGraphExecMemsetNodeSetParams(hGraphExec[1], hNode[1], self._memset_params(memsetParams),
                                                    context))

    # launches ------------------------------------------------------------------------------
    LAUNCH_COOPERATIVE = ModuleServing.LAUNCH_COOPERATIVE
    LAUNCH_GRAPH_NODE = ModuleServing.LAUNCH_GRAPH_NODE

    def launch(self, session: Session, payload: bytes) -> bytes:
        """OP_LAUNCH records (vgpu.server.cuda_modules has the layout), launched on the real
        GPU with the packed parameters (as CU_LAUNCH_PARAM_BUFFER_POINTER), cooperative ones
        through cuLaunchKernelEx, and recorded as the simulator records them; a graph's kernel
        node (a frame of its own) is added to the graph, and the reply carries its id."""
        at, size, first = 0, len(payload), SUCCESS
        while at < size:
            (context, function_id, stream_id, gx, gy, gz, bx, by, bz, shared, flags,
             args_size) = LAUNCH.unpack_from(payload, at)
            at += LAUNCH.size
            c = Caller(session, context)
            if flags & ModuleServing.LAUNCH_CAPTURE_HOST:  # host functions are not captured here: the client runs it
                return struct.pack("<iI", SUCCESS, 0)
            if flags & ModuleServing.LAUNCH_GRAPH_RUN:  # a graph launch from the shim (no host nodes here)
                graph_exec = self.resolve("CUgraphExec", struct.unpack_from("<Q", payload, at)[0], c)
                stream = self.resolve("CUstream", stream_id, c)
                if graph_exec is None or stream is None:
                    return struct.pack("<iQQQ", self.INVALID_HANDLE, 0, 0, 0)
                return struct.pack("<iQQQ", self.cuGraphLaunch(c, graph_exec, stream), 0, 0, 0)
            if flags & ModuleServing.LAUNCH_NODE_PARAMS:  # kernel node parameters: the simulator's only
                return struct.pack("<i", self.NOT_SUPPORTED)
            if flags & self.LAUNCH_GRAPH_NODE:
                graph_id, count = struct.unpack_from("<QI", payload, at)
                nodes = struct.unpack_from(f"<{count}Q", payload, at + 12)
                at += 12 + 8 * count
                return self._kernel_node(c, graph_id, nodes, function_id, (gx, gy, gz), (bx, by, bz), shared,
                                         bytes(payload[at:at + args_size]))
            args = bytes(payload[at:at + args_size])
            at += args_size
            function = self.resolve("CUfunction", function_id, c)
            stream = self.resolve("CUstream", stream_id, c)
            if function is None or stream is None:
                first = first or self.INVALID_HANDLE
                continue
            ordinal = self._enter(c)
            buffers, extra = self._packed(args)
            cooperative = bool(flags & self.LAUNCH_COOPERATIVE)
            start = time.time()
            if cooperative:
                config = cu.CUlaunchConfig()
                config.gridDimX, config.gridDimY, config.gridDimZ = gx, gy, gz
                config.blockDimX, config.blockDimY, config.blockDimZ = bx, by, bz
                config.sharedMemBytes, config.hStream = shared, stream[1]
                attribute = cu.CUlaunchAttribute()
                attribute.id = cu.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_COOPERATIVE
                attribute.value.cooperative = 1
                config.attrs, config.numAttrs = [attribute], 1
                result = rc(cu.cuLaunchKernelEx(config, function.handle, None, ctypes.addressof(extra)))
            else:
                result = rc(cu.cuLaunchKernel(function.handle, gx, gy, gz, bx, by, bz, shared, stream[1], None,
                                              ctypes.addressof(extra)))
            if result == SUCCESS:
                shape = (function.name, (gx, gy, gz), (bx, by, bz), shared, args, cooperative)
                captures = self._captures.get(session.id)
                captured = captures.get(self._capture_id(stream)) if captures else None
                if captured is not None:  # a kernel node of the capture's graph: recorded when it runs
                    captured.append(shape)
                else:
                    self.state.launches.add((session.pid, session.id, start, ordinal or 0, *shape[:4], stream_id,
                                             args, 0.0, 0.0, cooperative, False, ON_THE_GPU))
            first = first or result
        return struct.pack("<i", first)

    @staticmethod
    def _packed(args: bytes) -> tuple[Any, Any]:
        """The parameters as the driver takes a packed buffer: {BUFFER_POINTER, p,
        BUFFER_SIZE, &size, END} (both returned, to keep them alive through the call)."""
        buffer = ctypes.create_string_buffer(args, max(len(args), 1))
        length = ctypes.c_size_t(len(args))
        extra = (ctypes.c_void_p * 5)(1, ctypes.addressof(buffer), 2, ctypes.addressof(length), 0)
        return (buffer, length), extra

    def _kernel_node(self, c: Caller, graph_id: int, node_ids: tuple[int, ...], function_id: int,
                     grid: tuple[int, int, int], block: tuple[int, int, int], shared: int, args: bytes) -> bytes:
        graph = self.resolve("CUgraph", graph_id, c)
        function = self.resolve("CUfunction", function_id, c)
        nodes = [self.resolve("CUgraphNode", node, c) for node in node_ids]
        if graph is None or function is None or any(node is None for node in nodes):
            return struct.pack("<iQ", self.INVALID_HANDLE, 0)
        buffers, extra = self._packed(args)  # alive until the driver has copied the parameters
        params = cu.CUDA_KERNEL_NODE_PARAMS()
        params.func = function.handle
        params.gridDimX, params.gridDimY, params.gridDimZ = grid
        params.blockDimX, params.blockDimY, params.blockDimZ = block
        params.sharedMemBytes, params.extra = shared, ctypes.addressof(extra)
        result = cu.cuGraphAddKernelNode(graph[1], [node for _, node in nodes], len(nodes), params)
        if rc(result) != SUCCESS:
            return struct.pack("<iQ", rc(result), 0)
        self._records.setdefault(graph[0], []).append((function.name, grid, block, shared, args, False))
        return struct.pack("<iQ", SUCCESS, self._node(c, result[1])[0])
