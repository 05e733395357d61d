"""Bit manipulation: and or xor not cnot (also on predicates), lop3, shl shr shf, prmt, bfe bfi,
brev popc clz bfind, and the integer dot products dp4a dp2a."""

from __future__ import annotations

from llvmlite import ir

from vgpu.compute.lower.lanes import Lanes, bit_width, is_signed
from vgpu.compute.lower.ops.common import int_const, ints, source_count, unsupported
from vgpu.compute.lower.registry import Signature, instruction_type, semantics
from vgpu.compute.ptx.syntax import Instruction

LOGIC_TYPES = {"pred", "b16", "b32", "b64", "u16", "u32", "u64", "s16", "s32", "s64"}


def _same_type(count: int):
    def signature(ins: Instruction) -> Signature:
        ptx_type = instruction_type(ins)
        return Signature((ptx_type,), (ptx_type,) * count)
    return signature


def _logic_signature(ins: Instruction) -> Signature:
    ptx_type = instruction_type(ins)
    if ptx_type not in LOGIC_TYPES:
        raise unsupported(ins, "operand type")
    return Signature((ptx_type,), (ptx_type,) * source_count(ins, 1 if ins.opcode in ("not", "cnot") else 2))


@semantics("and", "or", "xor", "not", "cnot", signature=_logic_signature)
def logic(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    b = lanes.builder
    if ins.opcode == "not":
        return [b.not_(sources[0])]
    if ins.opcode == "cnot":  # 1 where the source is zero, else 0
        value = sources[0]
        return [b.zext(b.icmp_unsigned("==", value, ir.Constant(value.type, None)), value.type)]
    operation = {"and": b.and_, "or": b.or_, "xor": b.xor}[ins.opcode]
    return [operation(*sources)]


def _lop3_signature(ins: Instruction) -> Signature:
    if ins.modifiers != ("b32",) or source_count(ins, 4) != 4:
        raise unsupported(ins, "only the b32 form without a predicate")
    return Signature(("b32",), ("b32",) * 4)


@semantics("lop3", signature=_lop3_signature)
def lop3(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    """Any three-input logic function: bit i of immLut is the result for the inputs
    (a, b, c) = bits 2, 1, 0 of i.  With an immediate table LLVM folds the unused terms."""
    b = lanes.builder
    a_value, b_value, c_value, table = sources
    known = uniform_constant(table)
    if known is not None:
        return [_lop3_known(lanes, a_value, b_value, c_value, known & 0xFF)]
    result = int_const(32, 0)
    for index in range(8):
        selected = b.sub(int_const(32, 0), b.and_(b.lshr(table, int_const(32, index)), int_const(32, 1)))
        term = selected
        for value, bit in ((a_value, 4), (b_value, 2), (c_value, 1)):
            term = b.and_(term, value if index & bit else b.not_(value))
        result = b.or_(result, term)
    return [result]


def uniform_constant(value: ir.Value) -> int | None:
    """The integer in every lane of a constant vector (an immediate operand), else None."""
    if not isinstance(value, ir.Constant) or not isinstance(value.constant, (list, tuple)):
        return None
    numbers = {element.constant for element in value.constant}
    if len(numbers) != 1:
        return None
    number = numbers.pop()
    return number if isinstance(number, int) else None


def _two_input(lanes: Lanes, table: int, x: ir.Value, y: ir.Value) -> ir.Value:
    """A function of two inputs given by its 4-entry truth table (bit 2*x+y)."""
    b = lanes.builder
    ones = int_const(32, -1)
    forms = {
        0b0000: lambda: int_const(32, 0), 0b1111: lambda: ones,
        0b1000: lambda: b.and_(x, y), 0b0100: lambda: b.and_(x, b.not_(y)),
        0b0010: lambda: b.and_(b.not_(x), y), 0b0001: lambda: b.not_(b.or_(x, y)),
        0b1100: lambda: x, 0b1010: lambda: y, 0b0011: lambda: b.not_(x), 0b0101: lambda: b.not_(y),
        0b0110: lambda: b.xor(x, y), 0b1001: lambda: b.not_(b.xor(x, y)),
        0b1110: lambda: b.or_(x, y), 0b0111: lambda: b.not_(b.and_(x, y)),
        0b1101: lambda: b.or_(x, b.not_(y)), 0b1011: lambda: b.or_(b.not_(x), y),
    }
    return forms[table]()


def _lop3_known(lanes: Lanes, a: ir.Value, b_value: ir.Value, c: ir.Value, table: int) -> ir.Value:
    """An immediate table: split on a (f = a ? f1(b, c) : f0(b, c)), each half one or two
    operations."""
    b = lanes.builder
    low, high = table & 0xF, table >> 4  # a = 0: entries 0-3; a = 1: entries 4-7
    f0 = _two_input(lanes, low, b_value, c)
    if low == high:
        return f0
    f1 = _two_input(lanes, high, b_value, c)
    return b.xor(f0, b.and_(a, b.xor(f0, f1)))


def _shift_signature(ins: Instruction) -> Signature:
    ptx_type = instruction_type(ins)
    return Signature((ptx_type,), (ptx_type, "u32"))


@semantics("shl", "shr", signature=_shift_signature)
def shift(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    """Shift amounts at or beyond the width give 0 (or all sign bits for shr.s)."""
    b = lanes.builder
    ptx_type = instruction_type(ins)
    value, amount = sources
    width = bit_width(ptx_type)
    big = b.icmp_unsigned(">=", amount, int_const(32, width))
    clamped = b.select(big, int_const(32, width - 1), amount)
    if width < 32:
        clamped = b.trunc(clamped, ints(width))
    elif width > 32:
        clamped = b.zext(clamped, ints(width))
    if ins.opcode == "shl":
        return [b.select(big, int_const(width, 0), b.shl(value, clamped))]
    if is_signed(ptx_type):
        return [b.ashr(value, clamped)]  # by width - 1: every bit a copy of the sign
    return [b.select(big, int_const(width, 0), b.lshr(value, clamped))]


def _shf_signature(ins: Instruction) -> Signature:
    if instruction_type(ins) != "b32":
        raise unsupported(ins)
    return Signature(("b32",), ("b32", "b32", "u32"))


@semantics("shf", signature=_shf_signature)
def funnel_shift(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    """shf.l: the high word of (b:a) << n; shf.r: the low word of (b:a) >> n; .wrap takes n
    modulo 32, .clamp at most 32."""
    b = lanes.builder
    low, high, amount = sources
    left = ins.has("l")
    if not left and not ins.has("r"):
        raise unsupported(ins)
    name = "llvm.fshl" if left else "llvm.fshr"
    shifted = lanes.intrinsic(name, low.type, [high, low, amount])
    if ins.has("clamp"):
        whole = b.icmp_unsigned(">=", amount, int_const(32, 32))
        shifted = b.select(whole, low if left else high, shifted)
    elif not ins.has("wrap"):
        raise unsupported(ins)
    return [shifted]


#: each mode's byte selectors, indexed by c & 3, for result bytes 0..3
PRMT_MODES = {
    "f4e": ((0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 6)),
    "b4e": ((0, 7, 6, 5), (1, 0, 7, 6), (2, 1, 0, 7), (3, 2, 1, 0)),
    "rc8": ((0, 0, 0, 0), (1, 1, 1, 1), (2, 2, 2, 2), (3, 3, 3, 3)),
    "ecl": ((0, 1, 2, 3), (1, 1, 2, 3), (2, 2, 2, 3), (3, 3, 3, 3)),
    "ecr": ((0, 0, 0, 0), (0, 1, 1, 1), (0, 1, 2, 2), (0, 1, 2, 3)),
    "rc16": ((0, 1, 0, 1), (2, 3, 2, 3), (0, 1, 0, 1), (2, 3, 2, 3)),
}


@semantics("prmt", signature=lambda ins: Signature(("b32",), ("b32", "b32", "b32")))
def prmt(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    """Pick four bytes of {b, a} (bytes 0-3 from a, 4-7 from b) by selector; the generic form's
    selector bit 3 replicates the picked byte's sign."""
    b = lanes.builder
    a_value, b_value, control = sources
    pool = b.or_(b.zext(a_value, ints(64)), b.shl(b.zext(b_value, ints(64)), int_const(64, 32)))
    mode = next((m for m in ins.modifiers if m in PRMT_MODES), None)
    if mode is None and any(m not in ("b32",) for m in ins.modifiers):
        raise unsupported(ins)
    known = uniform_constant(control)
    if known is not None:
        return [_prmt_known(lanes, a_value, b_value, _prmt_plan(mode, known))]
    result = int_const(32, 0)
    for byte in range(4):
        if mode is None:
            selector = b.and_(b.lshr(control, int_const(32, 4 * byte)), int_const(32, 0xF))
        else:
            table = sum(PRMT_MODES[mode][choice][byte] << (4 * choice) for choice in range(4))
            choice = b.and_(control, int_const(32, 3))
            selector = b.and_(b.lshr(int_const(32, table), b.shl(choice, int_const(32, 2))), int_const(32, 7))
        index = b.zext(b.and_(selector, int_const(32, 7)), ints(64))
        picked = b.trunc(b.and_(b.lshr(pool, b.shl(index, int_const(64, 3))), int_const(64, 0xFF)), ints(32))
        if mode is None:
            sign = b.icmp_unsigned("!=", b.and_(picked, int_const(32, 0x80)), int_const(32, 0))
            replicate = b.icmp_unsigned("!=", b.and_(selector, int_const(32, 8)), int_const(32, 0))
            picked = b.select(replicate, b.select(sign, int_const(32, 0xFF), int_const(32, 0)), picked)
        result = b.or_(result, b.shl(picked, int_const(32, 8 * byte)))
    return [result]


def _prmt_plan(mode: str | None, control: int) -> list[tuple[int, bool]]:
    """For result bytes 0..3: (source byte 0-7, replicate its sign)."""
    if mode is None:
        selectors = [(control >> (4 * byte)) & 0xF for byte in range(4)]
        return [(selector & 7, bool(selector & 8)) for selector in selectors]
    return [(source, False) for source in PRMT_MODES[mode][control & 3]]


def _prmt_known(lanes: Lanes, a_value: ir.Value, b_value: ir.Value, plan: list[tuple[int, bool]]) -> ir.Value:
    """A constant selector: one byte shuffle across the warp's a and b bytes (and one of their
    sign bytes where the plan replicates signs)."""
    b = lanes.builder
    byte_vector = ir.VectorType(ir.IntType(8), 4 * 32)
    a_bytes, b_bytes = b.bitcast(a_value, byte_vector), b.bitcast(b_value, byte_vector)

    def mask() -> ir.Constant:
        indices = []
        for lane in range(32):
            for source, _ in plan:
                indices.append(lane * 4 + source if source < 4 else 4 * 32 + lane * 4 + source - 4)
        return ir.Constant(ir.VectorType(ir.IntType(32), len(indices)), indices)

    picked = b.shuffle_vector(a_bytes, b_bytes, mask())
    if any(replicate for _, replicate in plan):
        seven = ir.Constant(byte_vector, [ir.Constant(ir.IntType(8), 7)] * (4 * 32))
        signs = b.shuffle_vector(b.ashr(a_bytes, seven), b.ashr(b_bytes, seven), mask())
        choose = ir.Constant(ir.VectorType(ir.IntType(1), 4 * 32),
                             [ir.Constant(ir.IntType(1), int(replicate)) for _ in range(32) for _, replicate in plan])
        picked = b.select(choose, signs, picked)
    return b.bitcast(picked, ints(32))


def _bfe_signature(ins: Instruction) -> Signature:
    ptx_type = instruction_type(ins)
    return Signature((ptx_type,), (ptx_type, "u32", "u32"))


@semantics("bfe", signature=_bfe_signature)
def bfe(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    """Extract len bits at pos (each from its source's low 8 bits), zero- or sign-extended from
    the field's last bit inside the value."""
    b = lanes.builder
    ptx_type = instruction_type(ins)
    width = bit_width(ptx_type)
    value, position, length = sources
    position = b.and_(position, int_const(32, 0xFF))
    length = b.and_(length, int_const(32, 0xFF))
    msb = int_const(32, width - 1)
    inside = b.icmp_unsigned("<=", position, msb)
    shift = _to_width(lanes, b.select(inside, position, int_const(32, 0)), width)
    field = b.select(inside, b.lshr(value, shift), int_const(width, 0))
    room = b.sub(int_const(32, width), b.select(inside, position, int_const(32, width)))
    kept = b.select(b.icmp_unsigned("<", length, room), length, room)  # bits taken from the value
    mask = _low_mask(lanes, kept, width)
    result = b.and_(field, mask)
    if is_signed(ptx_type):
        last = b.add(position, b.sub(length, int_const(32, 1)))
        last = b.select(b.icmp_unsigned("<", last, msb), last, msb)
        sign_bit = b.trunc(b.lshr(value, _to_width(lanes, last, width)), ints(1))
        sign_bit = b.and_(sign_bit, b.icmp_unsigned("!=", length, int_const(32, 0)))
        result = b.select(sign_bit, b.or_(result, b.not_(mask)), result)
    return [result]


def _to_width(lanes: Lanes, value: ir.Value, width: int) -> ir.Value:
    if width == 32:
        return value
    return lanes.builder.zext(value, ints(width)) if width > 32 else lanes.builder.trunc(value, ints(width))


def _low_mask(lanes: Lanes, count: ir.Value, width: int) -> ir.Value:
    """A mask of the low ``count`` bits (count is u32, at most ``width``)."""
    b = lanes.builder
    full = b.icmp_unsigned(">=", count, int_const(32, width))
    safe = _to_width(lanes, b.select(full, int_const(32, 0), count), width)
    partial = b.sub(b.shl(int_const(width, 1), safe), int_const(width, 1))
    return b.select(full, int_const(width, -1), partial)


def _bfi_signature(ins: Instruction) -> Signature:
    ptx_type = instruction_type(ins)
    return Signature((ptx_type,), (ptx_type, ptx_type, "u32", "u32"))


@semantics("bfi", signature=_bfi_signature)
def bfi(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    """Insert a's low len bits into b at pos (bits beyond the width are dropped)."""
    b = lanes.builder
    width = bit_width(instruction_type(ins))
    insert, base, position, length = sources
    position = b.and_(position, int_const(32, 0xFF))
    length = b.and_(length, int_const(32, 0xFF))
    inside = b.icmp_unsigned("<", position, int_const(32, width))
    room = b.sub(int_const(32, width), b.select(inside, position, int_const(32, width)))
    kept = b.select(b.icmp_unsigned("<", length, room), length, room)
    shift = _to_width(lanes, b.select(inside, position, int_const(32, 0)), width)
    mask = b.shl(_low_mask(lanes, kept, width), shift)
    return [b.or_(b.and_(base, b.not_(mask)), b.and_(b.shl(insert, shift), mask))]


@semantics("brev", signature=_same_type(1))
def brev(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    return [lanes.intrinsic("llvm.bitreverse", sources[0].type, sources)]


def _count_signature(ins: Instruction) -> Signature:
    return Signature(("u32",), (instruction_type(ins),))


def _to_u32(lanes: Lanes, value: ir.Value) -> ir.Value:
    return _to_width_from(lanes, value, 32)


def _to_width_from(lanes: Lanes, value: ir.Value, width: int) -> ir.Value:
    have = value.type.element.width
    if have == width:
        return value
    return lanes.builder.trunc(value, ints(width)) if have > width else lanes.builder.zext(value, ints(width))


@semantics("popc", signature=_count_signature)
def popc(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    return [_to_u32(lanes, lanes.intrinsic("llvm.ctpop", sources[0].type, sources))]


@semantics("clz", signature=_count_signature)
def clz(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    value = sources[0]
    count = lanes.intrinsic("llvm.ctlz", value.type, [value, ir.Constant(ir.IntType(1), 0)], types=[value.type])
    return [_to_u32(lanes, count)]


@semantics("bfind", signature=_count_signature)
def bfind(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    """The position of the most significant bit that differs from the sign (a set bit for
    unsigned types); 0xFFFFFFFF when there is none; .shiftamt gives width-1 minus it."""
    b = lanes.builder
    ptx_type = instruction_type(ins)
    width = bit_width(ptx_type)
    value = sources[0]
    if is_signed(ptx_type):
        value = b.select(b.icmp_signed("<", value, int_const(width, 0)), b.not_(value), value)
    leading = _to_u32(lanes, lanes.intrinsic("llvm.ctlz", value.type, [value, ir.Constant(ir.IntType(1), 0)],
                                             types=[value.type]))
    none = b.icmp_unsigned("==", value, int_const(width, 0))
    position = leading if ins.has("shiftamt") else b.sub(int_const(32, width - 1), leading)
    return [b.select(none, int_const(32, -1), position)]


def _dot_signature(ins: Instruction) -> Signature:
    types = [m for m in ins.modifiers if m in ("u32", "s32")]
    if len(types) != 2:
        raise unsupported(ins)
    return Signature(("u32" if types == ["u32", "u32"] else "s32",), (types[0], types[1], types[0] if types[0] == types[1] == "u32" else "s32"))


@semantics("dp4a", "dp2a", signature=_dot_signature)
def dot_product(lanes: Lanes, ins: Instruction, sources: list[ir.Value]) -> list[ir.Value]:
    """dp4a: c + the sum of a's and b's four byte products; dp2a.lo/.hi: c + a's two 16-bit
    halves times b's bytes 0,1 (.lo) or 2,3 (.hi); bytes and halves sign-extended for s32."""
    b = lanes.builder
    a_type, b_type = [m for m in ins.modifiers if m in ("u32", "s32")]
    a_value, b_value, total = sources

    def part(value: ir.Value, signed: bool, index: int, size: int) -> ir.Value:
        piece = b.trunc(b.lshr(value, int_const(32, index * size)), ints(size))
        return (b.sext if signed else b.zext)(piece, ints(32))

    if ins.opcode == "dp4a":
        pairs = [(part(a_value, a_type == "s32", i, 8), part(b_value, b_type == "s32", i, 8)) for i in range(4)]
    else:
        first = 2 if ins.has("hi") else 0
        if not (ins.has("hi") or ins.has("lo")):
            raise unsupported(ins)
        pairs = [(part(a_value, a_type == "s32", i, 16), part(b_value, b_type == "s32", first + i, 8)) for i in range(2)]
    for x, y in pairs:
        total = b.add(total, b.mul(x, y))
    return [total]
