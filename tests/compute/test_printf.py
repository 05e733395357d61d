"""Device printf records formatted on the host as CUDA's vprintf lays out their arguments."""

from __future__ import annotations

import struct

from vgpu.compute.launch import PRINTF_RECORD_HEAD
from vgpu.compute.printf import HEAD, format_one, format_records

STRINGS = {0x1000: "fmt", 0x2000: "a string", 0x3000: "kernel.cu", 0x4000: "void k()", 0x5000: "x < 3"}


def read(address: int) -> str:
    return STRINGS[address]


def test_integers_floats_strings_at_their_alignment() -> None:
    # int (4), then a double (8, aligned to 8), then a pointer (8), then long long (8), then char (4)
    args = struct.pack("<i4xdQqi", -7, 2.5, 0x2000, 1 << 40, ord("z"))
    text = format_one("%d %5.2f %s %lld %c|%%", args, read)
    assert text == "-7  2.50 a string 1099511627776 z|%"


def test_unsigned_hex_width_star_and_missing_arguments() -> None:
    args = struct.pack("<IiI", 0xFFFFFFFF, 6, 255)
    assert format_one("%u %*x", args, read) == "4294967295     ff"
    assert format_one("%d %d", struct.pack("<i", 1), read) == "1 0"  # what is not there reads as 0


def test_records_in_order_with_assertion_messages() -> None:
    assert HEAD.size == PRINTF_RECORD_HEAD
    first = HEAD.pack(0x1000, 4, 0, 0, 0, 0, 0) + struct.pack("<i", 5)
    failed = HEAD.pack(0, 32, 37, 2, 1, 0, 0) + struct.pack("<4Q", 0x5000, 0x3000, 12, 0x4000)
    STRINGS[0x1000] = "value %d\n"
    text = format_records(first + failed, (16, 4, 1), read)
    assert text.splitlines() == ["value 5", "kernel.cu:12: void k(): block: [2,1,0], thread: [5,2,0] Assertion `x < 3` failed."]
