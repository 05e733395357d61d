"""The kernel corpus: CUDA C in tests/compute/kernels, compiled by nvcc to PTX, run by the
in-process engine on numpy data (device pointers are host addresses there) and compared
element by element with numpy references computed here: exact where the operation is exact
(integers, f16/bf16/f32/f64 arithmetic, conversions, fixed-order float reductions), within
CUDA's documented ulp bounds for the math library."""

from __future__ import annotations

import math
import os
import struct
from fractions import Fraction

import numpy as np
import pytest

from tests.compute.corpus_support import (KERNELS, assert_equal, assert_same_floats, bf16_bits, bf16_values,
                                          build_ptx, exact_fma, round_exact, ulp_distance_f32, ulp_distance_f64,
                                          wrap)
from vgpu.compute.engine import KernelError, Program

FULL = 0xFFFFFFFF


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """corpus("reduce") -> the Program of tests/compute/kernels/reduce.cu (built once a session)."""
    folder = tmp_path_factory.mktemp("corpus_ptx")
    programs: dict[str, Program] = {}
    kind = Program
    if os.environ.get("VGPU_CORPUS_ON") == "driver":  # through the CUDA driver API (tests/real_gpu)
        from tests.real_gpu.driver_program import Program as kind

    def load(name: str) -> Program:
        if name not in programs:
            programs[name] = kind.from_ptx(build_ptx(KERNELS / f"{name}.cu", folder))
        return programs[name]

    return load


def run(program: Program, name: str, threads: int, args: list, block: int = 256, **options):
    """Launch ``name`` over enough CTAs of ``block`` threads to cover ``threads``."""
    return program.kernel(name).launch(grid=(-(-threads // block), 1, 1), block=(block, 1, 1), args=args,
                                       **options)


def rows(out: np.ndarray, count: int, n: int) -> list[np.ndarray]:
    return [out[k * n:(k + 1) * n] for k in range(count)]


# --- elementwise integers ----------------------------------------------------------------------

INTEGER_TYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]


def _c_div(a: int, b: int) -> tuple[int, int]:
    quotient = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)
    return quotient, a - b * quotient


