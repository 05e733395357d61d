"""Integer arithmetic: add sub mul mad (lo, hi, wide, sat) mul24 mad24 sad div rem abs neg
min max, and the carry chain (add.cc addc sub.cc subc mad.cc madc).  The opcodes shared with
floating point (add, sub, mul, mad, div, abs, neg, min, max) are registered here and hand
float types to ``floating``.

Division never faults the host: a zero divisor gives all ones (-1 for div.s) as a GPU does, the remainder of a division by zero is the dividend, and
MIN / -1 wraps to MIN with remainder 0.
"""

from __future__ import annotations

from llvmlite import ir

from vgpu.compute.lower.lanes import Lanes, bit_width, is_signed
from vgpu.compute.lower.ops import floating
from vgpu.compute.lower.ops.common import int_const, ints, source_count, unsupported
from vgpu.compute.lower.registry import Signature, instruction_type, semantics
from vgpu.compute.ptx.syntax import Instruction

INTEGER_TYPES = {"u8", "s8", "b8", "u16", "s16", "b16", "u32", "s32", "b32", "u64", "s64", "b64"}
SOURCES = {"add": 2, "sub": 2, "mul": 2, "mad": 3, "div": 2, "rem": 2, "abs": 1, "neg": 1,
           "min": 2, "max": 2, "mul24": 2, "mad24": 3, "sad": 3, "addc": 2, "subc": 2, "madc": 3}


def wider(ptx_type: str) -> str:
    """``.wide`` results: s32 -> s64."""
    return ptx_type[0] + str(2 * bit_width(ptx_type))


def arithmetic_signature(ins: Instruction) -> Signature:
    ptx_type = instruction_type(ins)
    if floating.is_float_type(ptx_type):
        return floating.float_signature(ins)
    if ptx_type not in INTEGER_TYPES:
        raise unsupported(ins, "operand type")
    count = source_count(ins, SOURCES[ins.opcode])
    if ins.has("wide"):
        if ptx_type[1:] not in ("16", "32"):
            raise unsupported(ins)
        big = wider(ptx_type)
        sources = (ptx_type, ptx_type, big) if ins.opcode == "mad" else (ptx_type, ptx_type)
        return Signature((big,), sources)
    if ins.opcode in ("min", "max") and count != 2:
        raise unsupported(ins, f"{count} sources")
    return Signature((ptx_type,), (ptx_type,) * count)


