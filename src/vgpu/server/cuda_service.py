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
from vgpu.device.gpu import Gpu
from vgpu.device.gpuset import parse_pci_bus_id
from vgpu.server.state import DaemonState, Session
from vgpu.wire.codec import Buffer

API = load("cuda")
C = API.constants
SUCCESS = C["CUDA_SUCCESS"]
INVALID_VALUE = C["CUDA_ERROR_INVALID_VALUE"]
INVALID_DEVICE = C["CUDA_ERROR_INVALID_DEVICE"]
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

    def resolve(self, handle_type: str, handle_id: int, session: Session) -> Any:
        return None  # contexts, streams and the rest come with the next steps

    @staticmethod
    def handle_id(obj: Any) -> int:
        raise TypeError(f"no handle id for {obj!r}")

    @staticmethod
    def refusal(obj: Any) -> int | None:
        return None

    def _visible(self, s: Session) -> list[int]:
        return visible_devices(s.env.get("CUDA_VISIBLE_DEVICES"), [gpu.ident.uuid for gpu in self.state.gpus])

    def _gpu(self, s: Session, dev: int) -> Gpu | None:
        """The GPU behind a CUDA ordinal of this process."""
        visible = self._visible(s)
        return self.state.gpus[visible[dev]] if 0 <= dev < len(visible) else None

    def _device_call(self, s: Session, dev: int) -> tuple[Gpu | None, int]:
        """The GPU behind an ordinal, or the code a real driver answers for it."""
        gpu = self._gpu(s, dev)
        if gpu is None:
            return None, INVALID_DEVICE
        if gpu.lost:
            return None, C["CUDA_ERROR_DEVICE_UNAVAILABLE"]
        return gpu, SUCCESS

    # versions and devices -------------------------------------------------------------
    def cuDriverGetVersion(self, s: Session, driverVersion: Any) -> int:
        driverVersion.value = self.state.gpuset.cuda_version
        return SUCCESS

    def cuDeviceGetCount(self, s: Session, count: Any) -> int:
        count.value = len(self._visible(s))
        return SUCCESS

    def cuDeviceGet(self, s: Session, device: Any, ordinal: int) -> int:
        if self._gpu(s, ordinal) is None:
            return INVALID_DEVICE
        device.value = ordinal
        return SUCCESS

    def cuDeviceGetName(self, s: Session, name: Buffer, len: int, dev: int) -> int:
        gpu, rc = self._device_call(s, dev)
        if gpu is not None:
            name.value = gpu.profile.name.encode()  # the real driver truncates to fit
        return rc

    def cuDeviceGetUuid_v2(self, s: Session, uuid: Any, dev: int) -> int:
        gpu, rc = self._device_call(s, dev)
        if gpu is not None:  # byte by byte: a char array field would stop at the first zero byte
            ctypes.memmove(ctypes.addressof(uuid) + type(uuid).bytes.offset, gpu.ident.uuid_bytes, 16)
        return rc

    cuDeviceGetUuid = cuDeviceGetUuid_v2

    def cuDeviceTotalMem_v2(self, s: Session, bytes: Any, dev: int) -> int:
        gpu, rc = self._device_call(s, dev)
        if gpu is not None:
            bytes.value = gpu.profile.cuda_total_mib << 20
        return rc

    def cuDeviceComputeCapability(self, s: Session, major: Any, minor: Any, dev: int) -> int:
        gpu, rc = self._device_call(s, dev)
        if gpu is not None:
            major.value, minor.value = gpu.profile.compute_capability
        return rc

    def cuDeviceGetAttribute(self, s: Session, pi: Any, attrib: int, dev: int) -> int:
        gpu, rc = self._device_call(s, dev)
        if gpu is None:
            return rc
        if attrib not in ATTRIBUTES:
            return INVALID_VALUE
        values = self._attributes[gpu.index]
        pi.value = next((values[name] for name in ATTRIBUTES[attrib] if name in values), 0)
        return SUCCESS

    def cuDeviceGetPCIBusId(self, s: Session, pciBusId: Buffer, len: int, dev: int) -> int:
        gpu, rc = self._device_call(s, dev)
        if gpu is not None:
            pciBusId.value = gpu.ident.pci_bus_id_legacy.encode()
        return rc

    def cuDeviceGetByPCIBusId(self, s: Session, dev: Any, pciBusId: bytes | None) -> int:
        wanted = parse_pci_bus_id(pciBusId) if pciBusId is not None else None
        if wanted is None:
            return INVALID_VALUE
        for ordinal, index in enumerate(self._visible(s)):
            if (0, self.state.gpus[index].ident.pci_bus, 0) == wanted:
                dev.value = ordinal
                return SUCCESS
        return INVALID_DEVICE
