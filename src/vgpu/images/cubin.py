"""Cubins: NVIDIA's ELF images of compiled GPU code (one SM architecture each), read with
pyelftools.

Per kernel, the facts live in ``.nv.info.<kernel>`` (attribute records: the parameter
layout in EIATTR_KPARAM_INFO, launch bounds in EIATTR_MAX_THREADS) and in the file-wide
``.nv.info`` (EIATTR_REGCOUNT per function symbol); static shared memory is the size of
``.nv.shared.<kernel>``, the constant bank ``.nv.constant0.<kernel>``.
"""

from __future__ import annotations

import io
import struct

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from vgpu.images.model import Global, ImageError, Kernel, ModuleCode, Param

EM_CUDA = 190
# .nv.info record formats and the attributes read here (names as cuobjdump prints them)
EIFMT_NVAL, EIFMT_BVAL, EIFMT_HVAL, EIFMT_SVAL = 1, 2, 3, 4
EIATTR_MAX_THREADS = 0x05
EIATTR_REQNTID = 0x10
EIATTR_FRAME_SIZE = 0x11
EIATTR_KPARAM_INFO = 0x17
EIATTR_CBANK_PARAM_SIZE = 0x19
EIATTR_REGCOUNT = 0x2F
#: st_other's mark of a kernel (an entry function)
STO_CUDA_ENTRY = 0x10
#: shared memory the driver reserves at the start of each block's (sm_80 and later), which
#: the compiler places inside every kernel's .nv.shared section
RESERVED_SHARED = 1024


def is_cubin(data: bytes) -> bool:
    return data[:4] == b"\x7fELF" and len(data) > 20 and struct.unpack_from("<H", data, 18)[0] == EM_CUDA


def _records(data: bytes) -> list[tuple[int, int, bytes]]:
    """(format, attribute, value) of each .nv.info record."""
    out, at = [], 0
    while at + 4 <= len(data):
        fmt, attr = data[at], data[at + 1]
        if fmt == EIFMT_SVAL:
            (size,) = struct.unpack_from("<H", data, at + 2)
            out.append((fmt, attr, data[at + 4:at + 4 + size]))
            at += 4 + size
        else:
            out.append((fmt, attr, data[at + 2:at + 4]))
            at += 4
    return out


def _arch(e_flags: int, abi_version: int) -> int:
    """The SM architecture in the ELF flags: bits 8-15 from ELF ABI version 8 (CUDA 12.8 and
    later), bits 0-7 before (cuBLASLt still ships such cubins)."""
    return (e_flags >> 8) & 0xFF if abi_version >= 8 else e_flags & 0xFF


def read_cubin(data: bytes) -> ModuleCode:
    try:
        elf = ELFFile(io.BytesIO(data))
        sections = {s.name: s for s in elf.iter_sections()}
    except (ELFError, struct.error, ValueError) as error:
        raise ImageError(f"cubin is not a valid ELF file: {error}") from None
    if elf.header.e_machine not in ("EM_CUDA", EM_CUDA):
        raise ImageError(f"ELF image for {elf.header.e_machine}, not a CUDA cubin")
    arch = _arch(elf.header.e_flags, elf.header.e_ident["EI_ABIVERSION"])
    symtab = sections.get(".symtab")
    symbols = list(symtab.iter_symbols()) if symtab is not None else []
    registers: dict[str, int] = {}
    frames: dict[str, int] = {}
    if ".nv.info" in sections:
        for fmt, attr, value in _records(sections[".nv.info"].data()):
            if fmt == EIFMT_SVAL and attr in (EIATTR_REGCOUNT, EIATTR_FRAME_SIZE) and len(value) >= 8:
                index, amount = struct.unpack_from("<II", value)
                if index < len(symbols):
                    (registers if attr == EIATTR_REGCOUNT else frames)[symbols[index].name] = amount
    reserved = RESERVED_SHARED if ".nv.shared.reserved.0" in sections else 0
    code = ModuleCode("cubin", arch)
    # st_other's STO_CUDA_ENTRY bit (pyelftools keeps only the visibility bits of st_other)
    raw = symtab.data() if symtab is not None else b""
    entries = [bool(raw[i * symtab["sh_entsize"] + 5] & STO_CUDA_ENTRY) if symtab["sh_entsize"] >= 24 else False
               for i in range(len(symbols))]
    for number, sym in enumerate(symbols):
        kind, shndx = sym["st_info"]["type"], sym["st_shndx"]
        if sym.name and sym["st_info"]["bind"] in ("STB_GLOBAL", "STB_WEAK"):
            if shndx != "SHN_UNDEF":
                code.defines.add(sym.name)
            elif sym["st_info"]["bind"] == "STB_GLOBAL":  # (weak ones, the linker's own tables, may stay undefined)
                code.needs.add(sym.name)  # relocatable code: defined by another input of a link
        # kernels, local ones (internal linkage) included; a device function has no info section of its
        # own, except in relocatable code, where it is neither an entry nor has a parameter bank
        if kind == "STT_FUNC" and f".text.{sym.name}" in sections and f".nv.info.{sym.name}" in sections and (
                entries[number] or _has_parameter_bank(sections[f".nv.info.{sym.name}"])):
            code.kernels[sym.name] = _kernel(sym.name, sections, registers, frames, reserved)
        elif kind == "STT_OBJECT" and isinstance(shndx, int):
            section = elf.get_section(shndx)
            if section.name in (".nv.global", ".nv.global.init", ".nv.constant3") or section.name.startswith(
                    ".nv.constant"):
                initial = b"" if section["sh_type"] == "SHT_NOBITS" else \
                    section.data()[sym["st_value"]:sym["st_value"] + sym["st_size"]]
                code.globals[sym.name] = Global(sym.name, sym["st_size"], initial,
                                                constant=section.name.startswith(".nv.constant"))
    return code


def _has_parameter_bank(info) -> bool:
    return any(attr == EIATTR_CBANK_PARAM_SIZE for _fmt, attr, _value in _records(info.data()))


def _kernel(name: str, sections: dict, registers: dict[str, int], frames: dict[str, int], reserved: int) -> Kernel:
    constants = sections.get(".nv.constant3")
    kernel = Kernel(name, registers=registers.get(name, sections[f".text.{name}"]["sh_info"] >> 24),
                    local_bytes=frames.get(name, 0), const_bytes=constants["sh_size"] if constants else 0)
    shared = sections.get(f".nv.shared.{name}")
    if shared is not None:
        kernel.shared_bytes = max(0, shared["sh_size"] - reserved)
    params: dict[int, Param] = {}
    info = sections.get(f".nv.info.{name}")
    for fmt, attr, value in _records(info.data()) if info is not None else []:
        if attr == EIATTR_KPARAM_INFO and len(value) >= 12:
            _index, ordinal, offset, bits = struct.unpack_from("<IHHI", value)
            params[ordinal] = Param(offset, (bits >> 18) & 0x3FFF)
        elif attr in (EIATTR_MAX_THREADS, EIATTR_REQNTID) and len(value) >= 12:
            x, y, z = struct.unpack_from("<III", value)
            kernel.max_threads = x * y * z
            if attr == EIATTR_REQNTID:
                kernel.required_block = (x, y, z)
    kernel.params = [params[i] for i in sorted(params)]
    return kernel
