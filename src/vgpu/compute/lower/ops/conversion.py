"""cvt between every pair of s8..s64, u8..u64, f16, bf16, f32 and f64, with PTX's rounding
(``.rn .rz .rm .rp`` to a float, ``.rni .rzi .rmi .rpi`` to an integer or an integral float),
``.ftz``, ``.sat`` and ``.relu``; the two-source packing forms ``cvt.rn.f16x2.f32`` and
``cvt.rn.bf16x2.f32``; and ``cvt.{rna,rn,rz}.tf32.f32``.

Float to integer conversions always saturate to the destination's range; NaN gives 0, except
from f64 or into a 64-bit integer, where it gives 1 << (bits - 1) (the PTX ISA's rule).
Conversions to a float pass the exact source value to ``fp.round_exact``; a 64-bit integer's
exact value is the sum of its two halves as doubles.
"""

from __future__ import annotations

from llvmlite import ir

from vgpu.compute.lower.lanes import DOUBLE, FLOAT, Lanes, bit_width, element_type, is_signed
from vgpu.compute.lower.ops import fp
from vgpu.compute.lower.ops.common import float_const, int_const, ints, type_modifiers, unsupported
from vgpu.compute.lower.registry import Signature, semantics
from vgpu.compute.ptx.syntax import Instruction

INTEGERS = {"s8", "s16", "s32", "s64", "u8", "u16", "u32", "u64", "b8", "b16", "b32", "b64"}
INTEGRAL_ROUNDINGS = {"rni": "llvm.roundeven", "rzi": "llvm.trunc", "rmi": "llvm.floor", "rpi": "llvm.ceil"}
PACKED = {"f16x2": "f16", "bf16x2": "bf16"}
#: conversions that cannot lose anything
EXACT_WIDENINGS = {("f16", "f32"), ("f16", "f64"), ("bf16", "f32"), ("bf16", "f64"), ("f32", "f64")}


def _types(ins: Instruction) -> tuple[str, str]:
    types = type_modifiers(ins)
    if len(types) != 2:
        raise unsupported(ins, "needs a destination and a source type")
    return types[0], types[1]


def _signature(ins: Instruction) -> Signature:
    for modifier in ("satfinite", "pack"):
        if ins.has(modifier):
            raise unsupported(ins)
    destination, source = _types(ins)
    if destination in PACKED:
        if source != "f32":
            raise unsupported(ins)
        return Signature((destination,), ("f32", "f32"))
    if destination == "tf32":
        if source != "f32":
            raise unsupported(ins)
        return Signature(("b32",), ("f32",))
    for ptx_type in (destination, source):
        if ptx_type not in INTEGERS and ptx_type not in fp.FLOAT_TYPES:
            raise unsupported(ins, f"{ptx_type} conversions")
    return Signature((destination,), (source,))


