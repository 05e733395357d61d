"""What each lane-wise PTX instruction computes, by opcode.

A family module in ``vgpu.compute.lower.ops`` registers each opcode it knows with
``@semantics("add", "sub")``: a ``signature`` function says the PTX type of every destination
and source operand for a given instruction (its modifiers decide: ``cvt.f32.s32`` reads an
s32 and writes an f32), and ``emit`` computes the destinations from the sources.  The
lowering reads registers and immediates into those types (``lanes`` lists the LLVM types),
applies ``!`` to negated predicates, and writes the results back, truncating or extending to
the destination registers' widths as PTX's operand-size rules say; handlers never touch
registers or memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from llvmlite import ir

from vgpu.compute.lower.lanes import Lanes
from vgpu.compute.ptx.syntax import Instruction


class Unsupported(NotImplementedError):
    """An instruction (or a modifier of it) the engine cannot compute: the kernel is reported
    as not computed, with this message as the reason."""


@dataclass(frozen=True)
class Signature:
    """PTX types of an instruction's operands, in operand order: destinations first
    (``setp``'s ``p|q`` counts as two destinations), then sources."""

    destinations: tuple[str, ...]
    sources: tuple[str, ...]


SignatureOf = Callable[[Instruction], Signature]
Emit = Callable[[Lanes, Instruction, list[ir.Value]], list[ir.Value]]


@dataclass(frozen=True)
class OpSemantics:
    signature: SignatureOf
    emit: Emit


SEMANTICS: dict[str, OpSemantics] = {}


def semantics(*opcodes: str, signature: SignatureOf) -> Callable[[Emit], Emit]:
    """Register ``emit`` for ``opcodes``; a second registration of an opcode is a mistake."""

    def register(emit: Emit) -> Emit:
        for opcode in opcodes:
            if opcode in SEMANTICS:
                raise ValueError(f"PTX opcode {opcode!r} has semantics twice")
            SEMANTICS[opcode] = OpSemantics(signature, emit)
        return emit

    return register


def instruction_type(ins: Instruction) -> str:
    """The last type modifier: the operation's type for most instructions (``add.s32``)."""
    for modifier in reversed(ins.modifiers):
        if modifier in TYPES:
            return modifier
    raise Unsupported(f"{ins.opcode}.{'.'.join(ins.modifiers)}: no operand type")


TYPES = frozenset({"pred", "b8", "u8", "s8", "b16", "u16", "s16", "f16", "bf16", "b32", "u32", "s32",
                   "f32", "f16x2", "bf16x2", "tf32", "b64", "u64", "s64", "f64", "b128",
                   "e4m3", "e5m2", "e4m3x2", "e5m2x2"})
