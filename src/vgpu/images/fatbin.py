"""Fat binaries: the container nvcc embeds in programs (``.nv_fatbin``), holding cubins
for some architectures and PTX for others, each entry perhaps compressed (LZ4 in CUDA
11-12, Zstandard from CUDA 12.8 on).

Layout (little-endian): a 16-byte header ``{u32 magic 0xBA55ED50, u16 version, u16
header size, u64 size of the entries}``, then entries, each ``{u16 kind (1 PTX, 2 cubin),
u16 version, u32 entry header size, u64 payload size, u32 compressed size, u32, u16, u16,
u32 architecture, u32 name offset, u32 name size, u64 flags, u64, u64 uncompressed size}``
followed by its payload.  A program passes the wrapper ``{u32 magic 0x466243B1, u32
version, const void *fatbin, void *}``, which points at the header.

What ``cuLinkComplete`` returns is a fat binary vgpu writes (native/cuda/linker.c): every
input's entries, each entry header lengthened by a link tag ``{u32 "VGLK", u16 input, u16
target architecture}`` at its end, read back as one linked program (``CodeImage.link_inputs``).
"""

from __future__ import annotations

import struct

import lz4.block
import zstandard

from vgpu.images.cubin import read_cubin
from vgpu.images.model import CodeImage, ImageError, ModuleCode
from vgpu.images.ptx import read_ptx

FATBIN_MAGIC = 0xBA55ED50
WRAPPER_MAGIC = 0x466243B1
HEADER = struct.Struct("<IHHQ")
ENTRY = struct.Struct("<HHIQIIHHIIIQQQ")
KIND_PTX, KIND_CUBIN = 1, 2
FLAG_COMPRESSED_LZ4 = 0x2000
FLAG_COMPRESSED_ZSTD = 0x8000
LINK_TAG = struct.Struct("<4sHH")
LINK_MAGIC = b"VGLK"


def is_fatbin(data: bytes) -> bool:
    return len(data) >= HEADER.size and struct.unpack_from("<I", data)[0] == FATBIN_MAGIC


def fatbin_size(data: bytes) -> int:
    """Bytes from the header to the end of the last entry."""
    _magic, _version, header_size, size = HEADER.unpack_from(data)
    return header_size + size


def _payload(data: bytes, flags: int, uncompressed: int) -> bytes:
    if flags & FLAG_COMPRESSED_ZSTD or data[:4] == b"\x28\xb5\x2f\xfd":
        try:
            return zstandard.ZstdDecompressor().decompress(data, max_output_size=max(uncompressed, 1 << 20))
        except zstandard.ZstdError as error:
            raise ImageError(f"fat binary entry does not decompress (zstd): {error}") from None
    if flags & FLAG_COMPRESSED_LZ4:
        try:
            return lz4.block.decompress(data, uncompressed_size=uncompressed)
        except lz4.block.LZ4BlockError as error:
            raise ImageError(f"fat binary entry does not decompress (lz4): {error}") from None
    return data


def read_fatbin(data: bytes) -> CodeImage:
    if not is_fatbin(data):
        raise ImageError("not a fat binary (bad magic)")
    _magic, _version, header_size, size = HEADER.unpack_from(data)
    end = header_size + size
    if end > len(data):
        raise ImageError(f"fat binary claims {end} bytes, {len(data)} given")
    codes: list[ModuleCode] = []
    tags: list[tuple[int, int] | None] = []
    compressed = False
    at = header_size
    while at + ENTRY.size <= end:
        (kind, _ver, entry_header, payload_size, compressed_size, _u1, _u2, _u3, arch, _name_off, _name_size, flags,
         _u4, uncompressed) = ENTRY.unpack_from(data, at)
        if entry_header < ENTRY.size or at + entry_header + payload_size > end:
            raise ImageError(f"fat binary entry at offset {at} runs past the end")
        raw = data[at + entry_header:at + entry_header + payload_size]
        if flags & (FLAG_COMPRESSED_LZ4 | FLAG_COMPRESSED_ZSTD):
            compressed = True
            # the payload is padded to 8 bytes; the compressed stream is the first compressed_size of them
            if 0 < compressed_size <= payload_size:
                raw = raw[:compressed_size]
        if kind == KIND_CUBIN or kind == KIND_PTX:
            payload = _payload(raw, flags, uncompressed)
            code = read_cubin(payload) if kind == KIND_CUBIN else read_ptx(payload)
            code.arch = arch or code.arch
            codes.append(code)
            tag = LINK_TAG.unpack_from(data, at + entry_header - LINK_TAG.size) \
                if entry_header >= ENTRY.size + LINK_TAG.size else None
            tags.append(tag[1:] if tag is not None and tag[0] == LINK_MAGIC else None)
        at += entry_header + payload_size
    if not codes:
        raise ImageError("fat binary holds no cubin and no PTX")
    if all(tag is not None for tag in tags):  # what cuLinkComplete wrote
        return CodeImage("fatbin", codes, compressed, link_inputs=[tag[0] for tag in tags],
                         link_target=tags[0][1])
    return CodeImage("fatbin", codes, compressed)