@pytest.mark.parametrize("dtype", INTEGER_TYPES, ids=lambda t: np.dtype(t).name)
def test_integer_arithmetic(corpus, dtype):
    info, n = np.iinfo(dtype), 2000 + 37
    bits, signed = info.bits, info.min < 0
    rng = np.random.default_rng(bits + signed)
    a = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
    b = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
    b[n // 2:] = rng.integers(max(info.min, -9), 9, n - n // 2, dtype=dtype)  # small divisors too
    edges = [info.min, info.max, 0, 1, info.max // 2 + 1, 7]
    a[:len(edges)], b[len(edges):2 * len(edges)] = edges, edges
    b[b == 0] = 3
    if signed:
        b[(a == info.min) & (b == -1)] = 2  # INT_MIN / -1 is undefined in C
    shifts = rng.integers(0, bits, n).astype(np.int32)
    out = np.zeros(13 * n, dtype=dtype)
    run(corpus("elementwise"), f"ew_{np.dtype(dtype).name}", n, [n, a, b, shifts, out])

    want = np.zeros((13, n), dtype=object)
    for i, (x, y, s) in enumerate(zip(a.tolist(), b.tolist(), shifts.tolist())):
        q, r = _c_div(x, y)
        values = [x + y, x - y, x * y, q, r, x & y, x | y, x ^ y, x >> s, (x & ((1 << bits) - 1)) << s,
                  min(x, y), max(x, y), (x == y) + 2 * (x < y) + 4 * (x >= y)]
        want[:, i] = [wrap(v, bits, signed) for v in values]
    names = ["add", "sub", "mul", "div", "rem", "and", "or", "xor", "shr", "shl", "min", "max", "compare"]
    for k, name in enumerate(names):
        assert_equal(out[k * n:(k + 1) * n].tolist(), want[k].tolist(), f"{np.dtype(dtype).name} {name}")


# --- elementwise floating point --------------------------------------------------------------------

def _float_inputs(dtype, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    info = np.finfo(dtype)
    scale = 10.0 ** rng.uniform(-4, 4, (3, n))
    a, b, c = (rng.standard_normal((3, n)) * scale).astype(dtype)
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, float(info.max), float(info.tiny), float(info.tiny) / 8,
                -float(info.smallest_subnormal), 1.0, -1.5, 3.0]
    k = len(specials)
    a[:k] = specials
    b[k:2 * k] = specials
    b[2 * k:3 * k] = specials
    a[2 * k:3 * k] = specials[::-1]
    c[3 * k:4 * k] = specials
    return a, b, c


@pytest.mark.parametrize("kind,block", [("f32", 256), ("f32", 96), ("f64", 256), ("f64", 1024)])
def test_float_arithmetic(corpus, kind, block):
    dtype = np.float32 if kind == "f32" else np.float64
    n = 3001
    a, b, c = _float_inputs(dtype, n, seed=block)
    out = np.zeros(10 * n, dtype=dtype)
    run(corpus("elementwise"), f"ew_{kind}", n, [n, a, b, c, out], block=block)
    with np.errstate(all="ignore"):
        compare = ((a < b) + 2 * (a == b) + 4 * (a != b) + 8 * (a >= b)).astype(dtype)
        exact = {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b,
                 "fma": exact_fma(a, b, c, kind).astype(dtype), "compare": compare, "neg": -a,
                 "abs": np.where(a < 0, -a, a)}
    got = dict(zip(["add", "sub", "mul", "div", "fma", "min", "max", "compare", "neg", "abs"], rows(out, 10, n)))
    for name, want in exact.items():
        assert_same_floats(got[name], want, f"{kind} {name}")
    # fmin/fmax: the non-NaN operand wins; zeros of either sign compare equal
    for name, function in (("min", np.fmin), ("max", np.fmax)):
        want = function(a, b)
        ok = (got[name] == want) | (np.isnan(got[name]) & np.isnan(want))
        assert ok.all(), f"{kind} {name}: first wrong at {np.flatnonzero(~ok)[0]}"


def test_f32_unfused_order(corpus):
    n = 4099
    a, b, c = _float_inputs(np.float32, n, seed=5)
    out = np.zeros(4 * n, dtype=np.float32)
    run(corpus("elementwise"), "ew_f32_nofma", n, [n, a, b, c, out])
    with np.errstate(all="ignore"):
        wants = [a * b + c, a * a - b * b, a / c, np.float32(1) / c]
    for name, got, want in zip(["mul_add", "squares", "div", "rcp"], rows(out, 4, n), wants):
        assert_same_floats(got, want, f"f32 {name}")


def _small_halves(rng, n: int, kind: str) -> np.ndarray:
    """f16 or bf16 values (as f32) on a grid of 1/256 in [-8, 8], with special values first."""
    values = (rng.integers(-2048, 2048, n) / 256).astype(np.float32)
    top = 65504.0 if kind == "f16" else 3.3895314e38
    tiny = 2.0 ** -24 if kind == "f16" else 2.0 ** -133
    values[:8] = [0.0, -0.0, np.inf, -np.inf, np.nan, top, tiny, -1.0]
    return values


def _as_half_array(values: np.ndarray, kind: str) -> np.ndarray:
    return values.astype(np.float16) if kind == "f16" else bf16_bits(values)


def _half_values(array: np.ndarray, kind: str) -> np.ndarray:
    return array.astype(np.float32) if kind == "f16" else bf16_values(array)


def _round_half(values: np.ndarray, kind: str) -> np.ndarray:
    """f32 results of one f32 operation on halves, rounded to the half type: exact, since
    f32 carries more than twice the bits of f16 and bf16 (no double-rounding error)."""
    return _as_half_array(np.asarray(values, dtype=np.float32), kind)


def _assert_same_halves(got: np.ndarray, want: np.ndarray, kind: str, what: str) -> None:
    if kind == "f16":
        assert_same_floats(got, want, what)
    else:  # compare the values as f32: NaN payloads may differ
        assert_same_floats(bf16_values(got), bf16_values(want), what)


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_half_arithmetic(corpus, kind):
    n = 1500
    rng = np.random.default_rng(16)
    a, b, c = (_small_halves(rng, n, kind) for _ in range(3))
    b[8:16], c[16:24] = a[:8], a[:8]
    ha, hb, hc = (_as_half_array(v, kind) for v in (a, b, c))
    x, y, z = (_half_values(v, kind) for v in (ha, hb, hc))
    count = 9 if kind == "f16" else 7
    out = np.zeros(count * n, dtype=ha.dtype)
    run(corpus("elementwise"), f"ew_{kind}", n, [n, ha, hb, hc, out])
    got = rows(out, count, n)
    with np.errstate(all="ignore"):
        fma = exact_fma(x, y, z, "f16" if kind == "f16" else "bf16").astype(np.float32)
        wants = {"add": _round_half(x + y, kind), "sub": _round_half(x - y, kind), "mul": _round_half(x * y, kind),
                 "fma": _round_half(fma, kind), "neg": _round_half(-x, kind)}
    for name, index in (("add", 0), ("sub", 1), ("mul", 2), ("fma", 3), ("neg", 6)):
        _assert_same_halves(got[index], wants[name], kind, f"{kind} {name}")
    for name, index, function in (("min", 4, np.fmin), ("max", 5, np.fmax)):
        want, value = function(x, y), _half_values(got[index], kind)
        ok = (value == want) | (np.isnan(value) & np.isnan(want))
        assert ok.all(), f"{kind} {name}: first wrong at {np.flatnonzero(~ok)[0]}"
    if kind == "f16":
        assert_equal(got[7].astype(np.float32), ((x < y) + 2 * (x == y)).astype(np.float32), "f16 compare")
        with np.errstate(all="ignore"):
            quotient = (x.astype(np.float64) / z).astype(np.float16)
        # __hdiv rounds to nearest: one ulp allowed for its reciprocal-based implementation
        distance = np.abs(got[8].view(np.int16).astype(np.int32) - quotient.view(np.int16).astype(np.int32))
        finite = np.isfinite(quotient) & (quotient != 0)
        assert (distance[finite] <= 1).all(), f"f16 div: first wrong at {np.flatnonzero(finite & (distance > 1))[0]}"


def test_half2_arithmetic(corpus):
    n = 700
    rng = np.random.default_rng(2)
    a, b, c = (_small_halves(rng, 2 * n, "f16").astype(np.float16) for _ in range(3))
    out = np.zeros(3 * 2 * n, dtype=np.float16)
    run(corpus("elementwise"), "ew_f16x2", n, [n, a, b, c, out])
    x, y, z = (v.astype(np.float32) for v in (a, b, c))
    with np.errstate(all="ignore"):
        wants = [(x + y).astype(np.float16), (x * y).astype(np.float16),
                 exact_fma(x, y, z, "f16").astype(np.float16)]
    for name, got, want in zip(["add2", "mul2", "fma2"], rows(out, 3, 2 * n), wants):
        assert_same_floats(got, want, f"f16x2 {name}")


# --- conversions ---------------------------------------------------------------------------------

F32_EDGES = [np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.0 ** 31, 2147483520.0,
             -2.0 ** 31, -2147483904.0, 4.3e9, -4.3e9, 1e19, -1e19, 9.2e18, 65504.0, 65519.996, 65520.0,
             1e-8, 5.9604645e-08, 2.9802322e-08, 3.4e38, 1e-40, -1e-40, 0.1, 3.9999998, 4294967040.0,
             1.8446743e19, 16777217.0, 0.99999994]


def _saturate(value: float, low: int, high: int, nan: int) -> int:
    if math.isnan(value):
        return nan
    if value <= low:
        return low
    if value >= high:
        return high
    return int(value)


def _round_mode(values: np.ndarray, mode: str) -> np.ndarray:
    return {"rn": np.rint, "rz": np.trunc, "rd": np.floor, "ru": np.ceil}[mode](values.astype(np.float64))


def _to_integers(values: np.ndarray, mode: str, bits: int, signed: bool) -> list[int]:
    """cvt.rXi: saturating; a NaN gives 0, except from f64 or into 64 bits, where it gives
    1 << (bits - 1) (the PTX ISA's rule since PTX 9.0: MININT for signed types)."""
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    nan = 1 << (bits - 1) if values.dtype == np.float64 or bits == 64 else 0
    nan = wrap(nan, bits, signed)
    return [_saturate(v, low, high, nan) for v in _round_mode(values, mode).tolist()]


def _directed_f16(x: np.ndarray, mode: str) -> np.ndarray:
    """f32/f64 values to f16 rounded toward zero (from the nearest value, one step back)."""
    nearest = x.astype(np.float16)
    out = nearest.copy()
    for i, (value, h) in enumerate(zip(x.astype(np.float64), nearest)):
        if np.isnan(value) or np.isinf(value):
            continue
        if abs(float(h)) > abs(value):
            out[i] = np.nextafter(h, np.float16(0)) if np.isfinite(h) else np.copysign(np.float16(65504), h)
    return out


def _directed_f32(x: np.ndarray, mode: str) -> np.ndarray:
    """f64 values to f32 in a directed rounding mode (from the nearest value, one step if needed)."""
    out = x.astype(np.float32)
    for i, value in enumerate(x.tolist()):
        f = out[i]
        if math.isnan(value) or math.isinf(value):
            continue
        if mode == "rd" and float(f) > value or mode == "rz" and abs(float(f)) > abs(value) and value > 0:
            out[i] = np.nextafter(f, np.float32(-np.inf))
        elif mode == "ru" and float(f) < value or mode == "rz" and abs(float(f)) > abs(value) and value < 0:
            out[i] = np.nextafter(f, np.float32(np.inf))
    return out


def test_conversions_from_f32(corpus):
    rng = np.random.default_rng(32)
    n = 1024
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 12, n)).astype(np.float32)
    x[:len(F32_EDGES)] = F32_EDGES
    i32, u32, i64 = np.zeros(4 * n, np.int32), np.zeros(2 * n, np.uint32), np.zeros(2 * n, np.int64)
    u64, f16, bf16, f64 = np.zeros(n, np.uint64), np.zeros(2 * n, np.float16), np.zeros(2 * n, np.uint16), \
        np.zeros(n, np.float64)
    run(corpus("conversions"), "cvt_from_f32", n, [n, x, i32, u32, i64, u64, f16, bf16, f64])
    for k, mode in enumerate(["rn", "rz", "rd", "ru"]):
        assert_equal(i32[k * n:(k + 1) * n].tolist(), _to_integers(x, mode, 32, True), f"__float2int_{mode}")
    for k, mode in enumerate(["rn", "rz"]):
        assert_equal(u32[k * n:(k + 1) * n].tolist(), _to_integers(x, mode, 32, False), f"__float2uint_{mode}")
        assert_equal(i64[k * n:(k + 1) * n].tolist(), _to_integers(x, mode, 64, True), f"__float2ll_{mode}")
    assert_equal(u64.tolist(), _to_integers(x, "rz", 64, False), "__float2ull_rz")
    assert_same_floats(f16[:n], x.astype(np.float16), "__float2half_rn")
    assert_same_floats(f16[n:], _directed_f16(x, "rz"), "__float2half_rz")
    assert_same_floats(bf16_values(bf16[:n]), bf16_values(bf16_bits(x)), "__float2bfloat16_rn")
    truncated = np.where(np.isnan(x), np.uint16(0x7FFF), (x.view(np.uint32) >> 16).astype(np.uint16))
    assert_same_floats(bf16_values(bf16[n:]), bf16_values(truncated), "__float2bfloat16_rz")
    assert_same_floats(f64, x.astype(np.float64), "f32 to f64")


