"""Helpers the instruction families share: lane constants, operand counts and the PTX types
an instruction names."""

from __future__ import annotations

from llvmlite import ir

from vgpu.compute.lower.lanes import WARP, Lanes
from vgpu.compute.lower.registry import TYPES, Unsupported, instruction_type
from vgpu.compute.ptx.syntax import Instruction

__all__ = ["WARP", "Lanes", "Unsupported", "instruction_type", "ints", "int_const", "float_const",
           "type_modifiers", "source_count", "describe", "width_of"]


def ints(width: int) -> ir.VectorType:
    """``<32 x iN>``."""
    return ir.VectorType(ir.IntType(width), WARP)


def int_const(width: int, value: int) -> ir.Constant:
    """``value`` (wrapped to ``width`` bits) in every lane."""
    element = ir.IntType(width)
    return ir.Constant(ints(width), [ir.Constant(element, value & ((1 << width) - 1))] * WARP)


def float_const(element: ir.Type, value: float) -> ir.Constant:
    return ir.Constant(ir.VectorType(element, WARP), [ir.Constant(element, value)] * WARP)


def type_modifiers(ins: Instruction) -> list[str]:
    """The type modifiers of an instruction in source order (``cvt.rn.f32.s32`` -> f32, s32)."""
    return [m for m in ins.modifiers if m in TYPES]


def source_count(ins: Instruction, default: int) -> int:
    """How many sources an instruction has when it is known from its operands (the lowering
    always gives them; a bare instruction built by hand gets ``default``)."""
    if ins.operands:
        return len(ins.operands) - 1
    return default


def describe(ins: Instruction) -> str:
    return ".".join([ins.opcode, *ins.modifiers])


def width_of(ptx_type: str) -> int:
    from vgpu.compute.lower.lanes import bit_width
    return bit_width(ptx_type)


def unsupported(ins: Instruction, why: str = "") -> Unsupported:
    return Unsupported(describe(ins) + (f" ({why})" if why else ""))
