"""Any image the driver's loading functions accept, recognised by its first bytes."""

from __future__ import annotations

import struct

from vgpu.images.cubin import is_cubin, read_cubin
from vgpu.images.fatbin import WRAPPER_MAGIC, fatbin_size, is_fatbin, read_fatbin
from vgpu.images.model import CodeImage, ImageError
from vgpu.images.ptx import is_ptx, read_ptx


def read_image(data: bytes) -> CodeImage:
    """A fat binary, a cubin or PTX text; ImageError for anything else."""
    if is_fatbin(data):
        return read_fatbin(data)
    if is_cubin(data):
        return CodeImage("cubin", [read_cubin(data)])
    if len(data) >= 4 and struct.unpack_from("<I", data)[0] == WRAPPER_MAGIC:
        raise ImageError("a fat binary wrapper must be resolved by the client (it holds a pointer)")
    if is_ptx(data):
        return CodeImage("ptx", [read_ptx(data)])
    raise ImageError("not a fat binary, cubin or PTX image")


def image_size(data: bytes) -> int:
    """How many bytes of ``data`` the image takes (what the shim computes before sending it)."""
    if is_fatbin(data):
        return fatbin_size(data)
    end = data.find(b"\0")
    return len(data) if end < 0 else end + 1
