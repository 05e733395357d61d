"""The instructions the lowering itself handles (they touch registers, memory, lanes or
control), by opcode; lane-wise arithmetic comes from the registry instead."""

from __future__ import annotations

from typing import Callable

from llvmlite import ir

from vgpu.compute.lower import control, memory, warp
from vgpu.compute.lower.lanes import WARP, bit_width
from vgpu.compute.lower.registry import TYPES, Unsupported
from vgpu.compute.ptx.syntax import Instruction, Register, VectorOperand


def mov(fl, ins: Instruction) -> None:
    """Copies, addresses of variables and functions, and packing and unpacking of vectors
    (``mov.b64 %rd1, {%r1, %r2}`` and back)."""
    ptx_type = next((m for m in reversed(ins.modifiers) if m in TYPES), None)
    if ptx_type is None:
        raise Unsupported(f"mov.{'.'.join(ins.modifiers)}")
    destination, source = ins.operands[0], ins.operands[1]
    mask = fl.guard_mask(ins)
    b = fl.b
    width = bit_width(ptx_type)
    if isinstance(source, VectorOperand):  # pack: element 0 in the low bits
        part = width // len(source.elements)
        whole = ir.VectorType(ir.IntType(width), WARP)
        value = ir.Constant(whole, [ir.Constant(ir.IntType(width), 0)] * WARP)
        for index, element in enumerate(source.elements):
            piece = b.zext(fl.read(element, f"b{part}"), whole)
            value = b.or_(value, b.shl(piece, fl.lanes.splat(ir.Constant(ir.IntType(width), index * part))))
        fl.write(destination, ptx_type, value, mask)
        return
    if isinstance(destination, VectorOperand):  # unpack
        value = fl.read(source, f"b{width}" if ptx_type != "pred" else "pred")
        part = width // len(destination.elements)
        for index, element in enumerate(destination.elements):
            if isinstance(element, Register):
                shifted = b.lshr(value, fl.lanes.splat(ir.Constant(ir.IntType(width), index * part)))
                fl.write(element, f"b{part}", b.trunc(shifted, ir.VectorType(ir.IntType(part), WARP)), mask)
        return
    fl.write(destination, ptx_type, fl.read(source, ptx_type), mask)


def _nothing(fl, ins: Instruction) -> None:
    """Hints and orderings with no effect on results here: prefetches, cache policies, sleeps,
    programmatic dependent launch (the next kernel starts when this one has ended)."""


def _createpolicy(fl, ins: Instruction) -> None:
    fl.write(ins.operands[0], "b64", fl.lanes.constant("b64", 0), fl.guard_mask(ins))


def _bar(fl, ins: Instruction) -> None:
    if ins.has("warp"):
        warp.warp_barrier(fl, ins)
        return
    raise Unsupported(f"{ins.opcode} outside a block's end")


def _cp(fl, ins: Instruction) -> None:
    if ins.modifiers and ins.modifiers[0] == "async":
        memory.cp_async(fl, ins)
        return
    raise Unsupported(f"cp.{'.'.join(ins.modifiers)}")


HANDLERS: dict[str, Callable] = {
    "mov": mov,
    "ld": memory.ld, "ldu": memory.ld,
    "st": memory.st,
    "atom": memory.atom, "red": memory.atom,
    "cvta": memory.cvta,
    "isspacep": memory.isspacep,
    "cp": _cp,
    "membar": memory.fence, "fence": memory.fence,
    "prefetch": _nothing, "prefetchu": _nothing, "nanosleep": _nothing, "griddepcontrol": _nothing,
    "pmevent": _nothing, "discard": _nothing, "applypriority": _nothing,
    "createpolicy": _createpolicy,
    "call": control.call,
    "shfl": warp.shfl, "vote": warp.vote, "match": warp.match, "redux": warp.redux,
    "activemask": warp.activemask, "elect": warp.elect,
    "bar": _bar,
}

