"""What a code image holds, whatever its format: kernels with their parameter layout and
resources, and globals with their initial contents."""

from __future__ import annotations

from dataclasses import dataclass, field


#: functions the driver itself provides to device code (system calls: PTX declares them extern,
#: cubins leave them undefined)
#: in a link tag's input number: the input is one member of a library
LIBRARY_MEMBER = 0x8000
DRIVER_FUNCTIONS = frozenset({"vprintf", "malloc", "free", "__assertfail"})


class ImageError(ValueError):
    """The bytes are not a code image the driver would accept (CUDA_ERROR_INVALID_IMAGE)."""


class NoBinaryForGpu(ImageError):
    """Neither code for the device's architecture nor PTX (CUDA_ERROR_NO_BINARY_FOR_GPU)."""


class PtxTooNew(NoBinaryForGpu):
    """Only PTX for a newer architecture than the device's: the JIT refuses it (CUDA_ERROR_INVALID_PTX)."""


@dataclass(frozen=True)
class Param:
    """One kernel parameter: where it lies in the parameter buffer and how many bytes it takes."""

    offset: int
    size: int


@dataclass
class Kernel:
    name: str
    params: list[Param] = field(default_factory=list)
    registers: int = 0
    #: static shared memory per block, bytes (without the driver's reserved part)
    shared_bytes: int = 0
    #: the kernel's own constant bank beyond its parameters, bytes
    const_bytes: int = 0
    #: local memory per thread, bytes
    local_bytes: int = 0
    #: __launch_bounds__ / .maxntid: the most threads per block it was compiled for (0: none)
    max_threads: int = 0
    #: .reqntid: the exact block shape it requires, or None
    required_block: tuple[int, int, int] | None = None
    #: whether the numbers come from compiled code (cubin) or are estimated from PTX
    compiled: bool = True

    @property
    def param_bytes(self) -> int:
        return max((p.offset + p.size for p in self.params), default=0)


@dataclass
class Global:
    """A __device__ or __constant__ variable: its size and the bytes it starts with."""

    name: str
    size: int
    initial: bytes = b""
    constant: bool = False


@dataclass
class ModuleCode:
    """One piece of code: a cubin for one architecture, or PTX for a virtual one."""

    kind: str  # "cubin" or "ptx"
    arch: int  # 90 for sm_90 / compute_90
    kernels: dict[str, Kernel] = field(default_factory=dict)
    globals: dict[str, Global] = field(default_factory=dict)
    #: functions and variables it defines for other code, and those it uses from other code
    #: (what a link resolves across inputs)
    defines: set[str] = field(default_factory=set)
    needs: set[str] = field(default_factory=set)
    #: PTX's text, which the compute engine runs (None for a cubin)
    source: bytes | None = None


@dataclass
class CodeImage:
    """Everything a loaded image offers; the driver runs one piece of it per device."""

    format: str  # "fatbin", "cubin" or "ptx"
    codes: list[ModuleCode]
    compressed: bool = False
    #: for the output of cuLinkComplete (a fat binary vgpu writes, see vgpu.images.fatbin): the
    #: link input each code came from, and the architecture the link was made for
    link_inputs: list[int] | None = None
    link_target: int = 0

    @property
    def architectures(self) -> list[str]:
        return [f"{'sm' if c.kind == 'cubin' else 'compute'}_{c.arch}" for c in self.codes]

    def module_for(self, arch: int) -> ModuleCode:
        """The code a device of compute capability ``arch`` (major*10+minor) runs: a cubin of
        its own architecture, else one of the same major version and not newer, else the
        newest PTX not newer than the device (compiled for it); PtxTooNew when only newer PTX
        is there, NoBinaryForGpu when nothing fits.  A linked image is one cubin for its link
        target: each input's code for that target, with every reference resolved."""
        if self.link_inputs is not None:
            return self._linked_for(arch)
        return self._choose(self.codes, arch)

    def _choose(self, codes: list[ModuleCode], arch: int) -> ModuleCode:
        cubins = [c for c in codes if c.kind == "cubin" and c.arch // 10 == arch // 10 and c.arch <= arch]
        if cubins:
            return max(cubins, key=lambda c: c.arch)
        ptx = [c for c in codes if c.kind == "ptx" and c.arch <= arch]
        if ptx:
            return max(ptx, key=lambda c: c.arch)
        if any(c.kind == "ptx" for c in codes):
            raise PtxTooNew(f"PTX only for {', '.join(self.architectures)}, newer than sm_{arch}")
        raise NoBinaryForGpu(f"no code for sm_{arch} among {', '.join(self.architectures) or 'nothing'}")

    def _linked_for(self, arch: int) -> ModuleCode:
        """The linked program: runs where a cubin of the link target would, and holds every
        input's kernels and globals; ImageError names a reference no input defines."""
        target = self.link_target
        if target // 10 != arch // 10 or target > arch:
            raise NoBinaryForGpu(f"linked for sm_{target}, not for sm_{arch}")
        merged = ModuleCode("cubin", target)
        for index in sorted(set(self.link_inputs or [])):
            try:
                code = self._choose([c for c, i in zip(self.codes, self.link_inputs or []) if i == index], target)
            except NoBinaryForGpu:
                if index & LIBRARY_MEMBER:
                    continue  # a library's member without code for the target: not taken
                raise
            merged.kernels.update(code.kernels)
            merged.globals.update(code.globals)
            merged.defines |= code.defines | set(code.kernels) | set(code.globals)
            merged.needs |= code.needs
        missing = sorted(merged.needs - merged.defines - DRIVER_FUNCTIONS)
        if missing:
            raise ImageError(f"undefined reference to {', '.join(repr(name) for name in missing)}")
        return merged
