"""A module variable's initial bytes, from its PTX initialiser: numbers in the variable's
type, and addresses of other variables (``generic(gvar)+8``) resolved by the caller."""

from __future__ import annotations

import struct
from typing import Callable

from vgpu.compute.ptx.syntax import Symbol, Variable

_FORMATS = {"f32": "<f", "f64": "<d", "f16": "<e"}


def initial_bytes(variable: Variable, address_of: Callable[[str], int]) -> bytes:
    size = variable.element_size
    out = bytearray()
    for value in variable.initializer or []:
        if isinstance(value, tuple) and value and isinstance(value[0], Symbol):
            number = address_of(value[0].name) + (value[1] if len(value) > 1 else 0)
            if len(value) > 2:  # one slice of the address: 0xFF00(generic(a)) is its second byte
                mask = value[2]
                number = (number & mask) >> ((mask & -mask).bit_length() - 1)
            out += (number & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        elif isinstance(value, Symbol):
            out += (address_of(value.name) & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        elif isinstance(value, float) and variable.type in _FORMATS:
            out += struct.pack(_FORMATS[variable.type], value)
        elif isinstance(value, float):
            out += (struct.unpack("<Q", struct.pack("<d", value))[0] if size == 8 else
                    struct.unpack("<I", struct.pack("<f", value))[0]).to_bytes(size, "little")
        else:
            out += (int(value) & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    return bytes(out).ljust(variable.size, b"\0")
