"""What the driver computes about a kernel on a device without running it: its attributes,
how many of its blocks fit on a multiprocessor (the occupancy calculator's rules), and how
long a launch takes in the simulator's cost model.

``attrs`` is the device's attribute table (vgpu.device.cuda_attributes), so the limits are
the profile's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from vgpu.images import Kernel

WARP = 32
#: registers are given to warps in units of this many
REGISTER_UNIT = 256
#: shared memory is given to blocks in units of this many bytes
SHARED_UNIT = 128
#: dynamic shared memory a kernel may use without cuFuncSetAttribute
DEFAULT_SHARED_LIMIT = 48 << 10
#: the cost model: a kernel's fixed cost on the GPU, and the time one full wave of resident
#: blocks takes at the profile's top clock (kernels are not computed: these are nominal)
KERNEL_FIXED_SECONDS = 2e-6
WAVE_SECONDS = 4e-6
REFERENCE_CLOCK_MHZ = 1980


@dataclass
class FunctionState:
    """A loaded kernel on one device, with what cuFuncSetAttribute changed."""

    kernel: Kernel
    attrs: dict[str, int]
    max_dynamic_shared: int = -1
    preferred_carveout: int = -1
    cluster_size_must_be_set: int = 0
    non_portable_cluster_size_allowed: int = 0

    def __post_init__(self) -> None:
        if self.max_dynamic_shared < 0:
            self.max_dynamic_shared = max(0, DEFAULT_SHARED_LIMIT - self.kernel.shared_bytes)

    @property
    def max_threads_per_block(self) -> int:
        """What CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK reports: the device's limit, the
        kernel's launch bounds, and what its registers allow."""
        limit = self.attrs["MAX_THREADS_PER_BLOCK"]
        if self.kernel.max_threads:
            limit = min(limit, self.kernel.max_threads)
        per_warp = _registers_per_warp(self.kernel.registers)
        if per_warp:
            limit = min(limit, self.attrs["MAX_REGISTERS_PER_BLOCK"] // per_warp * WARP)
        return limit

    @property
    def max_shared_optin(self) -> int:
        return self.attrs.get("MAX_SHARED_MEMORY_PER_BLOCK_OPTIN", DEFAULT_SHARED_LIMIT) - self.kernel.shared_bytes


def _registers_per_warp(registers: int) -> int:
    return math.ceil(registers * WARP / REGISTER_UNIT) * REGISTER_UNIT if registers else 0


def blocks_per_multiprocessor(function: FunctionState, block_threads: int, dynamic_shared: int) -> int:
    """cuOccupancyMaxActiveBlocksPerMultiprocessor: the smallest of the limits set by warps,
    blocks, registers and shared memory per multiprocessor; 0 when one block does not fit.
    As on a real H200, the kernel's launch bounds are not applied (only the device's limit)."""
    attrs = function.attrs
    if block_threads <= 0 or block_threads > attrs["MAX_THREADS_PER_BLOCK"]:
        return 0
    warps = math.ceil(block_threads / WARP)
    limits = [attrs["MAX_THREADS_PER_MULTIPROCESSOR"] // WARP // warps, attrs["MAX_BLOCKS_PER_MULTIPROCESSOR"]]
    per_warp = _registers_per_warp(function.kernel.registers)
    if per_warp:
        limits.append(attrs["MAX_REGISTERS_PER_MULTIPROCESSOR"] // (per_warp * warps))
    shared = function.kernel.shared_bytes + dynamic_shared
    if shared:
        per_block = math.ceil((shared + attrs.get("RESERVED_SHARED_MEMORY_PER_BLOCK", 0)) / SHARED_UNIT) * SHARED_UNIT
        limits.append(attrs["MAX_SHARED_MEMORY_PER_MULTIPROCESSOR"] // per_block)
    return max(0, min(limits))


def max_potential_block_size(function: FunctionState, dynamic_shared_of: Callable[[int], int],
                             block_size_limit: int) -> tuple[int, int]:
    """cuOccupancyMaxPotentialBlockSize: the block size (a multiple of the warp) with the most
    resident threads per multiprocessor, the largest such on ties; and the grid size that
    fills the device with it."""
    ceiling = function.max_threads_per_block
    if block_size_limit > 0:
        ceiling = min(ceiling, block_size_limit)
    best_threads, best_block, best_blocks = 0, 0, 0
    for block in range(WARP, ceiling + 1, WARP):
        blocks = blocks_per_multiprocessor(function, block, dynamic_shared_of(block))
        if blocks * block >= best_threads and blocks:
            best_threads, best_block, best_blocks = blocks * block, block, blocks
    return best_blocks * function.attrs["MULTIPROCESSOR_COUNT"], best_block


def launch_seconds(function: FunctionState, blocks: int, block_threads: int, dynamic_shared: int,
                   multiprocessors: int | None = None) -> float:
    """The modelled duration of a launch: a fixed cost, plus one wave time for each time the
    device (or the ``multiprocessors`` a green context has of it) fills with resident blocks,
    scaled by the profile's clock."""
    resident = max(1, blocks_per_multiprocessor(function, block_threads, dynamic_shared)) * \
        (multiprocessors or function.attrs["MULTIPROCESSOR_COUNT"])
    waves = math.ceil(blocks / resident)
    clock = function.attrs.get("CLOCK_RATE", REFERENCE_CLOCK_MHZ * 1000) / 1000
    return KERNEL_FIXED_SECONDS + waves * WAVE_SECONDS * REFERENCE_CLOCK_MHZ / max(clock, 1)
