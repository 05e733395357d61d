"""Floating-point arithmetic for f16, bf16, f32, f64 and the packed f16x2/bf16x2: add, sub, mul,
fma, mad, div, rcp, sqrt, rsqrt, the ``.approx`` functions (sin, cos, lg2, ex2, tanh), abs,
neg, min, max, copysign and testp.

Round-to-nearest f32/f64 (and f16 except fma) map onto LLVM's own operations, which round
once.  Other rounding modes, bf16 and f16 fma compute the exact result as a double and its
residual and round it with ``fp.round_exact``.  ``.approx`` functions compute libm-quality
results, which lie within PTX's documented error bounds.  NaN results in f32, f16 and bf16
are the GPU's single canonical NaN (0x7FFFFFFF, 0x7FFF); f64 NaNs are left as the host makes them.
"""

from __future__ import annotations

from llvmlite import ir

from vgpu.compute.lower.lanes import DOUBLE, FLOAT, Lanes, element_type
from vgpu.compute.lower.ops import fp
from vgpu.compute.lower.ops.common import Unsupported, float_const, int_const, ints, source_count, unsupported
from vgpu.compute.lower.registry import Signature, semantics, instruction_type
from vgpu.compute.ptx.syntax import Instruction

PACKED = {"f16x2": "f16", "bf16x2": "bf16"}
SOURCES = {"add": 2, "sub": 2, "mul": 2, "fma": 3, "mad": 3, "div": 2, "rcp": 1, "sqrt": 1,
           "rsqrt": 1, "sin": 1, "cos": 1, "lg2": 1, "ex2": 1, "tanh": 1, "abs": 1, "neg": 1,
           "min": 2, "max": 2, "copysign": 2}
#: what each opcode accepts beyond f32/f64
HALF_OPS = {"add", "sub", "mul", "fma", "abs", "neg", "min", "max", "ex2", "tanh"}
APPROX_FUNCTIONS = {"sin": "llvm.sin", "cos": "llvm.cos", "lg2": "llvm.log2", "ex2": "llvm.exp2",
                    "tanh": "llvm.tanh"}


def float_signature(ins: Instruction) -> Signature:
    ptx_type = instruction_type(ins)
    count = source_count(ins, SOURCES[ins.opcode])
    if ins.opcode in ("min", "max") and count not in (2, 3):
        raise unsupported(ins, f"{count} sources")
    return Signature((ptx_type,), (ptx_type,) * count)


