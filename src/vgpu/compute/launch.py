"""The launch record compiled kernels read: one C struct, shared by the code generator (field
offsets) and whoever starts a launch (the in-process engine, vgpud's executor).

A kernel's entry point is ``int32_t entry(Launch *launch, uint32_t first_cta, uint32_t count)``:
it runs CTAs [first_cta, first_cta + count) in order and returns 0 or a CUDA error code.
Several threads may run disjoint CTA ranges of one launch at once: ``printf_used`` and
``abort`` are updated atomically.  A cooperative launch runs each CTA on a thread of its own,
all at once (its CTAs wait for each other at grid-wide barriers, through ``grid_barrier``,
which the kernel reads as ``%envreg1:%envreg2``, as the driver hands it over on a GPU).
"""

from __future__ import annotations

import ctypes

#: device printf records: {u64 format address (0: a failed assertion), u32 bytes of arguments,
#: u32 the thread's index in its CTA, u32 ctaid x, y, z, u32 0}, then the arguments; appended
#: while room remains (later ones are dropped, as on a GPU)
PRINTF_RECORD_HEAD = 32
#: bytes of a printf call's argument buffer copied into its record (CUDA's own limit is 32
#: arguments of up to 8 bytes)
PRINTF_ARGS_MAX = 256


class Launch(ctypes.Structure):
    _fields_ = [
        ("params", ctypes.c_uint64),          # the packed kernel parameters
        ("symbols", ctypes.c_uint64),         # u64[]: addresses of the module's .global/.const variables
        ("grid", ctypes.c_uint32 * 3),
        ("block", ctypes.c_uint32 * 3),
        ("dynamic_shared", ctypes.c_uint32),  # bytes of dynamic shared memory per CTA
        ("sm_count", ctypes.c_uint32),        # %nsmid; %smid is the CTA index modulo it
        ("stack_bytes", ctypes.c_uint32),     # local memory per thread (cuCtxSetLimit's stack size)
        ("abort", ctypes.c_uint32),           # set by the first CTA that fails: the others stop
        ("printf_buffer", ctypes.c_uint64),
        ("printf_capacity", ctypes.c_uint64),
        ("printf_used", ctypes.c_uint64),
        ("error_cta", ctypes.c_uint32 * 3),   # where the first failure happened (710, 715, 700)
        ("error_thread", ctypes.c_uint32 * 3),
        ("error_address", ctypes.c_uint64),   # the address of a failed access, when known
        ("grid_barrier", ctypes.c_uint64),    # a cooperative launch's grid barrier (16 zeroed bytes), else 0
    ]


def offset(field: str) -> int:
    return getattr(Launch, field).offset
