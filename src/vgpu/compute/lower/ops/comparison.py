"""Comparison and selection: setp (every comparison, boolean combination with a predicate, the
``p|q`` form), set, selp and slct."""

from __future__ import annotations

from llvmlite import ir

from vgpu.compute.lower.lanes import FLOAT, Lanes, is_signed
from vgpu.compute.lower.ops import fp
from vgpu.compute.lower.ops.common import float_const, int_const, ints, type_modifiers, unsupported
from vgpu.compute.lower.registry import Signature, instruction_type, semantics
from vgpu.compute.ptx.syntax import Instruction, PredicatePair

INTEGER_COMPARISONS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=",
                       "lo": "<", "ls": "<=", "hi": ">", "hs": ">="}
UNSIGNED_ONLY = {"lo", "ls", "hi", "hs"}
#: float comparisons: (ordered?, llvmlite operator)
FLOAT_COMPARISONS = {"eq": (True, "=="), "ne": (True, "!="), "lt": (True, "<"), "le": (True, "<="),
                     "gt": (True, ">"), "ge": (True, ">="), "equ": (False, "=="), "neu": (False, "!="),
                     "ltu": (False, "<"), "leu": (False, "<="), "gtu": (False, ">"), "geu": (False, ">="),
                     "num": (True, "ord"), "nan": (False, "uno")}
BOOLEAN = ("and", "or", "xor")
PACKED = {"f16x2": "f16", "bf16x2": "bf16"}


def _comparison(ins: Instruction) -> str:
    operator = next((m for m in ins.modifiers if m in FLOAT_COMPARISONS or m in INTEGER_COMPARISONS), None)
    if operator is None:
        raise unsupported(ins, "no comparison")
    return operator


def _boolean(ins: Instruction) -> str | None:
    return next((m for m in ins.modifiers if m in BOOLEAN), None)


def compare(lanes: Lanes, ins: Instruction, ptx_type: str, a: ir.Value, b: ir.Value) -> ir.Value:
    """The comparison an instruction names, lane by lane, as i1."""
    builder = lanes.builder
    operator = _comparison(ins)
    if ptx_type in fp.FLOAT_TYPES:
        if operator not in FLOAT_COMPARISONS:
            raise unsupported(ins)
        if ins.has("ftz") and ptx_type in ("f32", "f16"):
            a, b = fp.flush(lanes, a, ptx_type), fp.flush(lanes, b, ptx_type)
        if ptx_type == "bf16":
            a, b = fp.widen(lanes, a, "bf16", FLOAT), fp.widen(lanes, b, "bf16", FLOAT)
        ordered, symbol = FLOAT_COMPARISONS[operator]
        return (builder.fcmp_ordered if ordered else builder.fcmp_unordered)(symbol, a, b)
    if operator not in INTEGER_COMPARISONS:
        raise unsupported(ins)
    signed = is_signed(ptx_type) and operator not in UNSIGNED_ONLY
    return (builder.icmp_signed if signed else builder.icmp_unsigned)(INTEGER_COMPARISONS[operator], a, b)


def _setp_signature(ins: Instruction) -> Signature:
    ptx_type = instruction_type(ins)
    pair = bool(ins.operands) and isinstance(ins.operands[0], PredicatePair)
    if ptx_type in PACKED:
        pair = True  # the halves' results: p for the low, q for the high
    sources = (ptx_type, ptx_type) + (("pred",) if _boolean(ins) else ())
    return Signature(("pred", "pred") if pair else ("pred",), sources)


@semantics("setp", signature=_setp_signature)
def setp(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    """p = (a cmp b) BOP c, q = !(a cmp b) BOP c; for f16x2/bf16x2, p and q are the low and
    high halves' comparisons, each combined with c."""
    builder = lanes.builder
    ptx_type = instruction_type(ins)
    combine = _boolean(ins)
    if ptx_type in PACKED:
        half = PACKED[ptx_type]
        a_low, a_high = fp.packed_halves(lanes, sources[0], half)
        b_low, b_high = fp.packed_halves(lanes, sources[1], half)
        results = [compare(lanes, ins, half, a_low, b_low), compare(lanes, ins, half, a_high, b_high)]
    else:
        result = compare(lanes, ins, ptx_type, sources[0], sources[1])
        results = [result, builder.not_(result)]
    if combine:
        operation = {"and": builder.and_, "or": builder.or_, "xor": builder.xor}[combine]
        results = [operation(value, sources[2]) for value in results]
    return results[:len(_setp_signature(ins).destinations)]


def _set_signature(ins: Instruction) -> Signature:
    types = type_modifiers(ins)
    if len(types) != 2:
        raise unsupported(ins)
    destination, source = types
    if destination not in ("u32", "s32", "f32") or source in PACKED:
        raise unsupported(ins)
    return Signature((destination,), (source, source) + (("pred",) if _boolean(ins) else ()))


@semantics("set", signature=_set_signature)
def set_(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    """set: all ones (integer result) or 1.0f where (a cmp b) BOP c holds, else 0."""
    builder = lanes.builder
    destination, source = type_modifiers(ins)
    result = compare(lanes, ins, source, sources[0], sources[1])
    combine = _boolean(ins)
    if combine:
        result = {"and": builder.and_, "or": builder.or_, "xor": builder.xor}[combine](result, sources[2])
    if destination == "f32":
        return [builder.select(result, float_const(FLOAT, 1.0), float_const(FLOAT, 0.0))]
    return [builder.sext(result, ints(32))]


def _selp_signature(ins: Instruction) -> Signature:
    ptx_type = instruction_type(ins)
    return Signature((ptx_type,), (ptx_type, ptx_type, "pred"))


@semantics("selp", signature=_selp_signature)
def selp(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    return [lanes.builder.select(sources[2], sources[0], sources[1])]


def _slct_signature(ins: Instruction) -> Signature:
    types = type_modifiers(ins)
    if len(types) != 2 or types[1] not in ("s32", "f32"):
        raise unsupported(ins)
    return Signature((types[0],), (types[0], types[0], types[1]))


@semantics("slct", signature=_slct_signature)
def slct(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    """d = c >= 0 ? a : b (c s32 or f32; -0.0 counts as >= 0, NaN picks b)."""
    builder = lanes.builder
    a, b, c = sources
    if type_modifiers(ins)[1] == "f32":
        if ins.has("ftz"):
            c = fp.flush(lanes, c, "f32")
        choose = builder.fcmp_ordered(">=", c, float_const(FLOAT, 0.0))
    else:
        choose = builder.icmp_signed(">=", c, int_const(32, 0))
    return [builder.select(choose, a, b)]