def emit_float(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    """Lane-wise float arithmetic; packed types compute on each half."""
    ptx_type = instruction_type(ins)
    op = ins.opcode
    if ptx_type in PACKED:
        half = PACKED[ptx_type]
        _check(ins, half)
        halves = [fp.packed_halves(lanes, value, half) for value in sources]
        low = _scalar(lanes, ins, op, half, [h[0] for h in halves])
        high = _scalar(lanes, ins, op, half, [h[1] for h in halves])
        return [fp.pack_halves(lanes, low, high, half)]
    _check(ins, ptx_type)
    return [_scalar(lanes, ins, op, ptx_type, sources)]


def _check(ins: Instruction, ptx_type: str) -> None:
    if ptx_type not in fp.FLOAT_TYPES:
        raise unsupported(ins, "operand type")
    if ptx_type in ("f16", "bf16") and ins.opcode not in HALF_OPS:
        raise unsupported(ins, f"{ins.opcode} on {ptx_type}")
    for modifier in ("xorsign", "oob", "satfinite"):
        if ins.has(modifier):
            raise unsupported(ins)


def _scalar(lanes: Lanes, ins: Instruction, op: str, ptx_type: str, sources: list[ir.Value]) -> ir.Value:
    ftz = ins.has("ftz") and ptx_type != "bf16"
    if ftz:
        sources = [fp.flush(lanes, value, ptx_type) for value in sources]
    if op in ("abs", "neg"):
        return _sign_op(lanes, op, ptx_type, sources[0])
    if op == "copysign":
        return _copysign(lanes, ptx_type, *sources)
    if op in ("min", "max"):
        result = _min_max(lanes, ins, op, ptx_type, sources)
    elif op in APPROX_FUNCTIONS or op == "rsqrt" or ins.has("approx") or ins.has("full"):
        result = _approximate(lanes, ins, op, ptx_type, sources)
    else:
        result = _rounded(lanes, ins, op, ptx_type, sources)
    if ptx_type in ("f32", "f16"):  # a GPU has one NaN in these formats (bf16's is made canonical too)
        result = fp.canonical_nans(lanes, result, ptx_type)
    if ins.has("relu"):
        negative = lanes.builder.fcmp_ordered("<", fp.widen(lanes, result, ptx_type, FLOAT)
                                              if ptx_type == "bf16" else result,
                                              float_const(FLOAT if ptx_type == "bf16" else result.type.element, 0.0))
        result = lanes.builder.select(negative, fp.from_bits(lanes, int_const(fp.WIDTH[ptx_type], 0), ptx_type), result)
    if ftz:
        result = fp.flush(lanes, result, ptx_type)
    if ins.has("sat"):
        result = fp.saturate(lanes, result, ptx_type)
    return result


def _sign_op(lanes: Lanes, op: str, ptx_type: str, value: ir.Value) -> ir.Value:
    b = lanes.builder
    width = fp.WIDTH[ptx_type]
    raw = fp.bits(lanes, value, ptx_type)
    sign = int_const(width, 1 << (width - 1))
    result = b.and_(raw, int_const(width, (1 << (width - 1)) - 1)) if op == "abs" else b.xor(raw, sign)
    return fp.from_bits(lanes, result, ptx_type)


def _copysign(lanes: Lanes, ptx_type: str, sign_source: ir.Value, magnitude_source: ir.Value) -> ir.Value:
    """PTX's copysign takes the sign of its first source and the magnitude of its second."""
    b = lanes.builder
    width = fp.WIDTH[ptx_type]
    sign = int_const(width, 1 << (width - 1))
    magnitude = b.and_(fp.bits(lanes, magnitude_source, ptx_type), int_const(width, (1 << (width - 1)) - 1))
    return fp.from_bits(lanes, b.or_(magnitude, b.and_(fp.bits(lanes, sign_source, ptx_type), sign)), ptx_type)


def _min_max(lanes: Lanes, ins: Instruction, op: str, ptx_type: str, sources: list[ir.Value]) -> ir.Value:
    """min/max: -0.0 below +0.0; a NaN operand loses to a number (``.NaN``: wins); two NaNs (or
    a NaN under ``.NaN``) give the canonical NaN."""
    values = [fp.widen(lanes, v, "bf16", FLOAT) for v in sources] if ptx_type == "bf16" else list(sources)
    name = ("llvm.minimum" if op == "min" else "llvm.maximum") if ins.has("NaN") else \
        ("llvm.minimumnum" if op == "min" else "llvm.maximumnum")
    result = values[0]
    for value in values[1:]:
        result = lanes.intrinsic(name, result.type, [result, value])
    result = fp.canonical_nans(lanes, result, "f32" if ptx_type == "bf16" else ptx_type)
    if ptx_type == "bf16":
        return fp.f32_to_bf16(lanes, result)
    return result


def _approximate(lanes: Lanes, ins: Instruction, op: str, ptx_type: str, sources: list[ir.Value]) -> ir.Value:
    b = lanes.builder
    if ptx_type == "f64" and op not in ("rcp", "rsqrt", "sqrt", "div"):
        raise unsupported(ins, "no f64 form")
    if ptx_type == "f64" and ins.has("ftz"):  # rcp/rsqrt.approx.ftz.f64 flush f64 subnormals too
        sources = [fp.flush(lanes, value, "f64") for value in sources]
    wide_type = DOUBLE if ptx_type == "f64" or op == "rsqrt" else FLOAT
    values = [fp.widen(lanes, value, ptx_type, wide_type) for value in sources]
    one = float_const(wide_type, 1.0)
    if op == "div":
        dividend, divisor = values
        result = b.fdiv(dividend, divisor)
        if ins.has("approx") and ptx_type == "f32":
            # d = a * (1/b): for 2^126 < |b| < 2^128 the reciprocal underflows (infinity / b is NaN)
            magnitude = lanes.intrinsic("llvm.fabs", divisor.type, [divisor])
            huge = b.and_(b.fcmp_ordered(">", magnitude, float_const(FLOAT, 2.0 ** 126)),
                          b.fcmp_ordered("<", magnitude, float_const(FLOAT, float("inf"))))
            infinite = b.fcmp_ordered("==", lanes.intrinsic("llvm.fabs", dividend.type, [dividend]),
                                      float_const(FLOAT, float("inf")))
            underflowed = b.select(infinite, fp.canonical_nan(lanes, "f32"),
                                   b.fmul(dividend, float_const(FLOAT, 0.0)))
            result = b.select(huge, underflowed, result)
    elif op == "rcp":
        result = b.fdiv(one, values[0])
    elif op == "sqrt":
        result = lanes.intrinsic("llvm.sqrt", values[0].type, values)
    elif op == "rsqrt":
        result = b.fdiv(one, lanes.intrinsic("llvm.sqrt", values[0].type, values))
    elif op in APPROX_FUNCTIONS:
        result = lanes.intrinsic(APPROX_FUNCTIONS[op], values[0].type, values)
    else:
        raise unsupported(ins)
    if ptx_type == "f64":
        if ins.has("ftz"):
            result = fp.flush(lanes, result, "f64")
        return result
    if result.type.element == DOUBLE:
        result = b.fptrunc(result, lanes.vector(FLOAT))
    return fp.narrow_rn(lanes, result, "f32", ptx_type)


def _rounded(lanes: Lanes, ins: Instruction, op: str, ptx_type: str, sources: list[ir.Value]) -> ir.Value:
    """add sub mul fma mad div rcp sqrt, correctly rounded in the instruction's rounding mode."""
    b = lanes.builder
    mode = fp.rounding(ins.modifiers)
    if op == "mad":  # mad with a rounding mode is fma; sm_1x's unrounded mad.f32 is gone
        op = "fma"
    if op not in ("add", "sub", "mul", "fma", "div", "rcp", "sqrt"):
        raise unsupported(ins)
    native = mode == "rn" and (ptx_type in ("f32", "f64") or (ptx_type == "f16" and op != "fma"))
    if native:
        vector_type = sources[0].type
        if op == "add":
            return b.fadd(*sources)
        if op == "sub":
            return b.fsub(*sources)
        if op == "mul":
            return b.fmul(*sources)
        if op == "fma":
            return lanes.intrinsic("llvm.fma", vector_type, sources)
        if op == "div":
            return b.fdiv(*sources)
        if op == "rcp":
            return b.fdiv(float_const(vector_type.element, 1.0), sources[0])
        return lanes.intrinsic("llvm.sqrt", vector_type, sources)
    if ptx_type == "f64":
        x = sources
    else:
        x = [fp.widen(lanes, value, ptx_type) for value in sources]
    zero = float_const(DOUBLE, 0.0)
    addends = None
    if op in ("add", "sub"):
        y = x[1] if op == "add" else b.fneg(x[1])
        d = b.fadd(x[0], y)
        err = fp.two_sum_error(lanes, x[0], y, d)
        if ptx_type == "f64":  # an overflow: the exact sum is finite, below infinity in magnitude
            err = b.select(_overflowed(lanes, d, [x[0], y]), b.fneg(d), err)
        addends = (x[0], y)
    elif op == "mul":
        d = b.fmul(x[0], x[1])
        if ptx_type == "f64":  # scaled where the error could fall below the subnormals
            tiny = _tiny(lanes, d)
            first, product = _scaled(lanes, tiny, x[0], 128), _scaled(lanes, tiny, d, 128)
            err = lanes.intrinsic("llvm.fma", d.type, [first, x[1], b.fneg(product)])
            # a product that underflowed to zero lies on the side of its sign
            one = float_const(DOUBLE, 1.0)
            sign = b.fmul(lanes.intrinsic("llvm.copysign", d.type, [one, x[0]]),
                          lanes.intrinsic("llvm.copysign", d.type, [one, x[1]]))
            nonzero = b.and_(b.fcmp_ordered("!=", x[0], zero), b.fcmp_ordered("!=", x[1], zero))
            err = b.select(b.and_(b.fcmp_ordered("==", d, zero), nonzero), sign, err)
        else:
            err = zero
    elif op == "fma":
        if ptx_type == "f64":
            raise unsupported(ins, "directed rounding of an f64 fma")
        product = b.fmul(x[0], x[1])  # exact: at most 48 significant bits
        d = b.fadd(product, x[2])
        err = fp.two_sum_error(lanes, product, x[2], d)
        addends = (product, x[2])
    elif op in ("div", "rcp"):
        dividend, divisor = (x[0], x[1]) if op == "div" else (float_const(DOUBLE, 1.0), x[0])
        d = b.fdiv(dividend, divisor)
        tiny = b.or_(_tiny(lanes, d), _tiny(lanes, dividend))
        remainder = lanes.intrinsic("llvm.fma", d.type, [b.fneg(_scaled(lanes, tiny, d, 128)), divisor,
                                                         _scaled(lanes, tiny, dividend, 128)])
        err = b.select(b.fcmp_ordered("<", divisor, zero), b.fneg(remainder), remainder)
    else:
        d = lanes.intrinsic("llvm.sqrt", x[0].type, [x[0]])
        tiny = _tiny(lanes, x[0])
        root = _scaled(lanes, tiny, d, 64)
        err = lanes.intrinsic("llvm.fma", d.type, [b.fneg(root), root, _scaled(lanes, tiny, x[0], 128)])
    result = fp.round_exact(lanes, d, err, ptx_type, mode)
    if mode == "rm" and addends is not None:
        # an exact zero sum is -0 when rounding down, unless both addends are +0
        both_positive_zero = b.and_(_is_positive_zero(lanes, addends[0]), _is_positive_zero(lanes, addends[1]))
        exact_zero = b.fcmp_ordered("==", d, zero)
        negative_zero = fp.from_bits(lanes, int_const(fp.WIDTH[ptx_type], 1 << (fp.WIDTH[ptx_type] - 1)), ptx_type)
        result = b.select(b.and_(exact_zero, b.not_(both_positive_zero)), negative_zero, result)
    return result


def _tiny(lanes: Lanes, value: ir.Value) -> ir.Value:
    """Lanes whose double is so small that an error term next to it could underflow."""
    magnitude = lanes.intrinsic("llvm.fabs", value.type, [value])
    return lanes.builder.fcmp_ordered("<", magnitude, float_const(DOUBLE, 2.0 ** -900))


def _scaled(lanes: Lanes, tiny: ir.Value, value: ir.Value, exponent: int) -> ir.Value:
    """value * 2^exponent in the tiny lanes (exact there), value elsewhere."""
    return lanes.builder.select(tiny, lanes.builder.fmul(value, float_const(DOUBLE, 2.0 ** exponent)), value)


def _overflowed(lanes: Lanes, result: ir.Value, operands: list[ir.Value]) -> ir.Value:
    b = lanes.builder
    infinity = float_const(DOUBLE, float("inf"))
    overflow = b.fcmp_ordered("==", lanes.intrinsic("llvm.fabs", result.type, [result]), infinity)
    for operand in operands:
        overflow = b.and_(overflow, b.fcmp_ordered("<", lanes.intrinsic("llvm.fabs", operand.type, [operand]), infinity))
    return overflow


def _is_positive_zero(lanes: Lanes, value: ir.Value) -> ir.Value:
    return lanes.builder.icmp_unsigned("==", lanes.builder.bitcast(value, ints(64)), int_const(64, 0))


def testp_signature(ins: Instruction) -> Signature:
    return Signature(("pred",), (instruction_type(ins),))


TESTS = ("finite", "infinite", "number", "notanumber", "normal", "subnormal")


@semantics("testp", signature=testp_signature)
def testp(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    """testp.{finite,infinite,number,notanumber,normal,subnormal}.{f32,f64}."""
    b = lanes.builder
    ptx_type = instruction_type(ins)
    test = next((m for m in ins.modifiers if m in TESTS), None)
    if ptx_type not in ("f32", "f64") or test is None:
        raise unsupported(ins)
    width = fp.WIDTH[ptx_type]
    raw = fp.bits(lanes, sources[0], ptx_type)
    exponent_mask = int_const(width, fp.EXPONENT_MASK[ptx_type])
    exponent = b.and_(raw, exponent_mask)
    mantissa = b.and_(raw, int_const(width, (1 << fp.MANTISSA[ptx_type]) - 1))
    all_ones = b.icmp_unsigned("==", exponent, exponent_mask)
    zero_exponent = b.icmp_unsigned("==", exponent, int_const(width, 0))
    zero_mantissa = b.icmp_unsigned("==", mantissa, int_const(width, 0))
    nan = b.and_(all_ones, b.not_(zero_mantissa))
    result = {
        "finite": lambda: b.not_(all_ones),
        "infinite": lambda: b.and_(all_ones, zero_mantissa),
        "number": lambda: b.not_(nan),
        "notanumber": lambda: nan,
        "normal": lambda: b.not_(b.or_(all_ones, zero_exponent)),
        "subnormal": lambda: b.and_(zero_exponent, b.not_(zero_mantissa)),
    }[test]()
    return [result]


@semantics("fma", "rcp", "sqrt", "rsqrt", "sin", "cos", "lg2", "ex2", "tanh", "copysign", signature=float_signature)
def float_only(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    """The opcodes that exist for floating-point types only."""
    return emit_float(lanes, ins, sources)


def is_float_type(ptx_type: str) -> bool:
    return ptx_type in fp.FLOAT_TYPES or ptx_type in PACKED


__all__ = ["float_signature", "emit_float", "is_float_type", "Unsupported", "element_type"]