def test_conversions_from_f64(corpus):
    rng = np.random.default_rng(64)
    n = 1024
    x = rng.standard_normal(n) * 10.0 ** rng.uniform(-50, 50, n)
    edges = [np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5, 2.5, -2.5, 2.0 ** 31 - 0.5, 2.0 ** 31, -2.0 ** 31 - 0.5,
             3.4028235677973366e38, 3.402823567797337e38, 3.5e38, 1e-45, 7e-46, 1.401298464324817e-45, 1e-300,
             1.0000000596046448, 1.0000000894069672, -1.0000000596046448, 65520.0, 65519.99, 9.3e18, -9.3e18,
             1 / 3, -1 / 3, 2.0 ** -25, 2.0 ** -26]
    x[:len(edges)] = edges
    f32, i32, i64, f16 = np.zeros(4 * n, np.float32), np.zeros(2 * n, np.int32), np.zeros(n, np.int64), \
        np.zeros(n, np.float16)
    run(corpus("conversions"), "cvt_from_f64", n, [n, x, f32, i32, i64, f16])
    assert_same_floats(f32[:n], x.astype(np.float32), "__double2float_rn")
    for k, mode in enumerate(["rz", "rd", "ru"], start=1):
        assert_same_floats(f32[k * n:(k + 1) * n], _directed_f32(x, mode), f"__double2float_{mode}")
    for k, mode in enumerate(["rn", "rz"]):
        assert_equal(i32[k * n:(k + 1) * n].tolist(), _to_integers(x, mode, 32, True), f"__double2int_{mode}")
    assert_equal(i64.tolist(), _to_integers(x, "rn", 64, True), "__double2ll_rn")
    assert_same_floats(f16, x.astype(np.float16), "__double2half")


def test_conversions_to_float(corpus):
    rng = np.random.default_rng(7)
    n = 1024
    a = rng.integers(-2 ** 31, 2 ** 31, n, dtype=np.int32)
    b = rng.integers(-2 ** 63, 2 ** 63, n, dtype=np.int64)
    c = rng.integers(0, 2 ** 32, n, dtype=np.uint32)
    a[:6] = [0, -1, 2 ** 31 - 1, -2 ** 31, 16777217, -16777219]
    b[:5] = [2 ** 63 - 1, -2 ** 63, 2 ** 53 + 1, (1 << 40) + (1 << 16) + 1, 1 << 24 | 1]
    c[:3] = [2 ** 32 - 1, 16777217, 0]
    f32, f64 = np.zeros(5 * n, np.float32), np.zeros(2 * n, np.float64)
    run(corpus("conversions"), "cvt_to_float", n, [n, a, b, c, f32, f64])

    def nearest(values) -> np.ndarray:
        return np.array([round_exact(Fraction(int(v)), "f32") for v in values], dtype=np.float32)

    def toward(values, direction: str) -> np.ndarray:  # toward zero ("rz") or down ("rd")
        out = nearest(values)
        for i, v in enumerate(values.tolist()):
            if Fraction(float(out[i])) > v and (direction == "rd" or v > 0):
                out[i] = np.nextafter(out[i], np.float32(-np.inf))
            elif Fraction(float(out[i])) < v and direction == "rz" and v < 0:
                out[i] = np.nextafter(out[i], np.float32(np.inf))
        return out

    got = rows(f32, 5, n)
    assert_same_floats(got[0], nearest(a), "__int2float_rn")
    assert_same_floats(got[1], toward(a, "rz"), "__int2float_rz")
    assert_same_floats(got[2], nearest(b), "__ll2float_rn")
    assert_same_floats(got[3], nearest(c), "__uint2float_rn")
    assert_same_floats(got[4], toward(c, "rd"), "__uint2float_rd")
    assert_same_floats(f64[:n], np.array([float(int(v)) for v in b]), "__ll2double_rn")
    assert_same_floats(f64[n:], a.astype(np.float64), "int to double")


def test_conversions_from_halves(corpus):
    rng = np.random.default_rng(9)
    n = 512
    h = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 4, n)).astype(np.float16)
    h[:8] = [np.nan, np.inf, -np.inf, 0.5, 1.5, -2.5, 65504, -0.0]
    bh = bf16_bits((rng.standard_normal(n) * 100).astype(np.float32))
    f32, i32 = np.zeros(2 * n, np.float32), np.zeros(2 * n, np.int32)
    run(corpus("conversions"), "cvt_half_to", n, [n, h, bh, f32, i32])
    assert_same_floats(f32[:n], h.astype(np.float32), "__half2float")
    assert_same_floats(f32[n:], bf16_values(bh), "__bfloat162float")
    assert_equal(i32[:n].tolist(), _to_integers(h, "rn", 32, True), "__half2int_rn")
    assert_equal(i32[n:].tolist(), _to_integers(h, "rz", 32, True), "__half2int_rz")


def test_integer_narrowing_and_widening(corpus):
    rng = np.random.default_rng(11)
    n = 1000
    x = rng.integers(-2 ** 63, 2 ** 63, n, dtype=np.int64)
    x[:6] = [-1, 127, 128, -129, 0xFFFF, -(2 ** 31)]
    outs = [np.zeros(n, t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32)] + [np.zeros(5 * n, np.int64)]
    run(corpus("conversions"), "cvt_integers", n, [n, x, *outs])
    values = x.tolist()
    for out, bits, signed, name in zip(outs, (8, 8, 16, 16, 32), (1, 0, 1, 0, 1), ("s8", "u8", "s16", "u16", "s32")):
        assert_equal(out.tolist(), [wrap(v, bits, bool(signed)) for v in values], f"to {name}")
    wide = rows(outs[5], 5, n)
    for k, (bits, signed) in enumerate([(8, True), (8, False), (16, True), (32, False), (8, True)]):
        assert_equal(wide[k].tolist(), [wrap(v, bits, signed) for v in values], f"widened {k}")


# --- math functions ----------------------------------------------------------------------------

