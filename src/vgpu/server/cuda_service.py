"""The CUDA driver API, answered from the device model: versions and devices so far.

Conventions as in NvmlService: one method per driver function, named after it, taking
the decoded arguments and returning a CUresult.  Functions without a method answer
CUDA_ERROR_NOT_SUPPORTED in the shim.  CUdevice is the GPU's ordinal, as in the real
driver; UUID bytes and PCI location are the same as NVML's.
"""

from __future__ import annotations

import ctypes
from typing import Any

from vgpu.api.manifest import load
from vgpu.device.cuda_attributes import attributes
from vgpu.device.gpu import Gpu, OutOfMemory
from vgpu.device.gpuset import parse_pci_bus_id
from vgpu.device.memory import InvalidAddress
from vgpu.server.dispatch import Caller
from vgpu.server.state import DaemonState, Session
from vgpu.wire.codec import Buffer

API = load("cuda")
C = API.constants
SUCCESS = C["CUDA_SUCCESS"]
INVALID_VALUE = C["CUDA_ERROR_INVALID_VALUE"]
INVALID_DEVICE = C["CUDA_ERROR_INVALID_DEVICE"]
#: the streams every context has: NULL, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD
DEFAULT_STREAMS = {0: "default", 1: "legacy", 2: "per-thread"}
#: the shim's ids for primary contexts: this bit and the device ordinal (native/cuda/cuda_shim.c)
PRIMARY_CONTEXT = 1 << 32
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


