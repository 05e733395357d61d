"""vgpud's device memory copies (DeviceMemory.write and read, the copy inside every
host-device transfer) against memcpy between two ordinary buffers in the same run, for
64 MiB and 1 GiB, on memory already touched (the steady state of a transfer loop); and a
zero fill of the same sizes.

    python bench/device_memory_bench.py [--no-gib]
"""

from __future__ import annotations

import argparse
import ctypes
import json

from harness import median_seconds, pin_client

from vgpu.device.memory import DeviceMemory

SIZES = {"64MiB": 64 << 20, "1GiB": 1 << 30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-gib", action="store_true", help="skip 1 GiB")
    args = parser.parse_args()
    pin_client()
    results = {}
    for name, size in SIZES.items():
        if name == "1GiB" and args.no_gib:
            continue
        repeats = max(5, min(50, (2 << 30) // size))
        source, target = ctypes.create_string_buffer(size), ctypes.create_string_buffer(size)
        ctypes.memset(source, 0x5A, size)
        ctypes.memset(target, 0, size)
        memory = DeviceMemory(0)
        allocation = memory.allocate(1, size)
        memory.write(1, allocation.address, source)  # touch every page once
        memcpy = median_seconds(lambda: ctypes.memmove(target, source, size), repeats)
        write = median_seconds(lambda: memory.write(1, allocation.address, source), repeats)
        read = median_seconds(lambda: memory.read(1, allocation.address, size, into=target), repeats)
        zero = median_seconds(lambda: memory.fill(1, allocation.address, b"\0", size), repeats)
        memory.free(1, allocation.address)
        results[name] = {"memcpy_GBps": round(size / memcpy / 1e9, 2),
                         "write_GBps": round(size / write / 1e9, 2), "read_GBps": round(size / read / 1e9, 2),
                         "write_ratio": round(memcpy / write, 3), "read_ratio": round(memcpy / read, 3),
                         "zero_fill_ms": round(zero * 1e3, 3)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