#: CUDA's documented maximum ulp errors (CUDA C++ Programming Guide, mathematical functions),
#: default compilation (no fast math): 0 means correctly rounded
F32_BOUNDS = {"sqrtf": 0, "expf": 2, "logf": 1, "sinf": 2, "rsqrtf": 2, "fmaf": 0, "floorf": 0, "ceilf": 0,
              "truncf": 0, "rintf": 0, "cosf": 2, "fminf": 0, "fmaxf": 0, "copysignf": 0, "exp2f": 2,
              "log2f": 1, "tanhf": 2}


def test_math_f32(corpus):
    rng = np.random.default_rng(3)
    n = 4096
    x = rng.uniform(-20, 20, n).astype(np.float32)
    x[:512] = (rng.standard_normal(512) * 10.0 ** rng.uniform(-30, 30, 512)).astype(np.float32)  # wide range
    x[512:640] = rng.uniform(-1e5, 1e5, 128).astype(np.float32)  # sinf's slow path for large arguments
    x[:10] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, 88.7, -103.0, 1.0, np.pi]
    y, z = (rng.standard_normal((2, n)) * 4).astype(np.float32)
    out = np.zeros(18 * n, np.float32)
    run(corpus("mathfn"), "math_f32", n, [n, x, y, z, out])
    v = x.astype(np.float64)
    with np.errstate(all="ignore"):
        references = {"sqrtf": np.sqrt(np.abs(v)), "expf": np.exp(v), "logf": np.log(np.abs(v)), "sinf": np.sin(v),
                      "rsqrtf": 1 / np.sqrt(np.abs(v)), "fmaf": exact_fma(x, y, z, "f32"), "floorf": np.floor(v),
                      "ceilf": np.ceil(v), "truncf": np.trunc(v), "rintf": np.rint(v), "cosf": np.cos(v),
                      "fminf": np.fmin(x, y), "fmaxf": np.fmax(x, y), "copysignf": np.copysign(y, x),
                      "exp2f": np.exp2(v), "log2f": np.log2(np.abs(v)), "tanhf": np.tanh(v)}
    order = ["sqrtf", "expf", "logf", "sinf", "__expf", "rsqrtf", "fmaf", "floorf", "ceilf", "truncf", "rintf",
             "cosf", "fminf", "fmaxf", "copysignf", "exp2f", "log2f", "tanhf"]
    got = dict(zip(order, rows(out, 18, n)))
    for name, reference in references.items():
        distance = ulp_distance_f32(got[name], reference)
        bad = distance > F32_BOUNDS[name]
        assert not bad.any(), (f"{name}: {int(bad.sum())} beyond {F32_BOUNDS[name]} ulp; first x={x[bad][0]!r}: "
                               f"got {got[name][bad][0]!r}, want {np.float32(reference[bad][0])!r}")
    # __expf: 2 + floor(|1.173 x|) ulp (its ex2.approx flushes subnormal results: normal range only)
    normal = np.isfinite(v) & (np.abs(v) < 80)
    distance = ulp_distance_f32(got["__expf"], np.exp(v))
    bound = 2 + np.floor(np.abs(1.173 * v))
    bad = normal & (distance > bound)
    assert not bad.any(), f"__expf: first x={x[bad][0]!r}: got {got['__expf'][bad][0]!r}"


#: f64 maximum ulp errors (same table)
F64_BOUNDS = {"sqrt": 0, "exp": 1, "log": 1, "sin": 2, "floor": 0, "rcp": 0}


def test_math_f64(corpus):
    rng = np.random.default_rng(4)
    n = 2048
    x = rng.uniform(-30, 30, n)
    x[:256] = rng.standard_normal(256) * 10.0 ** rng.uniform(-200, 200, 256)
    x[:6] = [0.0, -0.0, np.inf, np.nan, 709.0, -745.0]
    out = np.zeros(6 * n, np.float64)
    run(corpus("mathfn"), "math_f64", n, [n, x, out])
    v = x.astype(np.longdouble)
    with np.errstate(all="ignore"):
        references = {"sqrt": np.sqrt(np.abs(v)), "exp": np.exp(v), "log": np.log(np.abs(v)), "sin": np.sin(v),
                      "floor": np.floor(v), "rcp": 1 / x}
    for (name, reference), got in zip(references.items(), rows(out, 6, n)):
        distance = ulp_distance_f64(got, reference)
        bad = distance > F64_BOUNDS[name]
        assert not bad.any(), f"{name}: first x={x[bad][0]!r}: got {got[bad][0]!r}, want {reference[bad][0]!r}"


def _byte_perm(x: int, y: int, selector: int) -> int:
    source = x | y << 32
    return sum(((source >> (8 * ((selector >> (4 * k)) & 7))) & 0xFF) << (8 * k) for k in range(4))


def _signed_bytes(v: int, signed: bool) -> list[int]:
    return [wrap(v >> (8 * k), 8, signed) for k in range(4)]


def _clz(v: int, bits: int) -> int:
    return bits - v.bit_length()


def _brev(v: int, bits: int) -> int:
    return int(format(v, f"0{bits}b")[::-1], 2)


