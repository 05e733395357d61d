"""Device ``printf`` and failed ``assert`` output, formatted on the host from the records
kernels file (``launch.PRINTF_RECORD_HEAD``): a GPU prints them at the next synchronisation.

Arguments sit in the record as CUDA's ``vprintf`` lays them out: each at its own alignment,
integers as ``int`` unless a length modifier says 64 bits, floating-point values as
``double``, strings and pointers as 64-bit addresses.
"""

from __future__ import annotations

import re
import struct
from typing import Callable, Sequence

from vgpu.compute.launch import PRINTF_RECORD_HEAD

HEAD = struct.Struct("<QII3II")
assert HEAD.size == PRINTF_RECORD_HEAD
_SPEC = re.compile(r"%([-+ #0]*)(\*|\d+)?(?:\.(\*|\d+))?(hh|h|ll|l|j|z|t|L)?([diouxXeEfFgGaAcspn%])")

ReadString = Callable[[int], str]


def format_records(raw: bytes, block: Sequence[int], read_string: ReadString) -> str:
    out = []
    at = 0
    while at + HEAD.size <= len(raw):
        fmt, size, linear, cx, cy, cz, _ = HEAD.unpack_from(raw, at)
        args = raw[at + HEAD.size:at + HEAD.size + size]
        at += HEAD.size + size
        if fmt == 0:
            message, file, line, function = struct.unpack_from("<4Q", args)
            x, y = block[0], block[1]
            thread = (linear % x, linear // x % y, linear // (x * y))
            out.append(f"{read_string(file)}:{line}: {read_string(function)}: block: [{cx},{cy},{cz}], "
                       f"thread: [{thread[0]},{thread[1]},{thread[2]}] Assertion `{read_string(message)}` failed.\n")
        else:
            out.append(format_one(read_string(fmt), args, read_string))
    return "".join(out)


def format_one(fmt: str, args: bytes, read_string: ReadString) -> str:
    """One printf call, C's conversions over CUDA's argument buffer."""
    cursor = [0]

    def take(size: int, code: str) -> int | float:
        start = (cursor[0] + size - 1) // size * size
        cursor[0] = start + size
        if start + size > len(args):
            return 0
        return struct.unpack_from(code, args, start)[0]

    def convert(match: re.Match) -> str:
        flags, width, precision, length, conversion = match.groups()
        if conversion == "%":
            return "%"
        if width == "*":
            width = str(take(4, "<i"))
        if precision == "*":
            precision = str(take(4, "<i"))
        spec = "%" + flags + (width or "") + (f".{precision}" if precision is not None else "")
        wide = length in ("l", "ll", "j", "z", "t")
        if conversion in "di":
            return (spec + "d") % take(8 if wide else 4, "<q" if wide else "<i")
        if conversion in "ouxX":
            return (spec + conversion.replace("u", "d")) % take(8 if wide else 4, "<Q" if wide else "<I")
        if conversion == "c":
            return (spec + "c") % chr(take(4, "<i") & 0xFF)
        if conversion in "eEfFgG":
            return (spec + conversion) % take(8, "<d")
        if conversion in "aA":
            text = float(take(8, "<d")).hex()
            return (spec.replace(".", "") + "s") % (text.upper() if conversion == "A" else text)
        if conversion == "s":
            address = take(8, "<Q")
            return (spec + "s") % (read_string(address) if address else "(null)")
        if conversion == "p":
            return (spec + "s") % hex(take(8, "<Q"))
        return ""  # %n writes nothing on a GPU

    return _SPEC.sub(convert, fmt)