@semantics("add", "sub", "mul", "mad", "div", "abs", "neg", "min", "max", signature=arithmetic_signature)
def arithmetic(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    """The opcodes both integer and float types have: dispatch on the instruction's type."""
    if floating.is_float_type(instruction_type(ins)):
        return floating.emit_float(lanes, ins, sources)
    return [INTEGER[ins.opcode](lanes, ins, *sources)]


def integer_signature(ins: Instruction) -> Signature:
    ptx_type = instruction_type(ins)
    if ptx_type not in INTEGER_TYPES:
        raise unsupported(ins, "operand type")
    if ins.opcode in ("mul24", "mad24") and ptx_type not in ("u32", "s32"):
        raise unsupported(ins)
    return Signature((ptx_type,), (ptx_type,) * SOURCES[ins.opcode])


@semantics("rem", "mul24", "mad24", "sad", "addc", "subc", "madc", signature=integer_signature)
def integer_only(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    return [INTEGER[ins.opcode](lanes, ins, *sources)]


def _type(ins: Instruction) -> tuple[int, bool]:
    ptx_type = instruction_type(ins)
    return bit_width(ptx_type), is_signed(ptx_type)


def _add(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value) -> ir.Value:
    return _add_with_carry(lanes, ins, a, b, carry_in=False, subtract=False)


def _sub(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value) -> ir.Value:
    return _add_with_carry(lanes, ins, a, b, carry_in=False, subtract=True)


def _addc(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value) -> ir.Value:
    return _add_with_carry(lanes, ins, a, b, carry_in=True, subtract=False)


def _subc(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value) -> ir.Value:
    return _add_with_carry(lanes, ins, a, b, carry_in=True, subtract=True)


def _add_with_carry(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value, carry_in: bool,
                    subtract: bool) -> ir.Value:
    """a + b (+ CF) or a - (b + CF); ``.cc`` writes the carry (borrow for subtraction) out;
    ``.sat`` (s32 only) clamps to the type's range."""
    builder = lanes.builder
    width, signed = _type(ins)
    if ins.has("sat"):
        if not (signed and width == 32) or carry_in or ins.has("cc"):
            raise unsupported(ins)
        name = "llvm.ssub.sat" if subtract else "llvm.sadd.sat"
        return lanes.intrinsic(name, a.type, [a, b])
    if not carry_in and not ins.has("cc"):
        return builder.sub(a, b) if subtract else builder.add(a, b)
    if width not in (32, 64):
        raise unsupported(ins)
    name = "llvm.usub.with.overflow" if subtract else "llvm.uadd.with.overflow"
    pair = ir.LiteralStructType([a.type, ints(1)])
    first = lanes.intrinsic(name, pair, [a, b])
    result = builder.extract_value(first, 0)
    carry = builder.extract_value(first, 1)
    if carry_in:
        second = lanes.intrinsic(name, pair, [result, builder.zext(lanes.carry(), a.type)])
        result = builder.extract_value(second, 0)
        carry = builder.or_(carry, builder.extract_value(second, 1))
    if ins.has("cc"):
        lanes.set_carry(carry)
    return result


def _extended(lanes: Lanes, value: ir.Value, signed: bool, width: int) -> ir.Value:
    return (lanes.builder.sext if signed else lanes.builder.zext)(value, ints(width))


def _product(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value) -> tuple[ir.Value, str]:
    """The product's part the mode names (``lo`` default, ``hi``, ``wide``), and that mode."""
    builder = lanes.builder
    width, signed = _type(ins)
    mode = "hi" if ins.has("hi") else "wide" if ins.has("wide") else "lo"
    if mode == "lo":
        return builder.mul(a, b), mode
    full = builder.mul(_extended(lanes, a, signed, 2 * width), _extended(lanes, b, signed, 2 * width))
    if mode == "wide":
        return full, mode
    return builder.trunc(builder.lshr(full, int_const(2 * width, width)), a.type), mode


def _mul(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value) -> ir.Value:
    return _product(lanes, ins, a, b)[0]


def _mad(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value, c: ir.Value, carry_in: bool = False) -> ir.Value:
    """mad.{lo,hi,wide}; .sat on s32 .hi saturates the addition; mad.cc/madc chain the carry
    through the addition."""
    builder = lanes.builder
    width, signed = _type(ins)
    product, mode = _product(lanes, ins, a, b)
    if ins.has("sat"):
        if not (signed and width == 32 and mode == "hi"):
            raise unsupported(ins)
        return lanes.intrinsic("llvm.sadd.sat", product.type, [product, c])
    if ins.has("cc") or carry_in:
        if mode == "wide":
            raise unsupported(ins)
        return _add_with_carry(lanes, ins, product, c, carry_in=carry_in, subtract=False)
    return builder.add(product, c)


def _madc(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
    return _mad(lanes, ins, a, b, c, carry_in=True)


def _product24(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value) -> ir.Value:
    """The 48-bit product of the low 24 bits of a and b; .hi: bits 47..16, .lo: bits 31..0."""
    builder = lanes.builder
    signed = is_signed(instruction_type(ins))
    shift = int_const(64, 40)
    def low24(value: ir.Value) -> ir.Value:
        wide = builder.zext(value, ints(64))
        return builder.ashr(builder.shl(wide, shift), shift) if signed else builder.and_(wide, int_const(64, 0xFFFFFF))
    product = builder.mul(low24(a), low24(b))
    if ins.has("hi"):
        product = builder.lshr(product, int_const(64, 16))
    return builder.trunc(product, ints(32))


def _mul24(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value) -> ir.Value:
    return _product24(lanes, ins, a, b)


def _mad24(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
    product = _product24(lanes, ins, a, b)
    if ins.has("sat"):
        if not (ins.has("hi") and is_signed(instruction_type(ins))):
            raise unsupported(ins)
        return lanes.intrinsic("llvm.sadd.sat", product.type, [product, c])
    return lanes.builder.add(product, c)


def _sad(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
    builder = lanes.builder
    signed = is_signed(instruction_type(ins))
    less = builder.icmp_signed("<", a, b) if signed else builder.icmp_unsigned("<", a, b)
    difference = builder.select(less, builder.sub(b, a), builder.sub(a, b))
    return builder.add(c, difference)


def _safe_division(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """A divisor that cannot fault (1 where b is 0, or where MIN / -1 would overflow), and the
    masks of those lanes."""
    builder = lanes.builder
    width, signed = _type(ins)
    zero = builder.icmp_unsigned("==", b, int_const(width, 0))
    if signed:
        overflow = builder.and_(builder.icmp_unsigned("==", a, int_const(width, 1 << (width - 1))),
                                builder.icmp_unsigned("==", b, int_const(width, -1)))
    else:
        overflow = ir.Constant(ints(1), [ir.Constant(ir.IntType(1), 0)] * 32)
    safe = builder.select(builder.or_(zero, overflow), int_const(width, 1), b)
    return safe, zero, overflow


def _div(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value) -> ir.Value:
    builder = lanes.builder
    width, signed = _type(ins)
    safe, zero, overflow = _safe_division(lanes, ins, a, b)
    quotient = builder.sdiv(a, safe) if signed else builder.udiv(a, safe)  # MIN / 1 = MIN for MIN / -1
    return builder.select(zero, int_const(width, -1), quotient)


def _rem(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value) -> ir.Value:
    builder = lanes.builder
    width, signed = _type(ins)
    safe, zero, overflow = _safe_division(lanes, ins, a, b)
    remainder = builder.srem(a, safe) if signed else builder.urem(a, safe)
    remainder = builder.select(overflow, int_const(width, 0), remainder)
    return builder.select(zero, a, remainder)


def _abs(lanes: Lanes, ins: Instruction, a: ir.Value) -> ir.Value:
    width, signed = _type(ins)
    if not signed:
        raise unsupported(ins)
    return lanes.intrinsic("llvm.abs", a.type, [a, ir.Constant(ir.IntType(1), 0)], types=[a.type])


def _neg(lanes: Lanes, ins: Instruction, a: ir.Value) -> ir.Value:
    return lanes.builder.neg(a)


def _min_max(lanes: Lanes, ins: Instruction, a: ir.Value, b: ir.Value) -> ir.Value:
    width, signed = _type(ins)
    name = ("llvm.smin" if ins.opcode == "min" else "llvm.smax") if signed else \
        ("llvm.umin" if ins.opcode == "min" else "llvm.umax")
    result = lanes.intrinsic(name, a.type, [a, b])
    if ins.has("relu"):
        if not signed:
            raise unsupported(ins)
        result = lanes.intrinsic("llvm.smax", a.type, [result, int_const(width, 0)])
    return result


INTEGER = {"add": _add, "sub": _sub, "addc": _addc, "subc": _subc, "mul": _mul, "mad": _mad, "madc": _madc,
           "mul24": _mul24, "mad24": _mad24, "sad": _sad, "div": _div, "rem": _rem, "abs": _abs, "neg": _neg,
           "min": _min_max, "max": _min_max}
