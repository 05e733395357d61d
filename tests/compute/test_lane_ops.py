"""Lane-wise PTX instruction semantics (vgpu.compute.lower.ops), compiled with the engine's
optimiser and JIT and run 32 lanes at a time, against references computed on the host: Python
integers, numpy, and exact rational arithmetic rounded in each PTX rounding mode."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from llvmlite import ir

from tests.compute.lane_harness import Compiled, compile_instruction, instruction, natural, run
from vgpu.compute.lower.lanes import Lanes
from vgpu.compute.lower.registry import SEMANTICS, Unsupported
from vgpu.compute.ptx.syntax import Immediate, Instruction, PredicatePair, Register

COUNT = 2048
RNG_SEED = 13


def rng(*salt: object) -> np.random.Generator:
    return np.random.default_rng([RNG_SEED, *(hash(str(s)) & 0xFFFF for s in salt)])


# -- integers ----------------------------------------------------------------------------------
def width(ptx_type: str) -> int:
    return int(ptx_type[1:])


def signed(ptx_type: str) -> bool:
    return ptx_type[0] == "s"


def wrap(value: int, ptx_type: str) -> int:
    """``value`` modulo 2^width, read as the type (two's complement for s types)."""
    bits = width(ptx_type)
    value &= (1 << bits) - 1
    if signed(ptx_type) and value >> (bits - 1):
        value -= 1 << bits
    return value


def integers(ptx_type: str, count: int = COUNT, *salt: object) -> list[int]:
    """Edge values (0, ±1, MIN, MAX, byte boundaries) then random bits, as the type's values."""
    bits = width(ptx_type)
    edges = [0, 1, 2, 3, -1, -2, 0x7F, 0x80, 0xFF, 0x100, 1 << (bits - 1), (1 << (bits - 1)) - 1,
             (1 << bits) - 1, 0x5555555555555555, 0xAAAAAAAAAAAAAAAA, 0x00FF00FF00FF00FF]
    generator = rng(ptx_type, *salt)
    randoms = [int(x) for x in generator.integers(0, 1 << 63, size=count, dtype=np.uint64)]
    randoms = [(x << 1 | (x & 1)) ^ (x >> 7) for x in randoms]
    small = [int(x) for x in generator.integers(-40, 40, size=count // 4)]
    values = [wrap(x, ptx_type) for x in edges + small + randoms]
    return values[:count]


def pairs(ptx_type: str, *salt: object) -> tuple[list[int], list[int]]:
    """Every pairing of the edge values, then random pairs."""
    a = integers(ptx_type, COUNT, "a", *salt)
    b = integers(ptx_type, COUNT, "b", *salt)
    edges = a[:16]
    a = [x for x in edges for _ in edges] + a
    b = [y for _ in edges for y in edges] + b
    return a, b


def array(values: list[int], ptx_type: str) -> np.ndarray:
    dtype = natural(ptx_type)
    return np.array([v & ((1 << width(ptx_type)) - 1) for v in values], dtype=np.uint64).astype(dtype)


def as_ints(result: np.ndarray) -> list[int]:
    return [int(x) for x in result.tolist()]


INTEGER_TYPES = ["s16", "u16", "s32", "u32", "s64", "u64"]


def _div(a: int, b: int, t: str) -> int:
    if b == 0:
        return -1
    quotient = abs(a) // abs(b)
    return quotient if (a < 0) == (b < 0) else -quotient


def _rem(a: int, b: int, t: str) -> int:
    if b == 0:
        return a
    return a - _div(a, b, t) * b


BINARY = {
    "add": lambda a, b, t: a + b,
    "sub": lambda a, b, t: a - b,
    "mul.lo": lambda a, b, t: a * b,
    "mul.hi": lambda a, b, t: (a * b) >> width(t),
    "min": lambda a, b, t: min(a, b),
    "max": lambda a, b, t: max(a, b),
    "div": _div,
    "rem": _rem,
}


@pytest.mark.parametrize("ptx_type", INTEGER_TYPES)
@pytest.mark.parametrize("op", sorted(BINARY))
def test_integer_binary(op: str, ptx_type: str) -> None:
    a, b = pairs(ptx_type, op)
    got = as_ints(run(f"{op}.{ptx_type}", array(a, ptx_type), array(b, ptx_type)))
    want = [wrap(BINARY[op](x, y, ptx_type), ptx_type) for x, y in zip(a, b)]
    assert got == want


@pytest.mark.parametrize("ptx_type", ["s16", "u16", "s32", "u32"])
@pytest.mark.parametrize("op", ["mul", "mad"])
def test_integer_wide(op: str, ptx_type: str) -> None:
    a, b = pairs(ptx_type, op)
    big = ptx_type[0] + str(2 * width(ptx_type))
    c = integers(big, len(a), "c")
    inputs = [array(a, ptx_type), array(b, ptx_type)] + ([array(c, big)] if op == "mad" else [])
    got = as_ints(run(f"{op}.wide.{ptx_type}", *inputs))
    want = [wrap(x * y + (z if op == "mad" else 0), big) for x, y, z in zip(a, b, c)]
    assert got == want


@pytest.mark.parametrize("ptx_type", INTEGER_TYPES)
@pytest.mark.parametrize("mode", ["lo", "hi"])
def test_integer_mad(mode: str, ptx_type: str) -> None:
    a, b = pairs(ptx_type, "mad")
    c = integers(ptx_type, len(a), "c")
    got = as_ints(run(f"mad.{mode}.{ptx_type}", array(a, ptx_type), array(b, ptx_type), array(c, ptx_type)))
    shift = width(ptx_type) if mode == "hi" else 0
    want = [wrap(wrap((x * y) >> shift, ptx_type) + z, ptx_type) for x, y, z in zip(a, b, c)]
    assert got == want


def saturate32(value: int) -> int:
    return max(-(1 << 31), min((1 << 31) - 1, value))


def test_saturating_s32() -> None:
    a, b = pairs("s32", "sat")
    c = integers("s32", len(a), "c")
    A, B, C = array(a, "s32"), array(b, "s32"), array(c, "s32")
    assert as_ints(run("add.sat.s32", A, B)) == [saturate32(x + y) for x, y in zip(a, b)]
    assert as_ints(run("sub.sat.s32", A, B)) == [saturate32(x - y) for x, y in zip(a, b)]
    assert as_ints(run("mad.hi.sat.s32", A, B, C)) == [saturate32(((x * y) >> 32) + z) for x, y, z in zip(a, b, c)]


def _low24(value: int, ptx_type: str) -> int:
    value &= 0xFFFFFF
    return value - (1 << 24) if signed(ptx_type) and value >> 23 else value


@pytest.mark.parametrize("ptx_type", ["s32", "u32"])
@pytest.mark.parametrize("mode", ["lo", "hi"])
def test_mul24_mad24(mode: str, ptx_type: str) -> None:
    a, b = pairs(ptx_type, "24")
    c = integers(ptx_type, len(a), "c")
    products = [_low24(x, ptx_type) * _low24(y, ptx_type) >> (16 if mode == "hi" else 0) for x, y in zip(a, b)]
    A, B, C = array(a, ptx_type), array(b, ptx_type), array(c, ptx_type)
    assert as_ints(run(f"mul24.{mode}.{ptx_type}", A, B)) == [wrap(p, ptx_type) for p in products]
    assert as_ints(run(f"mad24.{mode}.{ptx_type}", A, B, C)) == [wrap(wrap(p, ptx_type) + z, ptx_type)
                                                                  for p, z in zip(products, c)]
    if mode == "hi" and ptx_type == "s32":
        assert as_ints(run("mad24.hi.sat.s32", A, B, C)) == [saturate32(wrap(p, "s32") + z) for p, z in zip(products, c)]


@pytest.mark.parametrize("ptx_type", INTEGER_TYPES)
def test_sad_abs_neg(ptx_type: str) -> None:
    a, b = pairs(ptx_type, "sad")
    c = integers(ptx_type, len(a), "c")
    A, B, C = array(a, ptx_type), array(b, ptx_type), array(c, ptx_type)
    assert as_ints(run(f"sad.{ptx_type}", A, B, C)) == [wrap(z + abs(x - y), ptx_type) for x, y, z in zip(a, b, c)]
    assert as_ints(run(f"neg.{ptx_type}", A)) == [wrap(-x, ptx_type) for x in a]
    if signed(ptx_type):
        assert as_ints(run(f"abs.{ptx_type}", A)) == [wrap(abs(x), ptx_type) for x in a]


def test_min_max_relu() -> None:
    a, b = pairs("s32", "relu")
    A, B = array(a, "s32"), array(b, "s32")
    assert as_ints(run("min.relu.s32", A, B)) == [max(0, min(x, y)) for x, y in zip(a, b)]
    assert as_ints(run("max.relu.s32", A, B)) == [max(0, x, y) for x, y in zip(a, b)]


def test_division_by_zero_and_overflow_do_not_fault() -> None:
    """x86 faults on a zero divisor and on MIN / -1; PTX's lanes must not."""
    for t in ("s32", "u32", "s64", "u64", "s16"):
        minimum = wrap(1 << (width(t) - 1), t)
        a = array([5, -5, 0, minimum, minimum] * 32, t)
        b = array([0, 0, 0, 0, -1] * 32, t)
        quotient = as_ints(run(f"div.{t}", a, b))[:5]
        remainder = as_ints(run(f"rem.{t}", a, b))[:5]
        assert quotient[:4] == [wrap(-1, t)] * 4
        assert remainder[:4] == [wrap(v, t) for v in (5, -5, 0, minimum)]
        if signed(t):
            assert quotient[4] == minimum and remainder[4] == 0


def _chain(steps: list[str], width_bits: int) -> Compiled:
    """One function running a carry chain: step i adds (or subtracts) word i of a and b."""
    t = f"u{width_bits}"
    ins = [instruction(step) for step in steps]

    def body(lanes: Lanes, values: list[ir.Value]) -> list[ir.Value]:
        half = len(values) // 2
        return [SEMANTICS[i.opcode].emit(lanes, i, [values[k], values[half + k]])[0] for k, i in enumerate(ins)]

    return Compiled(body, [t] * (2 * len(steps)), [t] * len(steps))


@pytest.mark.parametrize("word", [32, 64])
@pytest.mark.parametrize("subtract", [False, True])
def test_carry_chain(word: int, subtract: bool) -> None:
    """Multi-word addition and subtraction (add.cc, addc.cc, addc / sub.cc, subc.cc, subc)."""
    t = f"u{word}"
    first, middle, last = (["sub.cc", "subc.cc", "subc"] if subtract else ["add.cc", "addc.cc", "addc"])
    chain = _chain([f"{first}.{t}", f"{middle}.{t}", f"{middle}.{t}", f"{last}.{t}"], word)
    generator = rng("chain", word, subtract)
    count = 512
    words_a = [integers(t, count, "a", k) for k in range(4)]
    words_b = [integers(t, count, "b", k) for k in range(4)]
    for k in range(4):  # carries that ripple: all-ones words
        words_a[k][:32] = [(1 << word) - 1] * 32
        words_b[k][:16] = [1 if k == 0 else 0] * 16
    got = [as_ints(r) for r in chain(*[array(w, t) for w in words_a + words_b])]
    mask = (1 << (4 * word)) - 1
    for lane in range(count):
        x = sum(words_a[k][lane] << (word * k) for k in range(4))
        y = sum(words_b[k][lane] << (word * k) for k in range(4))
        total = (x - y if subtract else x + y) & mask
        assert [got[k][lane] for k in range(4)] == [(total >> (word * k)) & ((1 << word) - 1) for k in range(4)], lane
    del generator


def test_mad_carry_chain() -> None:
    """A 64x64->128 accumulation with mad.lo.cc / madc.hi, as multi-precision code does."""
    steps = [instruction("mad.lo.cc.u64"), instruction("madc.hi.u64")]

    def body(lanes: Lanes, values: list[ir.Value]) -> list[ir.Value]:
        a, b, low, high = values
        result_low = SEMANTICS["mad"].emit(lanes, steps[0], [a, b, low])[0]
        result_high = SEMANTICS["madc"].emit(lanes, steps[1], [a, b, high])[0]
        return [result_low, result_high]

    chain = Compiled(body, ["u64"] * 4, ["u64", "u64"])
    a, b = pairs("u64", "madc")
    low, high = integers("u64", len(a), "low"), integers("u64", len(a), "high")
    got_low, got_high = (as_ints(r) for r in chain(array(a, "u64"), array(b, "u64"), array(low, "u64"), array(high, "u64")))
    for lane, (x, y, l, h) in enumerate(zip(a, b, low, high)):
        total = (x * y + (h << 64) + l) & ((1 << 128) - 1)
        assert (got_low[lane], got_high[lane]) == (total & ((1 << 64) - 1), total >> 64), lane


# -- bits --------------------------------------------------------------------------------------
def bits_of(values: list[int], bits: int) -> list[int]:
    return [v & ((1 << bits) - 1) for v in values]


@pytest.mark.parametrize("ptx_type", ["b16", "b32", "b64"])
def test_logic(ptx_type: str) -> None:
    bits = width(ptx_type)
    u = "u" + ptx_type[1:]
    a, b = (bits_of(v, bits) for v in pairs(u, "logic"))
    A, B = array(a, u), array(b, u)
    mask = (1 << bits) - 1
    assert bits_of(as_ints(run(f"and.{ptx_type}", A, B)), bits) == [x & y for x, y in zip(a, b)]
    assert bits_of(as_ints(run(f"or.{ptx_type}", A, B)), bits) == [x | y for x, y in zip(a, b)]
    assert bits_of(as_ints(run(f"xor.{ptx_type}", A, B)), bits) == [x ^ y for x, y in zip(a, b)]
    assert bits_of(as_ints(run(f"not.{ptx_type}", A)), bits) == [x ^ mask for x in a]
    assert bits_of(as_ints(run(f"cnot.{ptx_type}", A)), bits) == [int(x == 0) for x in a]


def test_logic_on_predicates() -> None:
    p = np.array([False, False, True, True] * 8)
    q = np.array([False, True, False, True] * 8)
    assert list(run("and.pred", p, q)) == list(p & q)
    assert list(run("or.pred", p, q)) == list(p | q)
    assert list(run("xor.pred", p, q)) == list(p ^ q)
    assert list(run("not.pred", p)) == list(~p)


def _lop3(x: int, y: int, z: int, table: int) -> int:
    value = 0
    for bit in range(32):
        index = ((x >> bit) & 1) << 2 | ((y >> bit) & 1) << 1 | ((z >> bit) & 1)
        value |= ((table >> index) & 1) << bit
    return value


def test_lop3_every_table() -> None:
    """All 256 tables, each lane its own (a table in a register), and immediate tables as the
    lowering passes them (constant vectors LLVM folds)."""
    a, b = (bits_of(v, 32) for v in pairs("u32", "lop3"))
    c = bits_of(integers("u32", len(a), "c"), 32)
    tables = [lane % 256 for lane in range(len(a))]
    compiled = compile_instruction(instruction("lop3.b32", 4))
    got = as_ints(compiled(array(a, "u32"), array(b, "u32"), array(c, "u32"), np.array(tables, np.uint32))[0])
    assert got == [_lop3(x, y, z, t) for x, y, z, t in zip(a, b, c, tables)]
    for table in (0x00, 0xFF, 0x96, 0xE8, 0xF0, 0xCA, 0x80, 0x3C):
        ins = Instruction("lop3", ("b32",), [Register("%d"), Register("%a"), Register("%b"), Register("%c"),
                                               Immediate(table)])
        constant = Compiled(lambda lanes, v, ins=ins, t=table: SEMANTICS["lop3"].emit(lanes, ins, v + [lanes.constant("b32", t)]),
                            ["b32"] * 3, ["b32"])
        got = as_ints(constant(array(a, "u32"), array(b, "u32"), array(c, "u32"))[0])
        assert got == [_lop3(x, y, z, table) for x, y, z in zip(a, b, c)], table


@pytest.mark.parametrize("ptx_type", ["b16", "b32", "b64", "u16", "s16", "u32", "s32", "u64", "s64"])
def test_shifts(ptx_type: str) -> None:
    bits = width(ptx_type)
    kind = "s" if ptx_type[0] == "s" else "u"
    t = kind + str(bits)
    values = integers(t, 1024, "shift")
    amounts = [int(x) for x in rng("amount", ptx_type).integers(0, bits + 8, size=len(values))]
    amounts[:6] = [0, bits - 1, bits, bits + 1, 0xFFFFFFFF, 1 << 31]
    V, S = array(values, t), np.array(amounts, dtype=np.uint32)
    left = bits_of(as_ints(run(f"shl.{ptx_type}", V, S)), bits)
    assert left == [(v << s) & ((1 << bits) - 1) if s < bits else 0 for v, s in zip(bits_of(values, bits), amounts)]
    right = as_ints(run(f"shr.{ptx_type}", V, S))
    if kind == "s":
        assert right == [v >> min(s, bits - 1) for v, s in zip(values, amounts)]
    else:
        assert bits_of(right, bits) == [v >> s if s < bits else 0 for v, s in zip(bits_of(values, bits), amounts)]


@pytest.mark.parametrize("direction", ["l", "r"])
@pytest.mark.parametrize("mode", ["wrap", "clamp"])
def test_funnel_shift(direction: str, mode: str) -> None:
    a, b = (bits_of(v, 32) for v in pairs("u32", "shf"))
    n = [int(x) for x in rng("shf").integers(0, 70, size=len(a))]
    n[:4] = [0, 31, 32, 0xFFFFFFFF]
    got = as_ints(run(f"shf.{direction}.{mode}.b32", array(a, "u32"), array(b, "u32"), np.array(n, np.uint32)))
    want = []
    for low, high, amount in zip(a, b, n):
        amount = amount & 31 if mode == "wrap" else min(amount, 32)
        pair = high << 32 | low
        want.append((pair << amount) >> 32 & 0xFFFFFFFF if direction == "l" else (pair >> amount) & 0xFFFFFFFF)
    assert got == want


PRMT_TABLES = {  # result bytes 3..2..1..0 for c & 3 = 0..3, as the PTX ISA tabulates them
    "f4e": ["3210", "4321", "5432", "6543"], "b4e": ["5670", "6701", "7012", "0123"],
    "rc8": ["0000", "1111", "2222", "3333"], "ecl": ["3210", "3211", "3222", "3333"],
    "ecr": ["0000", "1110", "2210", "3210"], "rc16": ["1010", "3232", "1010", "3232"],
}


def _prmt(x: int, y: int, control: int, mode: str | None) -> int:
    pool = (y << 32 | x).to_bytes(8, "little")
    value = 0
    for byte in range(4):
        if mode is None:
            selector = (control >> (4 * byte)) & 0xF
            picked = pool[selector & 7]
            if selector & 8:
                picked = 0xFF if picked & 0x80 else 0
        else:
            picked = pool[int(PRMT_TABLES[mode][control & 3][3 - byte])]
        value |= picked << (8 * byte)
    return value


@pytest.mark.parametrize("mode", [None, *PRMT_TABLES])
def test_prmt(mode: str | None) -> None:
    """Selectors in a register (each lane its own), and immediate ones as the lowering passes
    them (constant vectors: a byte shuffle)."""
    a, b = (bits_of(v, 32) for v in pairs("u32", "prmt"))
    c = bits_of(integers("u32", len(a), "control"), 32)
    text = "prmt.b32" + (f".{mode}" if mode else "")
    got = as_ints(run(text, array(a, "u32"), array(b, "u32"), array(c, "u32")))
    assert got == [_prmt(x, y, z, mode) for x, y, z in zip(a, b, c)]
    ins = instruction(text)
    for control in ((0x5140, 0x3210, 0x7654, 0x8888, 0xF1E2, 0x0000) if mode is None else (0, 1, 2, 3)):
        constant = Compiled(lambda lanes, v, k=control: SEMANTICS["prmt"].emit(lanes, ins, v + [lanes.constant("b32", k)]),
                            ["b32"] * 2, ["b32"])
        got = as_ints(constant(array(a, "u32"), array(b, "u32"))[0])
        assert got == [_prmt(x, y, control, mode) for x, y in zip(a, b)], hex(control)


def _bfe(value: int, position: int, length: int, bits: int, is_signed: bool) -> int:
    position, length = position & 0xFF, length & 0xFF
    msb = bits - 1
    sign = (value >> min(position + length - 1, msb)) & 1 if is_signed and length else 0
    result = 0
    for i in range(bits):
        bit = (value >> (position + i)) & 1 if i < length and position + i <= msb else sign
        result |= bit << i
    return result


@pytest.mark.parametrize("ptx_type", ["u32", "s32", "u64", "s64"])
def test_bfe(ptx_type: str) -> None:
    bits = width(ptx_type)
    values = bits_of(integers(ptx_type, 1024, "bfe"), bits)
    generator = rng("bfe", ptx_type)
    positions = [int(x) for x in generator.integers(0, bits + 4, size=len(values))]
    lengths = [int(x) for x in generator.integers(0, bits + 4, size=len(values))]
    positions[:6], lengths[:6] = [0, 0, bits - 1, bits, 0x1F05, 3], [0, bits, 1, 5, 0x1F03, 0x300]
    got = bits_of(as_ints(run(f"bfe.{ptx_type}", array(values, "u" + str(bits)), np.array(positions, np.uint32),
                              np.array(lengths, np.uint32))), bits)
    assert got == [_bfe(v, p, n, bits, signed(ptx_type)) for v, p, n in zip(values, positions, lengths)]


@pytest.mark.parametrize("ptx_type", ["b32", "b64"])
def test_bfi(ptx_type: str) -> None:
    bits = width(ptx_type)
    u = "u" + str(bits)
    a, b = (bits_of(v, bits) for v in pairs(u, "bfi"))
    generator = rng("bfi", ptx_type)
    positions = [int(x) for x in generator.integers(0, bits + 4, size=len(a))]
    lengths = [int(x) for x in generator.integers(0, bits + 4, size=len(a))]
    positions[:4], lengths[:4] = [0, bits - 1, bits, 0x105], [bits, 4, 3, 0x204]
    got = bits_of(as_ints(run(f"bfi.{ptx_type}", array(a, u), array(b, u), np.array(positions, np.uint32),
                              np.array(lengths, np.uint32))), bits)
    want = []
    for insert, base, position, length in zip(a, b, positions, lengths):
        position, length = position & 0xFF, length & 0xFF
        for i in range(length):
            if position + i > bits - 1:
                break
            base = base & ~(1 << (position + i)) | ((insert >> i) & 1) << (position + i)
        want.append(base)
    assert got == want


@pytest.mark.parametrize("bits", [32, 64])
def test_bit_counts(bits: int) -> None:
    u, s = f"u{bits}", f"s{bits}"
    values = bits_of(integers(u, COUNT, "counts"), bits)
    signed_values = [wrap(v, s) for v in values]
    assert bits_of(as_ints(run(f"brev.b{bits}", array(values, u))), bits) == \
        [int(format(v, f"0{bits}b")[::-1], 2) for v in values]
    assert as_ints(run(f"popc.b{bits}", array(values, u))) == [bin(v).count("1") for v in values]
    assert as_ints(run(f"clz.b{bits}", array(values, u))) == [bits - v.bit_length() for v in values]
    found = [v.bit_length() - 1 if v else 0xFFFFFFFF for v in values]
    assert as_ints(run(f"bfind.u{bits}", array(values, u))) == found
    assert as_ints(run(f"bfind.shiftamt.u{bits}", array(values, u))) == \
        [bits - 1 - f if f != 0xFFFFFFFF else f for f in found]
    found_signed = [(~v if v < 0 else v).bit_length() - 1 if v not in (0, -1) else 0xFFFFFFFF for v in signed_values]
    assert as_ints(run(f"bfind.s{bits}", array(signed_values, s))) == found_signed


@pytest.mark.parametrize("types", [("u32", "u32"), ("u32", "s32"), ("s32", "u32"), ("s32", "s32")])
def test_dot_products(types: tuple[str, str]) -> None:
    a, b = (bits_of(v, 32) for v in pairs("u32", "dp", *types))
    c = bits_of(integers("u32", len(a), "c"), 32)
    result = "u32" if types == ("u32", "u32") else "s32"

    def parts(value: int, size: int, count: int, is_signed: bool) -> list[int]:
        out = []
        for i in range(count):
            piece = (value >> (size * i)) & ((1 << size) - 1)
            out.append(piece - (1 << size) if is_signed and piece >> (size - 1) else piece)
        return out

    A, B, C = array(a, "u32"), array(b, "u32"), array(c, "u32")
    got = bits_of(as_ints(run(f"dp4a.{types[0]}.{types[1]}", A, B, C)), 32)
    want = [(z + sum(x * y for x, y in zip(parts(p, 8, 4, types[0] == "s32"), parts(q, 8, 4, types[1] == "s32"))))
            & 0xFFFFFFFF for p, q, z in zip(a, b, c)]
    assert got == want
    for half in ("lo", "hi"):
        got = bits_of(as_ints(run(f"dp2a.{half}.{types[0]}.{types[1]}", A, B, C)), 32)
        first = 2 if half == "hi" else 0
        want = [(z + sum(x * y for x, y in zip(parts(p, 16, 2, types[0] == "s32"),
                                                 parts(q, 8, 4, types[1] == "s32")[first:first + 2]))) & 0xFFFFFFFF
                for p, q, z in zip(a, b, c)]
        assert got == want, half
    del result


# -- floating point: an exact oracle -----------------------------------------------------------
#: precision (significant bits), lowest normal exponent, highest exponent
FORMATS = {"f16": (11, -14, 15), "bf16": (8, -126, 127), "f32": (24, -126, 127), "f64": (53, -1022, 1023)}
BITS = {"f16": np.uint16, "bf16": np.uint16, "f32": np.uint32, "f64": np.uint64}


def to_floats(raw: np.ndarray, t: str) -> list[float]:
    """Float bits (any numpy view) to Python floats."""
    raw = np.asarray(raw).view(BITS[t])
    with np.errstate(invalid="ignore"):
        return _to_floats(raw, t)


def _to_floats(raw: np.ndarray, t: str) -> list[float]:
    if t == "bf16":
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64).tolist()
    return raw.view({"f16": np.float16, "f32": np.float32, "f64": np.float64}[t]).astype(np.float64).tolist()


def to_bits(values: list[float], t: str) -> np.ndarray:
    """Python floats exactly representable in ``t`` to its bits."""
    if t == "bf16":
        return (np.array(values, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return np.array(values, dtype=np.float64).astype({"f16": np.float16, "f32": np.float32, "f64": np.float64}[t]).view(BITS[t])


def round_fraction(x: Fraction, t: str, mode: str) -> float:
    """The exact value x rounded to format t (IEEE 754, with subnormals) in a PTX rounding mode."""
    precision, lowest, highest = FORMATS[t]
    negative = x < 0
    magnitude = -x if negative else x
    exponent = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    if Fraction(2) ** exponent > magnitude:
        exponent -= 1
    exponent = max(exponent, lowest)
    quantum = Fraction(2) ** (exponent - precision + 1)
    scaled = magnitude / quantum
    whole = scaled.numerator // scaled.denominator
    rest = scaled - whole
    up = {"rn": rest > Fraction(1, 2) or (rest == Fraction(1, 2) and whole % 2 == 1),
          "rz": False, "rm": negative and rest > 0, "rp": (not negative) and rest > 0}[mode]
    value = (whole + up) * quantum
    largest = (2 - Fraction(2) ** (1 - precision)) * Fraction(2) ** highest
    if value > largest:
        to_infinity = {"rn": True, "rz": False, "rm": negative, "rp": not negative}[mode]
        value = None if to_infinity else largest
    result = math.inf if value is None else float(value)
    return -result if negative else result


def exact_zero_sign(addends: list[float], mode: str) -> float:
    """IEEE's sign of an exactly zero sum."""
    if all(v == 0 for v in addends) and len({math.copysign(1, v) for v in addends}) == 1:
        return addends[0]
    return -0.0 if mode == "rm" else 0.0


def flushed(value: float, t: str) -> float:
    precision, lowest, _ = FORMATS[t]
    return math.copysign(0.0, value) if value != 0 and abs(value) < 2.0 ** lowest else value


def reference(op: str, t: str, mode: str, xs: list[float]) -> float:
    """What PTX computes for one lane (NaN where the result is a NaN, of any payload)."""
    if any(math.isnan(x) for x in xs):
        return math.nan
    if op == "rcp":
        op, xs = "div", [1.0, xs[0]]
    if not all(math.isfinite(x) for x in xs):
        with np.errstate(all="ignore"):
            a = [np.float64(x) for x in xs]
            return float({"add": lambda: a[0] + a[1], "sub": lambda: a[0] - a[1], "mul": lambda: a[0] * a[1],
                          "fma": lambda: a[0] * a[1] + a[2], "div": lambda: a[0] / a[1],
                          "sqrt": lambda: np.sqrt(a[0])}[op]())
    f = [Fraction(x) for x in xs]
    if op == "sqrt":
        if xs[0] < 0:
            return math.nan
        if xs[0] == 0:
            return xs[0]
        nearest = round_fraction(Fraction(math.sqrt(xs[0])), t, "rn") if t != "f64" else math.sqrt(xs[0])
        if mode == "rn":
            return nearest
        square = Fraction(nearest) ** 2
        if square == f[0]:
            return nearest
        tiny = Fraction(1, 2 ** 1100)
        if square > f[0]:  # nearest is above the root
            return round_fraction(Fraction(nearest) - tiny, t, "rm") if mode in ("rz", "rm") else nearest
        return round_fraction(Fraction(nearest) + tiny, t, "rp") if mode == "rp" else nearest
    if op == "div":
        if xs[1] == 0:
            with np.errstate(all="ignore"):
                return float(np.float64(xs[0]) / np.float64(xs[1]))
        exact = f[0] / f[1]
        if exact == 0:
            return math.copysign(0.0, xs[0]) * math.copysign(1, xs[1])
        return round_fraction(exact, t, mode)
    if op == "mul":
        exact = f[0] * f[1]
        if exact == 0:
            return math.copysign(1, xs[0]) * math.copysign(1, xs[1]) * 0.0
        return round_fraction(exact, t, mode)
    if op in ("add", "sub"):
        y = xs[1] if op == "add" else -xs[1]
        exact = f[0] + Fraction(y)
        return exact_zero_sign([xs[0], y], mode) if exact == 0 else round_fraction(exact, t, mode)
    product = f[0] * f[1]
    product_value = math.copysign(1, xs[0]) * math.copysign(1, xs[1]) * 0.0 if product == 0 else 1.0
    exact = product + f[2]
    return exact_zero_sign([product_value, xs[2]], mode) if exact == 0 else round_fraction(exact, t, mode)


def float_inputs(t: str, count: int, *salt: object) -> list[float]:
    """Special values (zeros, subnormals, extremes, infinities, NaN), values near 1, and random
    bit patterns, as Python floats of format t."""
    precision, lowest, highest = FORMATS[t]
    smallest = 2.0 ** (lowest - precision + 1)
    largest = float((2 - Fraction(2) ** (1 - precision)) * Fraction(2) ** highest)
    specials = [0.0, -0.0, smallest, -smallest, 2.0 ** lowest - smallest, 2.0 ** lowest, -(2.0 ** lowest), largest,
                -largest, math.inf, -math.inf, math.nan, 1.0, -1.0, 0.5, 3.0, 1.0 + 2.0 ** (1 - precision)]
    generator = rng(t, *salt)
    raw = generator.integers(0, 1 << 63, size=count, dtype=np.uint64)
    raw = raw.astype(BITS[t]) if t != "f64" else raw ^ (raw << np.uint64(1))
    random = to_floats(raw, t)
    moderate = [round_fraction(Fraction(float(x)), t, "rn") for x in generator.normal(0, 4, size=count // 2)]
    values = specials + moderate + random
    return values[:count]


def combos(t: str, sources: int, *salt: object) -> list[list[float]]:
    """Operand lists: the special values against each other, then random ones."""
    columns = [float_inputs(t, 1500, "operand", k, *salt) for k in range(sources)]
    specials = columns[0][:17]
    if sources == 1:
        return [specials + columns[0]]
    grid = [(x, y) for x in specials for y in specials]
    out = [[g[0] for g in grid] + columns[0], [g[1] for g in grid] + columns[1]]
    if sources == 3:
        out.append(columns[2][:len(grid)] + columns[2])
        # cancellation: c near -a*b
        for lane in range(len(grid), len(grid) + 200):
            a, b = out[0][lane], out[1][lane]
            if math.isfinite(a * b) and a * b != 0:
                out[2][lane] = round_fraction(-Fraction(a) * Fraction(b), t, "rz")
    elif sources == 2:
        for lane in range(len(grid), len(grid) + 200):  # near cancellation in add/sub
            out[1][lane] = -out[0][lane] if lane % 2 else out[0][lane]
    return out


def same(got: list[float], want: list[float]) -> list[int]:
    """Lanes where the results differ (bit for bit: -0 is not +0; any NaN matches a NaN)."""
    return [i for i, (g, w) in enumerate(zip(got, want))
            if not ((math.isnan(g) and math.isnan(w)) or (g == w and math.copysign(1, g) == math.copysign(1, w)))]


SOURCES_OF = {"add": 2, "sub": 2, "mul": 2, "fma": 3, "div": 2, "sqrt": 1, "rcp": 1}
ROUNDED_CASES = [(t, op, mode) for t in ("f32", "f64", "f16", "bf16") for op in SOURCES_OF
                 for mode in ("rn", "rz", "rm", "rp")
                 if not (t in ("f16", "bf16") and op in ("div", "sqrt", "rcp")) and not (t == "f64" and op == "fma" and mode != "rn")]


@pytest.mark.parametrize("t,op,mode", ROUNDED_CASES)
def test_float_rounded(t: str, op: str, mode: str) -> None:
    """add sub mul fma div sqrt rcp in every rounding mode, bit for bit against exact arithmetic."""
    operands = combos(t, SOURCES_OF[op], op)
    got = to_floats(run(f"{op}.{mode}.{t}", *[to_bits(column, t) for column in operands]), t)
    want = [reference(op, t, mode, list(xs)) for xs in zip(*operands)]
    wrong = same(got, want)
    assert not wrong, [(list(zip(*operands))[i], got[i], want[i]) for i in wrong[:5]]


def test_f64_fma_directed_is_refused() -> None:
    with pytest.raises(Unsupported):
        compile_instruction(instruction("fma.rz.f64"))


@pytest.mark.parametrize("t", ["f32", "f16"])
@pytest.mark.parametrize("op", ["add", "mul", "fma"])
def test_float_ftz_sat(t: str, op: str) -> None:
    """.ftz flushes subnormal inputs and results to signed zero; .sat clamps to [0, 1], NaN to 0."""
    operands = combos(t, SOURCES_OF[op], op, "ftz")
    inputs = [to_bits(column, t) for column in operands]
    for modifiers in ("ftz", "sat", "ftz.sat"):
        got = to_floats(run(f"{op}.rn.{modifiers}.{t}", *inputs), t)
        want = []
        for xs in zip(*operands):
            xs = [flushed(x, t) for x in xs] if "ftz" in modifiers else list(xs)
            value = reference(op, t, "rn", xs)
            if "ftz" in modifiers:
                value = flushed(value, t)
            if "sat" in modifiers:
                value = 0.0 if math.isnan(value) or value <= 0 else min(value, 1.0)
            want.append(value)
        wrong = same(got, want)
        assert not wrong, (modifiers, [(list(zip(*operands))[i], got[i], want[i]) for i in wrong[:5]])


@pytest.mark.parametrize("t", ["f16x2", "bf16x2"])
@pytest.mark.parametrize("op", ["add", "sub", "mul", "fma", "fma.relu", "min", "max", "neg", "abs"])
def test_packed_halves(t: str, op: str) -> None:
    """Packed f16x2/bf16x2 compute each half as the scalar instruction does."""
    half = t[:-2]
    base = op.split(".")[0]
    count = {"fma": 3, "neg": 1, "abs": 1}.get(base, 2)
    low = combos(half, count, op, "low")
    high = [list(reversed(column)) for column in combos(half, count, op, "high")]
    packed = [(to_bits(h, half).astype(np.uint32) << 16) | to_bits(l, half).astype(np.uint32) for l, h in zip(low, high)]
    modifiers = op.split(".")[1:]
    rounding = [] if base in ("min", "max", "neg", "abs") else ["rn"]
    got = run(".".join([base, *rounding, *modifiers, t]), *packed)
    for columns, shift in ((low, 0), (high, 16)):
        part = to_floats(((np.asarray(got).view(np.uint32) >> shift) & 0xFFFF).astype(np.uint16), half)
        scalar = to_floats(run(".".join([base, *rounding, *modifiers, half]), *[to_bits(c, half) for c in columns]), half)
        assert not same(part, scalar)
    if base in ("add", "fma"):  # and the scalar form itself is right
        scalar = to_floats(run(f"{base}.rn.{half}", *[to_bits(c, half) for c in low]), half)
        want = [reference(base, half, "rn", list(xs)) for xs in zip(*low)]
        assert not same(scalar, want)


def _ptx_min_max(values: list[float], op: str, propagate: bool) -> float:
    """PTX min/max: -0 < +0; NaN loses (or, with .NaN, wins); no number gives NaN."""
    if propagate and any(math.isnan(v) for v in values):
        return math.nan
    numbers = [v for v in values if not math.isnan(v)]
    if not numbers:
        return math.nan
    key = lambda v: (v, math.copysign(1, v))  # noqa: E731
    return min(numbers, key=key) if op == "min" else max(numbers, key=key)


@pytest.mark.parametrize("t", ["f32", "f64", "f16", "bf16"])
@pytest.mark.parametrize("op", ["min", "max"])
def test_float_min_max(t: str, op: str) -> None:
    a, b = combos(t, 2, op)
    A, B = to_bits(a, t), to_bits(b, t)
    got = to_floats(run(f"{op}.{t}", A, B), t)
    assert not same(got, [_ptx_min_max([x, y], op, False) for x, y in zip(a, b)])
    got = to_floats(run(f"{op}.NaN.{t}", A, B), t)
    assert not same(got, [_ptx_min_max([x, y], op, True) for x, y in zip(a, b)])
    nan_bits = np.asarray(run(f"{op}.{t}", to_bits([math.nan] * 32, t), to_bits([math.nan] * 32, t))).view(BITS[t])
    assert int(nan_bits[0]) == {"f16": 0x7FFF, "bf16": 0x7FFF, "f32": 0x7FFFFFFF, "f64": 0x7FFFFFFFFFFFFFFF}[t]
    if t in ("f16", "bf16"):
        got = to_floats(run(f"{op}.relu.{t}", A, B), t)
        want = []
        for x, y in zip(a, b):
            value = _ptx_min_max([x, y], op, False)
            want.append(0.0 if value < 0 else value)
        assert not same(got, want)
    if t == "f32":  # three sources (PTX 8.8)
        c = list(reversed(a))
        got = to_floats(compile_instruction(instruction(f"{op}.f32", 3))(A, B, to_bits(c, t))[0], t)
        assert not same(got, [_ptx_min_max([x, y, z], op, False) for x, y, z in zip(a, b, c)])


@pytest.mark.parametrize("t", ["f32", "f64", "f16", "bf16"])
def test_sign_operations(t: str) -> None:
    a, b = combos(t, 2, "sign")
    A, B = to_bits(a, t), to_bits(b, t)
    width_bits = {"f16": 16, "bf16": 16, "f32": 32, "f64": 64}[t]
    sign = 1 << (width_bits - 1)
    raw_a = [int(v) for v in np.asarray(A).view(BITS[t])]
    raw_b = [int(v) for v in np.asarray(B).view(BITS[t])]
    assert [int(v) for v in np.asarray(run(f"neg.{t}", A)).view(BITS[t])] == [v ^ sign for v in raw_a]
    assert [int(v) for v in np.asarray(run(f"abs.{t}", A)).view(BITS[t])] == [v & ~sign for v in raw_a]
    if t in ("f32", "f64"):
        got = [int(v) for v in np.asarray(run(f"copysign.{t}", A, B)).view(BITS[t])]
        assert got == [(y & ~sign) | (x & sign) for x, y in zip(raw_a, raw_b)]
        flushed_abs = to_floats(run(f"abs.ftz.{t}", A), t) if t == "f32" else None
        if flushed_abs is not None:
            assert not same(flushed_abs, [abs(flushed(x, t)) for x in a])


@pytest.mark.parametrize("t", ["f32", "f64"])
def test_testp(t: str) -> None:
    (a,) = combos(t, 1, "testp")
    lowest = 2.0 ** FORMATS[t][1]
    checks = {"finite": math.isfinite, "infinite": math.isinf, "number": lambda v: not math.isnan(v),
              "notanumber": math.isnan, "normal": lambda v: math.isfinite(v) and abs(v) >= lowest,
              "subnormal": lambda v: v != 0 and abs(v) < lowest}
    for name, check in checks.items():
        assert list(run(f"testp.{name}.{t}", to_bits(a, t))) == [check(v) for v in a], name


APPROX_CASES = [("sin", "f32"), ("cos", "f32"), ("lg2", "f32"), ("ex2", "f32"), ("tanh", "f32"), ("rsqrt", "f32"),
                ("rcp", "f32"), ("sqrt", "f32"), ("ex2", "f16"), ("ex2", "bf16"), ("tanh", "f16"), ("tanh", "bf16"),
                ("rcp", "f64"), ("rsqrt", "f64")]


@pytest.mark.parametrize("op,t", APPROX_CASES)
def test_approx_functions(op: str, t: str) -> None:
    """.approx results within PTX's documented bounds of the exact function (numpy in double),
    with the documented special values."""
    (a,) = combos(t, 1, "approx", op)
    a = [x for x in a if not (op in ("sin", "cos") and math.isfinite(x) and abs(x) > 100 * math.pi)]
    a += {"lg2": [0.0, -0.0, -1.0, math.inf], "ex2": [-math.inf, 200.0, -200.0], "rsqrt": [-1.0, 0.0, -0.0, math.inf],
          "tanh": [50.0, -50.0], "rcp": [0.0, -0.0]}.get(op, [])
    a = [round_fraction(Fraction(x), t, "rn") if math.isfinite(x) else x for x in a]
    ftz = ".ftz" if t == "f64" else ""
    got = to_floats(run(f"{op}.approx{ftz}.{t}", to_bits(a, t)), t)
    exact = {"sin": np.sin, "cos": np.cos, "lg2": np.log2, "ex2": np.exp2, "tanh": np.tanh,
             "rsqrt": lambda v: 1 / np.sqrt(v), "rcp": lambda v: 1 / v, "sqrt": np.sqrt}[op]
    precision = FORMATS[t][0]
    for x, g in zip(a, got):
        if t == "f64" and x != 0 and abs(x) < 2.0 ** -1022:
            x = math.copysign(0.0, x)  # .ftz on f64
        with np.errstate(all="ignore"):
            w = float(exact(np.float64(x)))
        if math.isfinite(w) and w != 0:
            w = round_fraction(Fraction(w), t, "rn")  # overflows to infinity as the format does
        if math.isnan(w):
            assert math.isnan(g), (x, g)
        elif math.isinf(w) or w == 0:
            assert g == w and math.copysign(1, g) == math.copysign(1, w) or abs(g) < 2.0 ** -126, (x, g, w)
        elif op in ("sin", "cos"):
            assert abs(g - w) <= 2.0 ** -20.5, (x, g, w)
        else:
            # 2 ulp of the format (tanh: 2^-11 relative, PTX's bound for tanh.approx.f32)
            bound = 2.0 ** -10.98 if op == "tanh" else 2.0 ** (2 - precision)
            if abs(w) < 2.0 ** FORMATS[t][1]:
                continue  # results in the subnormal range: flushed or within an absolute ulp
            assert abs(g - w) <= bound * abs(w), (op, x, g, w)


def test_div_approx_and_full() -> None:
    a, b = combos("f32", 2, "div")
    A, B = to_bits(a, "f32"), to_bits(b, "f32")
    full = to_floats(run("div.full.f32", A, B), "f32")
    approx = to_floats(run("div.approx.f32", A, B), "f32")
    for x, y, f, g in zip(a, b, full, approx):
        with np.errstate(all="ignore"):
            w = float(np.float64(x) / np.float64(y))
        if math.isfinite(w) and w != 0:
            w = round_fraction(Fraction(w), "f32", "rn")
        if 2.0 ** 126 < abs(y) < math.inf:  # documented: the reciprocal underflows
            assert (math.isnan(g) if math.isinf(x) or math.isnan(x) else g == 0), (x, y, g)
            continue
        for result in (f, g):
            if math.isnan(w):
                assert math.isnan(result)
            elif math.isinf(w) or abs(w) < 2.0 ** -126:
                assert result == w or abs(result) <= 2.0 ** -126 or math.isinf(result) == math.isinf(w)
            else:
                assert abs(result - w) <= 2.0 ** -22 * abs(w), (x, y, result, w)


# -- comparison and selection ------------------------------------------------------------------
INTEGER_RELATIONS = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
                     "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b}
UNSIGNED_RELATIONS = {"lo": "lt", "ls": "le", "hi": "gt", "hs": "ge"}


@pytest.mark.parametrize("ptx_type", ["s16", "u16", "b16", "s32", "u32", "b32", "s64", "u64", "b64"])
def test_setp_integers(ptx_type: str) -> None:
    kind = "s" if ptx_type[0] == "s" else "u"
    t = kind + ptx_type[1:]
    a, b = pairs(t, "setp")
    A, B = array(a, t), array(b, t)
    relations = dict(INTEGER_RELATIONS)
    if kind != "s":
        relations.update({name: INTEGER_RELATIONS[base] for name, base in UNSIGNED_RELATIONS.items()})
    for name, relation in relations.items():
        if ptx_type[0] == "b" and name not in ("eq", "ne", "lo", "ls", "hi", "hs"):
            continue
        assert list(run(f"setp.{name}.{ptx_type}", A, B)) == [relation(x, y) for x, y in zip(a, b)], name
    if kind == "s":  # lo/hi compare signed values as unsigned
        got = list(run(f"setp.lo.{ptx_type}", A, B))
        assert got == [(x % (1 << width(t))) < (y % (1 << width(t))) for x, y in zip(a, b)]


FLOAT_RELATIONS = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b and not (math.isnan(a) or math.isnan(b)),
    "lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
    "equ": lambda a, b: a == b or math.isnan(a) or math.isnan(b), "neu": lambda a, b: not a == b,
    "ltu": lambda a, b: not a >= b, "leu": lambda a, b: not a > b, "gtu": lambda a, b: not a <= b,
    "geu": lambda a, b: not a < b, "num": lambda a, b: not (math.isnan(a) or math.isnan(b)),
    "nan": lambda a, b: math.isnan(a) or math.isnan(b),
}


@pytest.mark.parametrize("t", ["f32", "f64", "f16", "bf16"])
def test_setp_floats(t: str) -> None:
    a, b = combos(t, 2, "setp")
    A, B = to_bits(a, t), to_bits(b, t)
    for name, relation in FLOAT_RELATIONS.items():
        assert list(run(f"setp.{name}.{t}", A, B)) == [relation(x, y) for x, y in zip(a, b)], name
    if t == "f32":  # .ftz: subnormals compare as zero
        got = list(run("setp.eq.ftz.f32", A, B))
        assert got == [flushed(x, t) == flushed(y, t) for x, y in zip(a, b)]


@pytest.mark.parametrize("combine", ["and", "or", "xor"])
def test_setp_combined_and_pair(combine: str) -> None:
    """setp.lt.and.s32 p|q, a, b, c: p = (a<b) AND c, q = !(a<b) AND c; a negated c comes in
    already negated (the lowering applies ``!``)."""
    a, b = pairs("s32", "pair")
    c = [bool(i % 3) for i in range(len(a))]
    ins = Instruction("setp", ("lt", combine, "s32"), [PredicatePair(Register("%p"), Register("%q")),
                                                      Register("%a"), Register("%b"), Register("%c")])
    assert SEMANTICS["setp"].signature(ins).destinations == ("pred", "pred")
    p, q = compile_instruction(ins)(array(a, "s32"), array(b, "s32"), np.array(c))
    operation = {"and": lambda x, y: x and y, "or": lambda x, y: x or y, "xor": lambda x, y: x != y}[combine]
    assert list(p) == [operation(x < y, z) for x, y, z in zip(a, b, c)]
    assert list(q) == [operation(not x < y, z) for x, y, z in zip(a, b, c)]
    single = Instruction("setp", ("lt", "s32"), [Register("%p"), Register("%a"), Register("%b")])
    assert SEMANTICS["setp"].signature(single).destinations == ("pred",)


@pytest.mark.parametrize("t", ["f16x2", "bf16x2"])
def test_setp_packed(t: str) -> None:
    """setp.f16x2 p|q: p compares the low halves, q the high ones."""
    half = t[:-2]
    a, b = combos(half, 2, "packed setp")
    c, d = list(reversed(a)), list(reversed(b))
    A = (to_bits(c, half).astype(np.uint32) << 16) | to_bits(a, half).astype(np.uint32)
    B = (to_bits(d, half).astype(np.uint32) << 16) | to_bits(b, half).astype(np.uint32)
    for name in ("lt", "equ", "ne", "geu"):
        p, q = run(f"setp.{name}.{t}", A, B)
        relation = FLOAT_RELATIONS[name]
        assert list(p) == [relation(x, y) for x, y in zip(a, b)] and list(q) == [relation(x, y) for x, y in zip(c, d)]


def test_set_selp_slct() -> None:
    a, b = pairs("s32", "set")
    A, B = array(a, "s32"), array(b, "s32")
    assert as_ints(run("set.lt.u32.s32", A, B)) == [0xFFFFFFFF if x < y else 0 for x, y in zip(a, b)]
    assert as_ints(run("set.ge.s32.s32", A, B)) == [-1 if x >= y else 0 for x, y in zip(a, b)]
    x32, y32 = combos("f32", 2, "set")
    got = run("set.gtu.f32.f32", to_bits(x32, "f32"), to_bits(y32, "f32")).tolist()
    assert got == [1.0 if FLOAT_RELATIONS["gtu"](x, y) else 0.0 for x, y in zip(x32, y32)]
    p = np.array([bool(i % 2) for i in range(len(a))])
    assert as_ints(run("selp.s32", A, B, p)) == [x if c else y for x, y, c in zip(a, b, p)]
    assert not same(to_floats(run("selp.f64", to_bits(x32, "f64"), to_bits(y32, "f64"), p[:len(x32)]), "f64"),
                    [x if c else y for x, y, c in zip(x32, y32, p)])
    c = integers("s32", len(a), "slct")
    assert as_ints(run("slct.s32.s32", A, B, array(c, "s32"))) == [x if z >= 0 else y for x, y, z in zip(a, b, c)]
    cf = x32 + [0.0] * (len(a) - len(x32))
    got = as_ints(run("slct.u32.f32", A, B, to_bits(cf, "f32")))
    assert got == [(x if z >= 0 else y) & 0xFFFFFFFF for x, y, z in zip(a, b, cf)]


# -- conversion --------------------------------------------------------------------------------
INTS = ["s8", "s16", "s32", "s64", "u8", "u16", "u32", "u64"]
FLOATS = ["f16", "bf16", "f32", "f64"]


def _range(t: str) -> tuple[int, int]:
    bits = width(t)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed(t) else (0, (1 << bits) - 1)


@pytest.mark.parametrize("destination", INTS)
def test_cvt_integer_to_integer(destination: str) -> None:
    for source in INTS:
        values = integers(source, 512, "cvt", destination)
        V = array(values, source)
        got = as_ints(run(f"cvt.{destination}.{source}", V))
        assert got == [wrap(v, destination) for v in values], source
        low, high = _range(destination)
        got = as_ints(run(f"cvt.sat.{destination}.{source}", V))
        assert got == [min(max(v, low), high) for v in values], source


def _round_integral(x: float, mode: str) -> int:
    exact = Fraction(x)
    floor = exact.numerator // exact.denominator
    rest = exact - floor
    if mode == "rzi":
        return floor if x >= 0 or rest == 0 else floor + 1
    if mode == "rmi":
        return floor
    if mode == "rpi":
        return floor + (rest > 0)
    return floor + (rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1))


FLOAT_TO_INT = [(s, d, m) for s in FLOATS for d in INTS for m in ("rzi", "rni")] + \
    [(s, d, m) for s, d in (("f32", "s32"), ("f64", "u64"), ("f32", "u8"), ("f64", "s64")) for m in ("rmi", "rpi")]


@pytest.mark.parametrize("source,destination,mode", FLOAT_TO_INT)
def test_cvt_float_to_integer(source: str, destination: str, mode: str) -> None:
    """Rounded to an integer, saturated to the destination's range; NaN gives 0, or
    1 << (bits - 1) from f64 or into 64 bits."""
    (values,) = combos(source, 1, "cvt", destination)
    values += [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 255.5, 65535.0, -129.0, 2.0 ** 31, -(2.0 ** 31), 2.0 ** 63, 2.0 ** 64]
    values = [round_fraction(Fraction(v), source, "rn") if math.isfinite(v) else v for v in values]
    got = as_ints(run(f"cvt.{mode}.{destination}.{source}", to_bits(values, source)))
    low, high = _range(destination)
    want = []
    for v in values:
        if math.isnan(v):
            nan = 1 << (width(destination) - 1) if source == "f64" or width(destination) == 64 else 0
            want.append(nan - (1 << width(destination)) if nan and signed(destination) else nan)
        elif math.isinf(v):
            want.append(high if v > 0 else low)
        else:
            want.append(min(max(_round_integral(v, mode), low), high))
    assert got == want


FLOAT_TO_FLOAT = [(s, d, m) for s in FLOATS for d in FLOATS if s != d for m in ("rn", "rz", "rm", "rp")]


@pytest.mark.parametrize("source,destination,mode", FLOAT_TO_FLOAT)
def test_cvt_float_to_float(source: str, destination: str, mode: str) -> None:
    (values,) = combos(source, 1, "cvt", destination)
    got = to_floats(run(f"cvt.{mode}.{destination}.{source}", to_bits(values, source)), destination)
    want = [v if not math.isfinite(v) or v == 0 else round_fraction(Fraction(v), destination, mode) for v in values]
    assert not same(got, want)


@pytest.mark.parametrize("t", FLOATS)
@pytest.mark.parametrize("mode", ["rni", "rzi", "rmi", "rpi"])
def test_cvt_round_to_integral(t: str, mode: str) -> None:
    (values,) = combos(t, 1, "integral")
    values += [0.5, -0.5, 1.5, 2.5, -2.5, 0.25, -0.75]
    got = to_floats(run(f"cvt.{mode}.{t}.{t}", to_bits(values, t)), t)
    want = []
    for v in values:
        if not math.isfinite(v) or v == 0:
            want.append(v)
        else:
            rounded = float(_round_integral(v, mode))
            want.append(math.copysign(rounded, v) if rounded == 0 else rounded)
    assert not same(got, want)


INT_TO_FLOAT = [(s, d, m) for s in ("s32", "u32", "s64", "u64") for d in FLOATS for m in ("rn", "rz", "rm", "rp")] + \
    [(s, d, "rn") for s in ("s8", "u8", "s16", "u16") for d in FLOATS]


@pytest.mark.parametrize("source,destination,mode", INT_TO_FLOAT)
def test_cvt_integer_to_float(source: str, destination: str, mode: str) -> None:
    values = integers(source, 1024, "to float", destination)
    values += [wrap((1 << 24) + 1, source), wrap((1 << 53) + 1, source), wrap(0x7FFFFF80_00000001, source),
               wrap(65520, source), wrap(65519, source)]
    got = to_floats(run(f"cvt.{mode}.{destination}.{source}", array(values, source)), destination)
    want = [round_fraction(Fraction(v), destination, mode) if v else 0.0 for v in values]
    assert not same(got, want)


def test_cvt_ftz_sat_relu() -> None:
    (values,) = combos("f64", 1, "ftz sat")
    got = to_floats(run("cvt.rn.ftz.f32.f64", to_bits(values, "f64")), "f32")
    want = [flushed(round_fraction(Fraction(v), "f32", "rn"), "f32") if math.isfinite(v) and v else v for v in values]
    assert not same(got, want)
    got = to_floats(run("cvt.rn.sat.f16.f64", to_bits(values, "f64")), "f16")
    want = []
    for v in values:
        value = round_fraction(Fraction(v), "f16", "rn") if math.isfinite(v) and v else v
        want.append(0.0 if math.isnan(value) or value <= 0 else min(value, 1.0))
    assert not same(got, want)
    (singles,) = combos("f32", 1, "relu")
    got = to_floats(run("cvt.rn.relu.bf16.f32", to_bits(singles, "f32")), "bf16")
    want = []
    for v in singles:
        value = round_fraction(Fraction(v), "bf16", "rn") if math.isfinite(v) and v else v
        want.append(0.0 if value < 0 else value)
    assert not same(got, want)
    got = to_floats(run("cvt.ftz.f64.f32", to_bits(singles, "f32")), "f64")
    assert not same(got, [flushed(v, "f32") for v in singles])


@pytest.mark.parametrize("t", ["f16x2", "bf16x2"])
@pytest.mark.parametrize("relu", [False, True])
def test_cvt_pack_two_floats(t: str, relu: bool) -> None:
    """cvt.rn.f16x2.f32 d, a, b: a converted into the upper half, b into the lower."""
    half = t[:-2]
    a, b = combos("f32", 2, "pack")
    got = np.asarray(run(f"cvt.rn{'.relu' if relu else ''}.{t}.f32", to_bits(a, "f32"), to_bits(b, "f32"))).view(np.uint32)
    for values, shift in ((a, 16), (b, 0)):
        part = to_floats(((got >> shift) & 0xFFFF).astype(np.uint16), half)
        want = [round_fraction(Fraction(v), half, "rn") if math.isfinite(v) and v else v for v in values]
        if relu:
            want = [0.0 if w < 0 else w for w in want]
        assert not same(part, want)


@pytest.mark.parametrize("mode", ["rna", "rn", "rz"])
def test_cvt_tf32(mode: str) -> None:
    (values,) = combos("f32", 1, "tf32")
    got = to_floats(run(f"cvt.{mode}.tf32.f32", to_bits(values, "f32")), "f32")
    want = []
    for v in values:
        if not math.isfinite(v) or v == 0:
            want.append(v)
            continue
        exact = Fraction(v)
        if mode == "rna":  # ties away from zero: a nearest rounding whose ties go up in magnitude
            precision_quantum = Fraction(2) ** (max(math.frexp(abs(v))[1] - 1, -126) - 10)
            truncated = (abs(exact) // precision_quantum) * precision_quantum
            remainder = abs(exact) - truncated
            magnitude = truncated + (precision_quantum if remainder >= precision_quantum / 2 else 0)
            value = float(magnitude) if magnitude < Fraction(2) ** 128 else math.inf
            want.append(math.copysign(value, v))
        else:
            quantum = Fraction(2) ** (max(math.frexp(abs(v))[1] - 1, -126) - 10)
            scaled = abs(exact) / quantum
            whole = scaled.numerator // scaled.denominator
            rest = scaled - whole
            if mode == "rn" and (rest > Fraction(1, 2) or (rest == Fraction(1, 2) and whole % 2)):
                whole += 1
            magnitude = whole * quantum
            want.append(math.copysign(float(magnitude) if magnitude < Fraction(2) ** 128 else math.inf, v))
    assert not same(got, want)


def test_unsupported_forms_are_refused() -> None:
    """What is not implemented says so instead of computing something else."""
    for text in ("cvt.rn.satfinite.e4m3x2.f32", "lop3.or.b32", "fma.rz.f64", "shf.l.b64",
                 "add.u16x2", "min.xorsign.abs.f32", "cvt.pack.sat.s8.s32.b32"):
        with pytest.raises(Unsupported):
            ins = instruction(text)
            semantics = SEMANTICS[ins.opcode]
            signature = semantics.signature(ins)
            Compiled(lambda lanes, v, ins=ins: semantics.emit(lanes, ins, v), signature.sources, signature.destinations)


@pytest.mark.parametrize("t,nan", [("f32", 0x7FFFFFFF), ("f16", 0x7FFF), ("bf16", 0x7FFF)])
def test_nan_results_are_canonical(t: str, nan: int) -> None:
    """A GPU has a single NaN in these formats: invalid operations and NaN operands give it,
    whatever the payload (x86 gives 0xFFC00000 for inf - inf and keeps payloads)."""
    storage_type = BITS[t]
    infinity = to_bits([math.inf] * 32, t)
    payload = np.full(32, {"f32": 0xFFC01234, "f16": 0xFE12, "bf16": 0xFF92}[t], dtype=storage_type)
    one = to_bits([1.0] * 32, t)
    for text, inputs in ((f"sub.rn.{t}", (infinity, infinity)), (f"add.rn.{t}", (payload, one)),
                         (f"mul.rz.{t}", (payload, one)), (f"fma.rn.{t}", (payload, one, one))):
        assert set(np.asarray(run(text, *inputs)).view(storage_type).tolist()) == {nan}, text
    if t == "f32":
        assert set(np.asarray(run("cvt.rn.f32.f64", np.full(32, 0xFFF8000000001234, np.uint64))).view(np.uint32).tolist()) == {nan}
        assert set(np.asarray(run("sqrt.rn.f32", to_bits([-1.0] * 32, t))).view(np.uint32).tolist()) == {nan}