class CudaService:
    """The CUDA driver functions vgpud serves."""

    api = API
    CONTEXT_PREFIX = True
    INVALID_HANDLE = C["CUDA_ERROR_INVALID_HANDLE"]
    INVALID_ARGUMENT = INVALID_VALUE
    NOT_SUPPORTED = C["CUDA_ERROR_NOT_SUPPORTED"]
    INTERNAL_ERROR = C["CUDA_ERROR_UNKNOWN"]

    def __init__(self, state: DaemonState) -> None:
        self.state = state
        self.implemented = {f.name for f in API.functions if f.marshallable and hasattr(self, f.name)}
        # cuDriverGetVersion is answered by the shim itself, but asks vgpud first
        self.implemented.add("cuDriverGetVersion")
        self._attributes = [attributes(gpu.ident) for gpu in state.gpus]

    def resolve(self, handle_type: str, handle_id: int, caller: Caller) -> Any:
        if handle_type == "CUstream" and handle_id in DEFAULT_STREAMS:
            return DEFAULT_STREAMS[handle_id]
        if handle_type == "CUcontext" and (handle_id == 0 or handle_id & PRIMARY_CONTEXT):
            return handle_id  # a primary context, or NULL for the current one
        return None  # created streams, events and the rest come with the next steps

    @staticmethod
    def handle_id(obj: Any) -> int:
        raise TypeError(f"no handle id for {obj!r}")

    @staticmethod
    def refusal(obj: Any) -> int | None:
        return None

    def _visible(self, c: Caller) -> list[int]:
        s = c.session
        return visible_devices(s.env.get("CUDA_VISIBLE_DEVICES"), [gpu.ident.uuid for gpu in self.state.gpus])

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
            bytes.value = gpu.profile.cuda_total_mib << 20
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
            if (0, self.state.gpus[index].ident.pci_bus, 0) == wanted:
                dev.value = ordinal
                return SUCCESS
        return INVALID_DEVICE

    # contexts and memory ----------------------------------------------------------------
    def _context_gpu(self, c: Caller) -> tuple[Gpu | None, int]:
        """The GPU of the calling thread's current context (the shim's primary-context ids
        carry the ordinal), or the code a real driver answers without one."""
        if not c.context & PRIMARY_CONTEXT:
            return None, C["CUDA_ERROR_INVALID_CONTEXT"]
        gpu, rc = self._device_call(c, c.context & 0xFFFFFFFF)
        return gpu, rc if gpu is not None or rc != INVALID_DEVICE else C["CUDA_ERROR_INVALID_CONTEXT"]

    def cuCtxSynchronize(self, c: Caller) -> int:
        return self._context_gpu(c)[1]  # nothing runs asynchronously yet: all work is done

    def cuCtxSynchronize_v2(self, c: Caller, ctx: int) -> int:
        return self._context_gpu(Caller(c.session, ctx) if ctx else c)[1]

    def cuStreamSynchronize(self, c: Caller, hStream: str) -> int:
        return self._context_gpu(c)[1]

    def cuStreamQuery(self, c: Caller, hStream: str) -> int:
        return self._context_gpu(c)[1]  # CUDA_SUCCESS: all work is done

    cuStreamSynchronize_ptsz = cuStreamSynchronize
    cuStreamQuery_ptsz = cuStreamQuery

    def cuMemGetInfo_v2(self, c: Caller, free: Any, total: Any) -> int:
        gpu, rc = self._context_gpu(c)
        if gpu is not None:
            free.value, total.value = gpu.cuda_free, gpu.cuda_total
        return rc

    def cuMemAlloc_v2(self, c: Caller, dptr: Any, bytesize: int) -> int:
        gpu, rc = self._context_gpu(c)
        if gpu is None:
            return rc
        if bytesize == 0:
            return INVALID_VALUE
        footprint = gpu.memory.footprint(bytesize)
        try:
            gpu.hold(c.session.id, footprint, cuda=True)
        except OutOfMemory:
            return C["CUDA_ERROR_OUT_OF_MEMORY"]
        dptr.value = gpu.memory.allocate(c.session.id, bytesize).address
        return SUCCESS

    def cuMemFree_v2(self, c: Caller, dptr: int) -> int:
        gpu = self._gpu_of_address(dptr)
        if gpu is None:
            return INVALID_VALUE
        try:
            allocation = gpu.memory.free(c.session.id, dptr)
        except InvalidAddress:
            return INVALID_VALUE
        gpu.release(c.session.id, gpu.memory.footprint(allocation.size))
        return SUCCESS

    def cuMemGetAddressRange_v2(self, c: Caller, pbase: Any, psize: Any, dptr: int) -> int:
        gpu = self._gpu_of_address(dptr)
        try:
            allocation = gpu.memory.find(c.session.id, dptr) if gpu is not None else None
        except InvalidAddress:
            allocation = None
        if allocation is None:
            return C["CUDA_ERROR_NOT_FOUND"]
        if pbase is not None:
            pbase.value = allocation.address
        if psize is not None:
            psize.value = allocation.size
        return SUCCESS

    def _gpu_of_address(self, address: int) -> Gpu | None:
        return next((gpu for gpu in self.state.gpus if gpu.memory.owns(address)), None)

    def _access(self, c: Caller, action: Any, *addresses: int) -> int:
        """Run a memory access on the GPU holding the first address; CUDA_ERROR_INVALID_VALUE
        for any address outside the caller's allocations."""
        gpu = self._gpu_of_address(addresses[0])
        if gpu is None or any(self._gpu_of_address(a) is not gpu for a in addresses[1:]):
            return INVALID_VALUE
        if gpu.lost:
            return C["CUDA_ERROR_DEVICE_UNAVAILABLE"]
        try:
            action(gpu.memory)
        except InvalidAddress:
            return INVALID_VALUE
        return SUCCESS

    def cuMemcpyHtoD_v2(self, c: Caller, dstDevice: int, srcHost: Any, ByteCount: int) -> int:
        if srcHost is None:
            return INVALID_VALUE
        return self._access(c, lambda m: m.write(c.session.id, dstDevice, memoryview(srcHost)), dstDevice)

    def cuMemcpyDtoH_v2(self, c: Caller, dstHost: Any, srcDevice: int, ByteCount: int) -> int:
        if dstHost is None:
            return INVALID_VALUE
        return self._access(c, lambda m: m.read(c.session.id, srcDevice, ByteCount, memoryview(dstHost).cast("B")),
                            srcDevice)

    def cuMemcpyDtoD_v2(self, c: Caller, dstDevice: int, srcDevice: int, ByteCount: int) -> int:
        return self._access(c, lambda m: m.copy(c.session.id, dstDevice, srcDevice, ByteCount), dstDevice, srcDevice)

    def _memset(self, c: Caller, dstDevice: int, pattern: bytes, N: int) -> int:
        return self._access(c, lambda m: m.fill(c.session.id, dstDevice, pattern, N), dstDevice)

    def cuMemsetD8_v2(self, c: Caller, dstDevice: int, uc: int, N: int) -> int:
        return self._memset(c, dstDevice, uc.to_bytes(1, "little"), N)

    def cuMemsetD16_v2(self, c: Caller, dstDevice: int, us: int, N: int) -> int:
        return self._memset(c, dstDevice, us.to_bytes(2, "little"), N)

    def cuMemsetD32_v2(self, c: Caller, dstDevice: int, ui: int, N: int) -> int:
        return self._memset(c, dstDevice, ui.to_bytes(4, "little"), N)

    # the per-thread-default-stream names do the same synchronous work
    cuMemcpyHtoD_v2_ptds = cuMemcpyHtoD_v2
    cuMemcpyDtoH_v2_ptds = cuMemcpyDtoH_v2
    cuMemcpyDtoD_v2_ptds = cuMemcpyDtoD_v2
    cuMemsetD8_v2_ptds = cuMemsetD8_v2
    cuMemsetD16_v2_ptds = cuMemsetD16_v2
    cuMemsetD32_v2_ptds = cuMemsetD32_v2
