"""Floating-point machinery shared by arithmetic, conversion and comparison: widening any PTX
float type exactly, flushing subnormals, saturating, and rounding an exact result to a narrower
format in any of PTX's rounding modes.

Exact results are carried as a double ``d`` (the nearest double to the exact value) and a
residual ``err`` whose sign says on which side of ``d`` the exact value lies (zero when ``d``
is exact).  Narrowing goes through round-to-odd, which keeps one rounding exact however many
formats the value passes through; directed modes then step the nearest result by one unit in
the last place where the residual says it lies on the wrong side.
"""

from __future__ import annotations

from llvmlite import ir

from vgpu.compute.lower.lanes import DOUBLE, FLOAT, HALF, I1, Lanes, element_type
from vgpu.compute.lower.ops.common import float_const, int_const, ints

FLOAT_TYPES = ("f16", "bf16", "f32", "f64")
WIDTH = {"f16": 16, "bf16": 16, "f32": 32, "f64": 64}
#: exponent field's lowest bit: everything below it in magnitude is subnormal
MANTISSA = {"f16": 10, "bf16": 7, "f32": 23, "f64": 52}
EXPONENT_MASK = {"f16": 0x7C00, "bf16": 0x7F80, "f32": 0x7F800000, "f64": 0x7FF0000000000000}
CANONICAL_NAN = {"f16": 0x7FFF, "bf16": 0x7FFF, "f32": 0x7FFFFFFF, "f64": 0x7FFFFFFFFFFFFFFF}
ROUNDINGS = ("rn", "rz", "rm", "rp")


def rounding(modifiers, default: str = "rn") -> str:
    """The rounding modifier among an instruction's modifiers (``rn`` when none is given)."""
    for modifier in modifiers:
        if modifier in ROUNDINGS:
            return modifier
    return default


def bits(lanes: Lanes, value: ir.Value, ptx_type: str) -> ir.Value:
    """A float lane value's bits as ``<32 x iN>`` (bf16 values already are bits)."""
    if ptx_type == "bf16":
        return value
    return lanes.builder.bitcast(value, ints(WIDTH[ptx_type]))


def from_bits(lanes: Lanes, value: ir.Value, ptx_type: str) -> ir.Value:
    if ptx_type == "bf16":
        return value
    return lanes.builder.bitcast(value, lanes.of(ptx_type))


def widen(lanes: Lanes, value: ir.Value, ptx_type: str, to: ir.Type = DOUBLE) -> ir.Value:
    """A float lane value exactly as float or double."""
    b = lanes.builder
    if ptx_type == "bf16":
        value = b.bitcast(b.shl(b.zext(value, ints(32)), int_const(32, 16)), lanes.vector(FLOAT))
        ptx_type = "f32"
    if element_type(ptx_type) == to:
        return value
    return b.fpext(value, lanes.vector(to))


def f32_to_bf16(lanes: Lanes, value: ir.Value) -> ir.Value:
    """float to bf16 bits, round to nearest even; NaN stays NaN (canonical)."""
    b = lanes.builder
    raw = b.bitcast(value, ints(32))
    lsb = b.and_(b.lshr(raw, int_const(32, 16)), int_const(32, 1))
    rounded = b.lshr(b.add(b.add(raw, int_const(32, 0x7FFF)), lsb), int_const(32, 16))
    is_nan = b.fcmp_unordered("uno", value, value)
    return b.trunc(b.select(is_nan, int_const(32, CANONICAL_NAN["bf16"]), rounded), ints(16))


def narrow_rn(lanes: Lanes, value: ir.Value, source: str, target: str) -> ir.Value:
    """A float lane value in ``target``, rounded to nearest even once (the caller makes sure a
    single rounding is exact: a round-to-odd source, or a format wide enough)."""
    b = lanes.builder
    if target == "bf16":
        return f32_to_bf16(lanes, widen(lanes, value, source, FLOAT) if source != "f32" else value)
    if source == target:
        return value
    if WIDTH[target] > WIDTH[source] or source == "bf16":
        return widen(lanes, value, source, element_type(target))
    return b.fptrunc(value, lanes.of(target))