@semantics("cvt", signature=_signature)
def cvt(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    destination, source = _types(ins)
    if destination in PACKED:  # the first source fills the upper half
        half = PACKED[destination]
        high = convert(lanes, ins, half, "f32", sources[0])
        low = convert(lanes, ins, half, "f32", sources[1])
        return [fp.pack_halves(lanes, low, high, half)]
    if destination == "tf32":
        return [_to_tf32(lanes, ins, sources[0])]
    return [convert(lanes, ins, destination, source, sources[0])]


def convert(lanes: Lanes, ins: Instruction, destination: str, source: str, value: ir.Value) -> ir.Value:
    """One lane value from ``source`` to ``destination`` under the instruction's modifiers."""
    ftz = ins.has("ftz")
    if source in fp.FLOAT_TYPES:
        if ftz and source == "f32":
            value = fp.flush(lanes, value, "f32")
        if destination in INTEGERS:
            return _float_to_integer(lanes, ins, destination, source, value)
        result = _float_to_float(lanes, ins, destination, source, value)
    elif destination in INTEGERS:
        return _integer_to_integer(lanes, ins, destination, source, value)
    else:
        result = _integer_to_float(lanes, ins, destination, source, value)
    if ins.has("relu"):
        negative = lanes.builder.fcmp_ordered("<", fp.widen(lanes, result, destination, FLOAT),
                                              float_const(FLOAT, 0.0))
        result = lanes.builder.select(negative, fp.from_bits(lanes, int_const(fp.WIDTH[destination], 0), destination), result)
    if destination in ("f32", "f16") and source in fp.FLOAT_TYPES:
        result = fp.canonical_nans(lanes, result, destination)
    if ftz and destination == "f32":
        result = fp.flush(lanes, result, "f32")
    if ins.has("sat"):
        result = fp.saturate(lanes, result, destination)
    return result


def _integral_rounding(ins: Instruction) -> str | None:
    return next((m for m in ins.modifiers if m in INTEGRAL_ROUNDINGS), None)


def _float_to_integer(lanes: Lanes, ins: Instruction, destination: str, source: str, value: ir.Value) -> ir.Value:
    b = lanes.builder
    wide = fp.widen(lanes, value, source, DOUBLE if source == "f64" else FLOAT)
    mode = _integral_rounding(ins) or "rzi"
    rounded = lanes.intrinsic(INTEGRAL_ROUNDINGS[mode], wide.type, [wide])
    name = "llvm.fptosi.sat" if is_signed(destination) else "llvm.fptoui.sat"
    bits = bit_width(destination)
    target = ints(bits)
    result = lanes.intrinsic(name, target, [rounded], types=[target, rounded.type])
    if source != "f64" and bits != 64:
        return result  # NaN: 0, as LLVM's saturating conversion gives it
    is_nan = b.fcmp_unordered("uno", rounded, rounded)
    return b.select(is_nan, int_const(bits, 1 << (bits - 1)), result)


def _float_to_float(lanes: Lanes, ins: Instruction, destination: str, source: str, value: ir.Value) -> ir.Value:
    b = lanes.builder
    integral = _integral_rounding(ins)
    if integral is not None:
        if destination != source:
            raise unsupported(ins, "integral rounding between different float types")
        wide = fp.widen(lanes, value, source, DOUBLE if source == "f64" else FLOAT)
        rounded = lanes.intrinsic(INTEGRAL_ROUNDINGS[integral], wide.type, [wide])
        return fp.narrow_rn(lanes, rounded, "f64" if source == "f64" else "f32", destination)  # exact
    if destination == source:
        return value
    if (source, destination) in EXACT_WIDENINGS:
        return fp.widen(lanes, value, source, element_type(destination))
    mode = fp.rounding(ins.modifiers)
    if mode == "rn" and destination in ("f16", "f32") and (source, destination) != ("f64", "f16"):
        # one rounding from a format that holds the value exactly: LLVM's own conversion
        wide = fp.widen(lanes, value, source, DOUBLE if source == "f64" else FLOAT)
        return b.fptrunc(wide, lanes.of(destination)) if wide.type.element != element_type(destination) else wide
    exact = fp.widen(lanes, value, source)
    return fp.round_exact(lanes, exact, float_const(DOUBLE, 0.0), destination, mode)


def _integer_to_float(lanes: Lanes, ins: Instruction, destination: str, source: str, value: ir.Value) -> ir.Value:
    b = lanes.builder
    signed = is_signed(source)
    width = bit_width(source)
    double = lanes.vector(DOUBLE)
    mode = fp.rounding(ins.modifiers)
    if mode == "rn" and destination != "bf16":  # LLVM's conversion rounds once, to nearest even
        return (b.sitofp if signed else b.uitofp)(value, lanes.of(destination))
    if width <= 32:
        exact = (b.sitofp if signed else b.uitofp)(value, double)
        error = float_const(DOUBLE, 0.0)
    else:
        high = (b.ashr if signed else b.lshr)(value, int_const(64, 32))
        high = b.fmul((b.sitofp if signed else b.uitofp)(high, double), float_const(DOUBLE, 2.0 ** 32))
        low = b.uitofp(b.and_(value, int_const(64, 0xFFFFFFFF)), double)
        exact = b.fadd(high, low)
        error = fp.two_sum_error(lanes, high, low, exact)
    return fp.round_exact(lanes, exact, error, destination, mode)


def _integer_to_integer(lanes: Lanes, ins: Instruction, destination: str, source: str, value: ir.Value) -> ir.Value:
    b = lanes.builder
    have, want = bit_width(source), bit_width(destination)
    source_signed = is_signed(source)
    if ins.has("sat"):
        work = 64 if max(have, want) <= 32 else 128
        wide = (b.sext if source_signed else b.zext)(value, ints(work)) if have < work else value
        if is_signed(destination):
            low, high = -(1 << (want - 1)), (1 << (want - 1)) - 1
        else:
            low, high = 0, (1 << want) - 1
        wide = b.select(b.icmp_signed("<", wide, int_const(work, low)), int_const(work, low), wide)
        wide = b.select(b.icmp_signed(">", wide, int_const(work, high)), int_const(work, high), wide)
        return b.trunc(wide, ints(want))
    if want > have:
        return (b.sext if source_signed else b.zext)(value, ints(want))
    if want < have:
        return b.trunc(value, ints(want))
    return value


def _to_tf32(lanes: Lanes, ins: Instruction, value: ir.Value) -> ir.Value:
    """f32 to tf32 (an f32 with 10 mantissa bits, the low 13 zero): .rna rounds half away from
    zero, .rn half to even, .rz truncates; NaN and infinity stay."""
    b = lanes.builder
    raw = b.bitcast(value, ints(32))
    low_mask = int_const(32, 0x1FFF)
    if ins.has("rna"):
        rounded = b.add(raw, int_const(32, 0x1000))
    elif ins.has("rn"):
        lsb = b.and_(b.lshr(raw, int_const(32, 13)), int_const(32, 1))
        rounded = b.add(raw, b.add(int_const(32, 0xFFF), lsb))
    elif ins.has("rz"):
        rounded = raw
    else:
        raise unsupported(ins)
    if ins.has("relu") or ins.has("satfinite"):
        raise unsupported(ins)
    rounded = b.and_(rounded, b.not_(low_mask))
    special = b.icmp_unsigned("==", b.and_(raw, int_const(32, 0x7F800000)), int_const(32, 0x7F800000))
    return b.select(special, raw, rounded)