def test_integer_intrinsics(corpus):
    rng = np.random.default_rng(12)
    n = 2048
    a, b = rng.integers(0, 2 ** 32, (2, n), dtype=np.uint32)
    c = rng.integers(0, 2 ** 32, n, dtype=np.uint32)
    c[n // 2:] = rng.integers(0, 70, n - n // 2)  # shifts and small addends
    w = rng.integers(0, 2 ** 64, n, dtype=np.uint64)
    a[:6], b[:6], w[:3] = [0, FULL, 0x80000000, 1, 0x7FFFFFFF, 0x01020304], [0, FULL, 5, 0x80000000, 3, 0xF0E0D0C0], \
        [0, 2 ** 64 - 1, 1 << 63]
    out, out64 = np.zeros(21 * n, np.uint32), np.zeros(5 * n, np.uint64)
    run(corpus("mathfn"), "int_intrinsics", n, [n, a, b, c, w, out, out64])

    want = np.zeros((21, n), dtype=object)
    want64 = np.zeros((5, n), dtype=object)
    for i, (x, y, z, wide) in enumerate(zip(a.tolist(), b.tolist(), c.tolist(), w.tolist())):
        sx, sy = wrap(x, 32, True), wrap(y, 32, True)
        pair = y << 32 | x
        values = [bin(x).count("1"), _clz(x, 32), _brev(x, 32), _byte_perm(x, y, z & 0x7777),
                  (pair << (z & 31)) >> 32, pair >> (z & 31), (sx * sy) >> 32, (x * y) >> 32,
                  abs(sx - sy) + z, abs(x - y) + z,
                  sum(p * q for p, q in zip(_signed_bytes(x, True), _signed_bytes(y, True))) + wrap(z, 32, True),
                  sum(p * q for p, q in zip(_signed_bytes(x, False), _signed_bytes(y, False))) + z,
                  min(sx, sy), max(x, y), (x & -x).bit_length(), bin(wide).count("1"), _clz(wide, 64),
                  (pair << min(z, 32)) >> 32, abs(sx), (x + y) >> 1, (sx + sy + 1) >> 1]
        want[:, i] = [wrap(v, 32, False) for v in values]
        second = wrap(x * y + z, 64, False)
        sw = wrap(wide, 64, True)
        values64 = [_brev(wide, 64), (wide * second) >> 64, (sw * wrap(x << 32 | y, 64, True)) >> 64, x * y, sx * sy]
        want64[:, i] = [wrap(v, 64, False) for v in values64]
    names = ["popc", "clz", "brev", "byte_perm", "funnelshift_l", "funnelshift_r", "mulhi", "umulhi", "sad", "usad",
             "dp4a", "dp4a_u", "min", "max", "ffs", "popcll", "clzll", "funnelshift_lc", "abs", "uhadd", "rhadd"]
    for k, name in enumerate(names):
        assert_equal(out[k * n:(k + 1) * n].tolist(), want[k].tolist(), name)
    for k, name in enumerate(["brevll", "umul64hi", "mul64hi", "u32 wide mul", "s32 wide mul"]):
        assert_equal(out64[k * n:(k + 1) * n].tolist(), want64[k].tolist(), name)


# --- reductions and barriers --------------------------------------------------------------------

def _tree(partial: np.ndarray) -> np.ndarray:
    """The kernels' tree: for s = width/2 .. 1, the first s add the partner s away."""
    partial = partial.copy()
    s = partial.shape[1] // 2
    while s:
        partial[:, :s] += partial[:, s:2 * s]
        s //= 2
    return partial[:, 0]


def test_tree_sum_f32_bit_exact(corpus):
    n = 256 * 37 + 100
    x = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    blocks = -(-n // 256)
    out = np.zeros(blocks, np.float32)
    run(corpus("reduce"), "tree_sum_f32", n, [n, x, out])
    padded = np.zeros(blocks * 256, np.float32)
    padded[:n] = x
    assert_same_floats(out, _tree(padded.reshape(blocks, 256)), "tree sum f32")


@pytest.mark.parametrize("block", [32, 64, 128, 512, 1024])
def test_tree_sum_i32_dynamic_block(corpus, block):
    n = block * 9 - 5
    x = np.random.default_rng(block).integers(-2 ** 31, 2 ** 31, n, dtype=np.int32)
    blocks = -(-n // block)
    out = np.zeros(blocks, np.int32)
    run(corpus("reduce"), "tree_sum_i32", n, [n, x, out], block=block, shared=4 * block)
    padded = np.zeros(blocks * block, np.int32)
    padded[:n] = x
    with np.errstate(over="ignore"):
        assert_equal(out, _tree(padded.reshape(blocks, block)), f"tree sum i32, {block} threads")


def test_grid_stride_sum_f64(corpus):
    n, blocks = 100_003, 20
    stride = blocks * 256
    x = np.random.default_rng(2).standard_normal(n)
    out = np.zeros(blocks, np.float64)
    corpus("reduce").kernel("grid_stride_sum_f64").launch(grid=(blocks,), block=(256,), args=[n, x, out])
    padded = np.zeros(-(-n // stride) * stride)
    padded[:n] = x
    sums = np.zeros(stride)
    for row in padded.reshape(-1, stride):  # each thread adds its elements in order
        sums = sums + row
    assert_same_floats(out, _tree(sums.reshape(blocks, 256)), "grid-stride sum f64")


def test_barriers_in_data_dependent_loops(corpus):
    blocks = 12
    rng = np.random.default_rng(8)
    rounds = rng.integers(0, 10, blocks).astype(np.int32)
    rounds[:2] = [0, 1]
    x = rng.integers(-1000, 1000, blocks * 256).astype(np.int32)
    out = np.zeros_like(x)
    corpus("reduce").kernel("rotate_rounds").launch(grid=(blocks,), block=(256,), args=[rounds, x, out])
    want = x.reshape(blocks, 256).copy()
    with np.errstate(over="ignore"):
        for b in range(blocks):
            for r in range(rounds[b]):
                want[b] = np.roll(want[b], -1) * np.int32(3) + np.int32(r)
    assert_equal(out.reshape(blocks, 256), want, "rotate rounds")


def test_block_scan(corpus):
    blocks = 7
    x = np.random.default_rng(9).integers(-100, 100, blocks * 256).astype(np.int32)
    out = np.zeros_like(x)
    corpus("reduce").kernel("block_scan_i32").launch(grid=(blocks,), block=(256,), args=[x, out])
    assert_equal(out.reshape(blocks, 256), np.cumsum(x.reshape(blocks, 256), axis=1, dtype=np.int32), "block scan")


# --- warp collectives ---------------------------------------------------------------------------

def test_warp_sum_shfl_down_bit_exact(corpus):
    threads = 256 * 5
    x = np.random.default_rng(4).standard_normal(threads).astype(np.float32)
    out = np.zeros(threads // 32, np.float32)
    run(corpus("warp"), "warp_sum_down", threads, [x, out])
    v = x.reshape(-1, 32).copy()
    offset = 16
    while offset:
        shifted = np.concatenate([v[:, offset:], v[:, 32 - offset:]], axis=1)  # out of range: own value
        v = v + shifted
        offset //= 2
    assert_same_floats(out, v[:, 0], "warp sum by shfl.down")


def test_warp_butterfly_shfl_xor(corpus):
    threads = 512
    x = np.random.default_rng(5).integers(-10 ** 6, 10 ** 6, threads).astype(np.int32)
    out = np.zeros(2 * threads, np.int32)
    run(corpus("warp"), "warp_xor", threads, [x, out], block=128)
    warps = x.reshape(-1, 32)
    assert_equal(out[0::2], np.repeat(warps.max(axis=1), 32), "warp max by shfl.xor")
    assert_equal(out[1::2], np.repeat(warps.sum(axis=1), 32), "warp sum by shfl.xor")


def test_warp_shfl_index_and_up_with_width(corpus):
    threads = 256
    rng = np.random.default_rng(6)
    x = rng.integers(0, 10 ** 6, threads).astype(np.int32)
    source = rng.integers(0, 64, threads).astype(np.int32)  # lanes beyond the width wrap
    out = np.zeros(3 * threads, np.int32)
    run(corpus("warp"), "warp_index", threads, [x, source, out], block=64)
    lane = np.arange(threads) % 32
    base = np.arange(threads) - lane
    assert_equal(out[0::3], x[base + source % 32], "shfl.idx")
    assert_equal(out[1::3], x[base + (lane & ~7) + (source & 7)], "shfl.idx width 8")
    up = np.where(lane % 16 >= 3, np.arange(threads) - 3, np.arange(threads))
    assert_equal(out[2::3], x[up], "shfl.up width 16")


def test_warp_scan_shfl_up(corpus):
    threads = 320
    x = np.random.default_rng(7).integers(-1000, 1000, threads).astype(np.int32)
    out = np.zeros(threads, np.int32)
    run(corpus("warp"), "warp_scan_up", threads, [x, out], block=160)
    assert_equal(out, np.cumsum(x.reshape(-1, 32), axis=1).ravel(), "warp scan")


def _mask(flags) -> int:
    return sum(1 << k for k, f in enumerate(flags) if f)


def test_warp_votes(corpus):
    threads = 256
    rng = np.random.default_rng(8)
    flags = rng.choice([0, 0, 1, 2, 5], threads).astype(np.int32)
    flags[:32], flags[32:64], flags[64:96] = 0, 7, np.arange(32) % 2
    out = np.zeros(4 * threads, np.uint32)
    run(corpus("warp"), "warp_votes", threads, [flags, out])
    want = []
    for w in range(threads // 32):
        warp = flags[32 * w:32 * w + 32].tolist()
        ballot = _mask(warp)
        for value in warp:
            want += [ballot, int(any(warp)), int(all(warp)), _mask([v == value for v in warp])]
    assert_equal(out, want, "ballot/any/all/match.any")


def test_warp_collectives_under_divergence(corpus):
    threads = 256
    rng = np.random.default_rng(10)
    keys = rng.integers(0, 200, threads).astype(np.int32)
    keys[:32] = 2 * rng.integers(0, 100, 32) + 1   # a warp with every lane odd
    keys[32:64] = 2 * rng.integers(0, 100, 32)     # every lane even
    keys[64:96] = 1                                # all equal
    next_odd = np.zeros(threads, np.int32)
    for w in range(threads // 32):
        odd_lanes = [k for k in range(32) if keys[32 * w + k] & 1]
        for lane in odd_lanes:
            later = [k for k in odd_lanes if k > lane]
            next_odd[32 * w + lane] = later[0] if later else odd_lanes[0]
    out = np.zeros(6 * threads, np.uint32)
    run(corpus("warp"), "warp_divergent", threads, [keys, next_odd, out], block=128)
    want = []
    for w in range(threads // 32):
        warp = keys[32 * w:32 * w + 32].tolist()
        odd_lanes = [k for k in range(32) if warp[k] & 1]
        even_lanes = [k for k in range(32) if not warp[k] & 1]
        odd, even = _mask(v & 1 for v in warp), _mask(not v & 1 for v in warp)
        for lane, key in enumerate(warp):
            if key & 1:
                nxt = next_odd[32 * w + lane]
                want += [odd, sum(warp[k] for k in odd_lanes), _mask(k in odd_lanes and warp[k] > 100 for k in range(32)),
                         _mask(k in odd_lanes and warp[k] % 4 == key % 4 for k in range(32)), warp[nxt],
                         max(warp[k] for k in odd_lanes)]
            else:
                values = [warp[k] for k in even_lanes]
                want += [even, min(values), int(all(v > 100 for v in values)), _or(values), _and(values),
                         _xor(values)]
    assert_equal(out, want, "activemask/redux/ballot/match/shfl under divergence")


def _or(values):
    return _fold(values, lambda p, q: p | q)


def _and(values):
    return _fold(values, lambda p, q: p & q)


def _xor(values):
    return _fold(values, lambda p, q: p ^ q)


def _fold(values, function):
    result = values[0]
    for value in values[1:]:
        result = function(result, value)
    return result


@pytest.mark.parametrize("active", [1, 7, 20, 31, 32])
def test_warp_partial_masks(corpus, active):
    threads = 128
    x = np.random.default_rng(active).integers(-1000, 1000, threads).astype(np.int32)
    out = np.full(2 * threads, -7, np.int32)
    corpus("warp").kernel("warp_partial").launch(grid=(2,), block=(64,), args=[active, x, out])
    want = np.full(2 * threads, -7, np.int32)
    for w in range(threads // 32):
        v = x[32 * w:32 * w + 32].copy()
        offset = 16
        while offset:
            v = np.array([v[k] + v[k ^ offset] if (k ^ offset) < active else v[k] for k in range(32)])
            offset //= 2
        for lane in range(active):
            want[2 * (32 * w + lane)] = v[lane]
            want[2 * (32 * w + lane) + 1] = (1 << active) - 1 if active < 32 else -1  # __activemask()
    assert_equal(out, want, f"partial warp of {active} lanes")


# --- atomics ---------------------------------------------------------------------------------------

def test_histogram_shared_then_global(corpus):
    n = 300_000
    rng = np.random.default_rng(20)
    x = rng.integers(0, 256, n).astype(np.uint8)
    x[: n // 3] = 17  # one hot bin: heavy contention
    bins = np.zeros(256, np.uint32)
    corpus("atomics").kernel("histogram").launch(grid=(24,), block=(256,), args=[n, x, bins])
    assert_equal(bins, np.bincount(x, minlength=256), "histogram")


def test_histogram_global_contention(corpus):
    n = 200_000
    x = np.random.default_rng(21).integers(0, 256, n).astype(np.uint8)
    bins = np.zeros(8, np.uint32)
    run(corpus("atomics"), "histogram_global", n, [n, x, bins])
    assert_equal(bins, np.bincount(x & 7, minlength=8), "global histogram")


def test_atomic_counter_hands_out_each_value_once(corpus):
    threads = 64 * 256
    counter = np.zeros(1, np.int32)
    tickets = np.full(threads, -1, np.int32)
    run(corpus("atomics"), "ticket", threads, [counter, tickets])
    assert counter[0] == threads
    assert_equal(np.sort(tickets), np.arange(threads), "tickets")


def test_float_add_by_cas_loop(corpus):
    n = 50_000
    x = np.random.default_rng(22).integers(0, 16, n).astype(np.float32)  # sums stay exact
    total = np.zeros(1, np.float32)
    run(corpus("atomics"), "cas_float_add", n, [n, x, total])
    assert total[0] == x.sum(dtype=np.float64)


def test_atomic_operations(corpus):
    n = 20_000
    rng = np.random.default_rng(23)
    x = rng.integers(-2 ** 31, 2 ** 31, n, dtype=np.int32)
    w = rng.integers(0, 2 ** 64, n, dtype=np.uint64)
    acc32 = np.array([2 ** 31 - 1, -2 ** 31, -1, 0, 0x5A5A, 0, 12345], np.int32)
    uacc = np.array([FULL, 0, 0, 0, 0], np.uint32)
    acc64 = np.array([5, 0, 2 ** 64 - 1, 2 ** 64 - 1, 0, 0, 0, 0], np.uint64)
    sacc64 = np.array([-2 ** 63, 2 ** 63 - 1], np.int64)
    exchanged = np.zeros(n, np.int32)
    run(corpus("atomics"), "atomic_ops", n, [n, x, w, acc32, uacc, acc64, sacc64, exchanged])
    xs, ws = x.tolist(), w.tolist()
    assert_equal(acc32[:6].tolist(), [min(xs), max(xs), _and([-1] + [v | 0x10000 for v in xs]),
                                      _or([0] + [v & 0x7F0F for v in xs]), wrap(_xor([0x5A5A] + xs), 32, True),
                                      wrap(-sum(xs), 32, True)], "32-bit min/max/and/or/xor/sub")
    assert sorted(exchanged.tolist() + [int(acc32[6])]) == sorted(xs + [12345]), "atomicExch lost or duplicated"
    assert_equal(uacc[:4].tolist(), [min(v & FULL for v in xs), max(v & FULL for v in xs), n % 1001, (-n) % 78],
                 "unsigned min/max/inc/dec")
    assert uacc[4:].view(np.float32)[0] == 0.25 * n
    assert_equal(acc64[:6].tolist(), [(5 + sum(ws)) % 2 ** 64, max(ws), min(ws),
                                      _and([2 ** 64 - 1] + [v | 0xFF00FF00FF00FF00 for v in ws]),
                                      _or([0] + [v & 0x0123456789ABCDEF for v in ws]), _xor([0] + ws)],
                 "64-bit add/max/min/and/or/xor")
    signed = [wrap(v, 64, True) for v in ws]
    assert_equal(sacc64.tolist(), [max(signed), min(signed)], "signed 64-bit max/min")
    assert int(acc64[6]) == n * (n + 1) // 2, "64-bit CAS loop"
    assert acc64[7:].view(np.float64)[0] == 0.5 * n, "f64 atomicAdd"


# --- memory spaces ------------------------------------------------------------------------------

@pytest.mark.parametrize("block", [64, 256, 1024])
def test_dynamic_shared_reverse(corpus, block):
    blocks = 5
    x = np.random.default_rng(block).standard_normal(blocks * block).astype(np.float32)
    out = np.zeros_like(x)
    corpus("memory").kernel("reverse_dynamic").launch(grid=(blocks,), block=(block,), args=[x, out],
                                                      shared=4 * block)
    assert_same_floats(out.reshape(blocks, block), x.reshape(blocks, block)[:, ::-1], "reverse")


def test_dynamic_shared_two_arrays(corpus):
    blocks, block = 6, 96
    rng = np.random.default_rng(30)
    x = rng.standard_normal(blocks * block)
    y = rng.integers(-50, 50, blocks * block).astype(np.int32)
    out = np.zeros_like(x)
    corpus("memory").kernel("dynamic_two_arrays").launch(grid=(blocks,), block=(block,), args=[x, y, out],
                                                         shared=12 * block)
    t = np.arange(block)
    xs, ys = x.reshape(blocks, block), y.reshape(blocks, block)
    assert_same_floats(out.reshape(blocks, block), xs[:, (t + 1) % block] * ys[:, (t + 7) % block], "two arrays")


def test_local_array_dynamic_index(corpus):
    threads = 1024  # a whole number of CTAs: the kernel has no bounds check
    rng = np.random.default_rng(31)
    x = rng.integers(-10 ** 6, 10 ** 6, threads).astype(np.int32)
    index = rng.integers(0, 10 ** 6, threads).astype(np.int32)
    out = np.zeros(threads, np.int32)
    run(corpus("memory"), "local_array", threads, [x, index, out], block=128)
    k = np.arange(40)
    with np.errstate(over="ignore"):
        table = x[:, None] * (k + 1).astype(np.int32) - k.astype(np.int32)
        table[np.arange(threads), index % 40] += 1000
        picks = (index[:, None] + np.arange(0, 40, 3)) % 40
        want = np.take_along_axis(table, picks, axis=1).sum(axis=1, dtype=np.int32)
    assert_equal(out, want, "local array")


def test_local_sort(corpus):
    threads = 512
    x = np.random.default_rng(32).standard_normal(16 * threads).astype(np.float32)
    out = np.zeros_like(x)
    run(corpus("memory"), "local_sort", threads, [x, out], block=64)
    assert_same_floats(out.reshape(threads, 16), np.sort(x.reshape(threads, 16), axis=1), "local insertion sort")


def test_module_variables_initialised_and_kept(corpus):
    program = corpus("memory")
    threads = 512
    x = np.random.default_rng(33).integers(0, 1000, threads).astype(np.int32)
    out = np.zeros(threads, np.float32)
    counter = np.zeros(1, np.uint64)
    program.kernel("read_counter").launch(grid=(1,), block=(1,), args=[counter])
    before = int(counter[0])
    run(program, "module_variables", threads, [x, out])
    table = np.array([3, 1, 4, 1, 5, 9, 2, 6], np.float32)
    scale = np.array([0.5, 2.0, -1.0, 8.0], np.float32)
    assert_equal(out, table[x & 7] * scale[x & 3], ".global and .const initialisers")
    program.kernel("read_counter").launch(grid=(1,), block=(1,), args=[counter])
    assert int(counter[0]) == before + threads and before >= 100


# --- calls ------------------------------------------------------------------------------------------

def _random_tree(rng, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    left, right = np.full(nodes, -1, np.int32), np.full(nodes, -1, np.int32)
    for node in range(1, nodes):
        while True:
            parent = int(rng.integers(0, node))
            side = left if rng.integers(0, 2) else right
            if side[parent] < 0:
                side[parent] = node
                break
    return left, right


def test_recursion_and_device_functions(corpus):
    n = 300
    rng = np.random.default_rng(40)
    x = rng.integers(0, 1000, n).astype(np.int32)
    left, right = _random_tree(rng, 64)
    out = np.zeros(3 * n, np.int32)
    run(corpus("calls"), "recursion", n, [n, x, left, right, out], block=128)

    def fib(k: int) -> int:
        return k if k < 2 else fib(k - 1) + fib(k - 2)

    def depth(node: int) -> int:
        return 0 if node < 0 else 1 + max(depth(int(left[node])), depth(int(right[node])))

    want = []
    for i, v in enumerate(x.tolist()):
        q, r = _c_div(v * 7 + 3, v % 9 + 1)
        want += [fib(v % 20), depth(i % 64), q * 100 + r]
    assert_equal(out, want, "fib / tree depth / struct return")


def test_device_function_loop(corpus):
    n = 777
    rng = np.random.default_rng(41)
    x = rng.standard_normal(n).astype(np.float32)
    c = rng.standard_normal(6).astype(np.float32)
    out = np.zeros(n, np.float32)
    run(corpus("calls"), "polynomial", n, [n, x, c, out])
    want = np.zeros(n, np.float32)
    for k in range(5, -1, -1):
        want = want * x + c[k]
    assert_same_floats(out, want, "Horner through a device function")


def test_function_pointers(corpus):
    n = 1000
    rng = np.random.default_rng(42)
    which = rng.integers(0, 100, n).astype(np.int32)
    a, b = rng.integers(-10 ** 5, 10 ** 5, (2, n)).astype(np.int32)
    out = np.zeros(n, np.int32)
    run(corpus("indirect_calls"), "function_pointers", n, [n, which, a, b, out])
    with np.errstate(over="ignore"):
        choices = np.stack([a + b, a * b, a - b, np.maximum(a, b)])
    assert_equal(out, choices[which & 3, np.arange(n)], "indirect calls")


# --- 2D and 3D ------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows_,cols", [(100, 75), (64, 256), (1, 33)])
def test_transpose_2d_tiles(corpus, rows_, cols):
    matrix = np.random.default_rng(rows_).standard_normal((rows_, cols)).astype(np.float32)
    out = np.zeros((cols, rows_), np.float32)
    corpus("grids").kernel("transpose").launch(grid=(-(-cols // 32), -(-rows_ // 32), 1), block=(32, 8, 1),
                                               args=[rows_, cols, matrix, out])
    assert_same_floats(out, matrix.T, "transpose")


def test_stencil_3d(corpus):
    nx, ny, nz = 37, 19, 11
    grid = np.random.default_rng(50).integers(-1000, 1000, (nz, ny, nx)).astype(np.int32)
    out = np.zeros_like(grid)
    corpus("grids").kernel("stencil3d").launch(grid=(-(-nx // 8), -(-ny // 8), -(-nz // 4)), block=(8, 8, 4),
                                               args=[nx, ny, nz, grid, out])
    want = grid.copy()
    c = grid[1:-1, 1:-1, 1:-1]
    want[1:-1, 1:-1, 1:-1] = (6 * c - grid[1:-1, 1:-1, :-2] - grid[1:-1, 1:-1, 2:] - grid[1:-1, :-2, 1:-1]
                              - grid[1:-1, 2:, 1:-1] - grid[:-2, 1:-1, 1:-1] - grid[2:, 1:-1, 1:-1])
    assert_equal(out, want, "3D stencil")


@pytest.mark.parametrize("grid,block", [((3, 2, 2), (8, 4, 3)), ((1, 1, 5), (33, 1, 1)), ((2, 3, 1), (1, 1, 64))])
def test_special_registers(corpus, grid, block):
    threads = math.prod(block)
    out = np.zeros(16 * math.prod(grid) * threads, np.uint32)
    corpus("grids").kernel("coordinates").launch(grid=grid, block=block, args=[out])
    want = []
    for bz in range(grid[2]):
        for by in range(grid[1]):
            for bx in range(grid[0]):
                for tz in range(block[2]):
                    for ty in range(block[1]):
                        for tx in range(block[0]):
                            linear = (tz * block[1] + ty) * block[0] + tx
                            want += [tx, ty, tz, *block, bx, by, bz, *grid, linear % 32, linear // 32, 0x1234,
                                     0xABCD]
    assert_equal(out, want, "special registers")


def test_warp_size(corpus):
    out = np.zeros(64, np.uint32)
    corpus("grids").kernel("warp_size").launch(grid=(1,), block=(64,), args=[out])
    assert_equal(out, np.full(64, 32), "warpSize")


# --- parameters ------------------------------------------------------------------------------------

def test_parameters_of_every_size(corpus):
    """Negative values in unsigned-declared PTX parameters (nvcc declares int as .u32) are the
    same bits, as cuLaunchKernel copies them; a struct goes as its raw bytes."""
    out = np.zeros(11, np.int64)
    mixed = struct.pack("<b3xidh6x", -7, -123456, 2.75, -300)
    corpus("params").kernel("echo_params").launch(grid=(1,), block=(1,), args=[
        -5, 4_000_000_000, -2 ** 40, 1.5, -0.1, mixed, -100, 65000, out])
    want = [-5, 4_000_000_000, -2 ** 40, int(np.float32(1.5).view(np.uint32)), int(np.float64(-0.1).view(np.int64)),
            -7, -123456, int(np.float64(2.75).view(np.int64)), -300, -100, 65000]
    assert_equal(out, want, "parameters")


# --- printf, assert, trap ------------------------------------------------------------------------

def test_printf_lines(corpus):
    n = 600
    x = np.random.default_rng(60).standard_normal(n).astype(np.float32)
    result = run(corpus("printf"), "hello", n, [n, x])
    want = [f"thread {i % 256} of block {i // 256}: x={float(x[i]):.3f} i64={i * 10000000000} hex={i * 255:x} "
            f"{'odd' if i % 2 else 'even'} {chr(65 + i % 26)}" for i in range(0, n, 5)]
    # CUDA orders no two threads' output: compare as sorted lines
    assert sorted(result.printed.splitlines()) == sorted(want)


def test_printf_formats(corpus):
    result = corpus("printf").kernel("print_once").launch(grid=(2,), block=(64,), args=[1234.5678])
    assert result.printed == "value %g %e %5.1f|%-4d|%04u\n" % (1234.5678, 1234.5678, 1234.5678, 42, 7)


def test_assert_fails_the_launch_with_710(corpus):
    program = corpus("faults")
    n = 1000
    x = np.arange(1, n + 1, dtype=np.int32)
    out = np.zeros(n, np.int32)
    run(program, "check_positive", n, [n, x, out])
    assert_equal(out, x, "assert that holds")
    x[700] = -4
    with pytest.raises(KernelError) as failure:
        run(program, "check_positive", n, [n, x, out])
    assert failure.value.code == 710


def test_trap_fails_the_launch_with_715(corpus):
    program = corpus("faults")
    out = np.zeros(512, np.int32)
    run(program, "trap_on", 512, [1 << 20, out])
    assert_equal(out, np.arange(512), "no trap")
    with pytest.raises(KernelError) as failure:
        run(program, "trap_on", 512, [300, out])
    assert failure.value.code == 715


# --- cooperative launch -------------------------------------------------------------------------

@pytest.mark.parametrize("blocks,block", [(8, 128), (3, 1024), (33, 64)])
def test_cooperative_grid_sync(corpus, blocks, block):
    n = 5000
    data, out, total = np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros(1, np.int64)
    corpus("cooperative").kernel("grid_phases").launch(grid=(blocks,), block=(block,), args=[n, data, out, total],
                                                       cooperative=True)
    want = 2 * (n - 1 - np.arange(n)) + 1
    assert_equal(out, want, "values written by other CTAs before the grid barrier")
    assert total[0] == want.sum()


def test_barrier_votes(corpus):
    """__syncthreads_count, _and and _or (bar.red): every thread gets the CTA's answer, round
    after round of a loop the answers end."""
    rng = np.random.default_rng(61)
    blocks = 6
    x = rng.integers(0, 9, blocks * 256).astype(np.int32)
    x[256:512] = 5  # a CTA whose threads all agree
    out = np.zeros(3 * blocks * 256, np.int32)
    corpus("reduce").kernel("barrier_votes").launch(grid=(blocks,), block=(256,), args=[x, out])
    want = []
    for cta in x.reshape(blocks, 256):
        rounds = int(cta.max()) + 1  # the loop ends after the first round nobody's value exceeds
        count = sum(int((cta > r).sum()) for r in range(rounds))
        every = sum(int((cta > r).all()) for r in range(rounds))
        want += [count, every, rounds] * 256
    assert_equal(out, np.array(want), "barrier_votes")


def test_shuffles_with_distances_in_registers(corpus):
    """Warps whose lanes all ask for a distance warp reductions use (1 to 16, whole warp: a
    constant shuffle), for another one, for one each, or over segments of 8 and 16 lanes."""
    warps = [(1, 32), (2, 32), (4, 32), (8, 32), (16, 32), (3, 32), (None, 32), (2, 8), (4, 16), (None, 16)]
    rng = np.random.default_rng(88)
    x = rng.integers(-1000, 1000, 32 * len(warps)).astype(np.int32)
    distance = np.concatenate([np.full(32, d) if d is not None else rng.integers(0, 32, 32)
                               for d, _ in warps]).astype(np.int32)
    width = np.array([w for _, w in warps], np.int32)
    out = np.zeros(3 * x.size, np.int32)
    corpus("warp").kernel("warp_shift_modes").launch(grid=(1,), block=(x.size,), args=[x, distance, width, out])
    want = []
    for lane_global in range(x.size):
        w = int(width[lane_global // 32])
        lane, d = lane_global % 32, int(distance[lane_global]) & 31
        start = lane - lane % w
        base = lane_global - lane
        down = lane + d if lane + d < start + w else lane
        up = lane - d if lane - d >= start else lane
        xor = lane ^ d if (lane ^ d) < start + w else lane
        want += [int(x[base + down]), int(x[base + up]), int(x[base + xor])]
    assert_equal(out, np.array(want), "shuffles")