def _adjust_odd(lanes: Lanes, value_bits: ir.Value, value: ir.Value, residual: ir.Value) -> ir.Value:
    """Round-to-odd from round-to-nearest: where the exact value differs from ``value``
    (``residual`` nonzero, of the sign of exact - value) and the last bit is even, move one
    unit towards the exact value."""
    b = lanes.builder
    width = value_bits.type.element.width
    zero = float_const(residual.type.element, 0.0)
    inexact = b.fcmp_ordered("!=", residual, zero)
    even = b.icmp_unsigned("==", b.and_(value_bits, int_const(width, 1)), int_const(width, 0))
    residual_negative = b.fcmp_ordered("<", residual, zero)
    value_negative = b.icmp_signed("<", value_bits, int_const(width, 0))
    away = b.icmp_unsigned("==", residual_negative, value_negative)  # the exact value is larger in magnitude
    moved = b.select(away, b.add(value_bits, int_const(width, 1)), b.sub(value_bits, int_const(width, 1)))
    return b.select(b.and_(inexact, even), moved, value_bits)


def to_odd(lanes: Lanes, d: ir.Value, err: ir.Value) -> ir.Value:
    """The double nearest to d+err in round-to-odd (d is the nearest-even double)."""
    b = lanes.builder
    raw = b.bitcast(d, ints(64))
    return b.bitcast(_adjust_odd(lanes, raw, d, err), lanes.vector(DOUBLE))


def _odd_float(lanes: Lanes, odd: ir.Value) -> ir.Value:
    """A round-to-odd double to a round-to-odd float."""
    b = lanes.builder
    single = b.fptrunc(odd, lanes.vector(FLOAT))
    residual = b.fsub(odd, b.fpext(single, lanes.vector(DOUBLE)))
    raw = b.bitcast(single, ints(32))
    return b.bitcast(_adjust_odd(lanes, raw, single, residual), lanes.vector(FLOAT))


def round_exact(lanes: Lanes, d: ir.Value, err: ir.Value, target: str, mode: str) -> ir.Value:
    """The exact value d+err rounded to the PTX float type ``target`` with rounding ``mode``."""
    b = lanes.builder
    if target == "f64":
        nearest = d
        residual = err
    else:
        odd = to_odd(lanes, d, err)
        if target == "f32":
            nearest = b.fptrunc(odd, lanes.vector(FLOAT))
        else:
            nearest = narrow_rn(lanes, _odd_float(lanes, odd), "f32", target)
        if mode == "rn":
            return nearest
        difference = b.fsub(d, widen(lanes, nearest, target))
        zero = float_const(DOUBLE, 0.0)
        residual = b.select(b.fcmp_ordered("==", difference, zero), err, difference)
    if mode == "rn":
        return nearest
    return step(lanes, nearest, residual, target, mode)


def step(lanes: Lanes, nearest: ir.Value, residual: ir.Value, ptx_type: str, mode: str) -> ir.Value:
    """Directed rounding from the nearest result: one unit in the last place towards the exact
    value where rounding to nearest went the wrong way for ``mode`` (rz, rm, rp)."""
    b = lanes.builder
    width = WIDTH[ptx_type]
    raw = bits(lanes, nearest, ptx_type)
    sign = int_const(width, 1 << (width - 1))
    one = int_const(width, 1)
    zero = float_const(residual.type.element, 0.0)
    above = b.fcmp_ordered(">", residual, zero)  # exact > nearest
    below = b.fcmp_ordered("<", residual, zero)
    negative = b.icmp_signed("<", raw, int_const(width, 0))
    magnitude_zero = b.icmp_unsigned("==", b.and_(raw, int_const(width, (1 << (width - 1)) - 1)), int_const(width, 0))
    smaller = b.sub(raw, one)
    larger = b.add(raw, one)
    if mode == "rz":
        change = b.and_(b.select(negative, above, below), b.not_(magnitude_zero))
        result = b.select(change, smaller, raw)
    elif mode == "rm":
        down = b.select(negative, larger, b.select(magnitude_zero, b.or_(sign, one), smaller))
        result = b.select(below, down, raw)
    elif mode == "rp":
        up = b.select(negative, b.select(magnitude_zero, one, smaller), larger)
        result = b.select(above, up, raw)
    else:
        raise ValueError(mode)
    return from_bits(lanes, result, ptx_type)


def two_sum_error(lanes: Lanes, x: ir.Value, y: ir.Value, s: ir.Value) -> ir.Value:
    """The exact error of s = x + y (Knuth's TwoSum); NaN where s overflowed."""
    b = lanes.builder
    y_virtual = b.fsub(s, x)
    x_virtual = b.fsub(s, y_virtual)
    return b.fadd(b.fsub(x, x_virtual), b.fsub(y, y_virtual))


def flush(lanes: Lanes, value: ir.Value, ptx_type: str) -> ir.Value:
    """Subnormals to zero of the same sign (``.ftz``)."""
    b = lanes.builder
    width = WIDTH[ptx_type]
    raw = bits(lanes, value, ptx_type)
    exponent = b.and_(raw, int_const(width, EXPONENT_MASK[ptx_type]))
    subnormal = b.icmp_unsigned("==", exponent, int_const(width, 0))
    signed_zero = b.and_(raw, int_const(width, 1 << (width - 1)))
    return from_bits(lanes, b.select(subnormal, signed_zero, raw), ptx_type)


def saturate(lanes: Lanes, value: ir.Value, ptx_type: str) -> ir.Value:
    """``.sat``: clamp to [0.0, 1.0]; NaN and -0.0 become +0.0."""
    b = lanes.builder
    wide = widen(lanes, value, ptx_type, FLOAT) if ptx_type in ("bf16",) else value
    element = wide.type.element
    zero, one = float_const(element, 0.0), float_const(element, 1.0)
    clamped = b.select(b.fcmp_ordered(">", wide, zero),
                       b.select(b.fcmp_ordered("<", wide, one), wide, one), zero)
    if ptx_type == "bf16":
        return f32_to_bf16(lanes, clamped)
    return clamped


def is_nan(lanes: Lanes, value: ir.Value, ptx_type: str) -> ir.Value:
    if ptx_type == "bf16":
        value = widen(lanes, value, "bf16", FLOAT)
    return lanes.builder.fcmp_unordered("uno", value, value)


def canonical_nans(lanes: Lanes, value: ir.Value, ptx_type: str) -> ir.Value:
    """NaN lanes replaced by the canonical NaN.  Done on the bits: LLVM may treat every NaN as
    any other and drop a float select between a NaN constant and a NaN-producing operation."""
    b = lanes.builder
    width = WIDTH[ptx_type]
    raw = bits(lanes, value, ptx_type)
    magnitude = b.and_(raw, int_const(width, (1 << (width - 1)) - 1))
    nan = b.icmp_unsigned(">", magnitude, int_const(width, EXPONENT_MASK[ptx_type]))
    return from_bits(lanes, b.select(nan, int_const(width, CANONICAL_NAN[ptx_type]), raw), ptx_type)


def canonical_nan(lanes: Lanes, ptx_type: str) -> ir.Value:
    return from_bits(lanes, int_const(WIDTH[ptx_type], CANONICAL_NAN[ptx_type]), ptx_type)


def packed_halves(lanes: Lanes, value: ir.Value, half_type: str) -> tuple[ir.Value, ir.Value]:
    """An ``f16x2``/``bf16x2`` register's low and high halves as lane values of ``half_type``."""
    b = lanes.builder
    low = b.trunc(value, ints(16))
    high = b.trunc(b.lshr(value, int_const(32, 16)), ints(16))
    return from_bits(lanes, low, half_type), from_bits(lanes, high, half_type)


def pack_halves(lanes: Lanes, low: ir.Value, high: ir.Value, half_type: str) -> ir.Value:
    b = lanes.builder
    low_bits = b.zext(bits(lanes, low, half_type), ints(32))
    high_bits = b.zext(bits(lanes, high, half_type), ints(32))
    return b.or_(low_bits, b.shl(high_bits, int_const(32, 16)))


__all__ = ["FLOAT_TYPES", "WIDTH", "rounding", "bits", "from_bits", "widen", "f32_to_bf16", "narrow_rn",
           "to_odd", "round_exact", "step", "two_sum_error", "flush", "saturate", "is_nan", "canonical_nan", "canonical_nans",
           "packed_halves", "pack_halves", "HALF", "I1"]
