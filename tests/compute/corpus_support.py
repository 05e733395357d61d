"""What the kernel corpus's tests share: building PTX with nvcc, and numpy references for
rounding and bit patterns (f16, bf16, f32, f64) that numpy does not offer directly."""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

KERNELS = Path(__file__).parent / "kernels"
NVCC_FLAGS = ("-ptx", "-arch=compute_90", "-O3")


def nvcc() -> str | None:
    """nvcc 13 where installed (the corpus is written for it), else any nvcc on PATH."""
    for candidate in ("/usr/local/cuda-13.0/bin/nvcc", shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def build_ptx(source: Path, folder: Path) -> str:
    """``source`` compiled to PTX (skips the test where nvcc is missing)."""
    compiler = nvcc()
    if compiler is None:
        pytest.skip("nvcc is not on this machine")
    target = folder / (source.stem + ".ptx")
    if not target.exists():
        subprocess.run([compiler, *NVCC_FLAGS, "-o", str(target), str(source)], check=True, capture_output=True)
    return target.read_text()


# --- bit patterns ----------------------------------------------------------------------------

_UINT = {"f16": np.uint16, "bf16": np.uint16, "f32": np.uint32, "f64": np.uint64}


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """f32 values rounded to bf16 (nearest, ties to even; NaN stays NaN), as uint16 bits."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(values, dtype=np.float32))
    return np.where(nan, np.uint16(0x7FC0), rounded).astype(np.uint16)


def bf16_values(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns as f32 values (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def as_float(bits: int, kind: str) -> float:
    if kind == "bf16":
        return float(bf16_values(np.array([bits], dtype=np.uint16))[0])
    dtype = {"f16": np.float16, "f32": np.float32, "f64": np.float64}[kind]
    return float(np.array([bits], dtype=_UINT[kind]).view(dtype)[0])


def bits_of(value: float, kind: str) -> int:
    if kind == "bf16":
        return int(bf16_bits(np.array([value], dtype=np.float32))[0])
    dtype = {"f16": np.float16, "f32": np.float32, "f64": np.float64}[kind]
    return int(np.array([value], dtype=dtype).view(_UINT[kind])[0])


def round_exact(value: Fraction, kind: str) -> float:
    """An exact rational rounded once to ``kind`` (nearest, ties to even), as a Python float."""
    if value == 0:
        return 0.0
    try:
        nearest_double = float(value)
    except OverflowError:  # beyond the f64 range: rounds to an infinity
        return float("inf") if value > 0 else float("-inf")
    guess = bits_of(nearest_double, kind)  # within an ulp: the neighbours settle double rounding
    width = 16 if kind in ("f16", "bf16") else 32 if kind == "f32" else 64
    candidates = []
    for bits in (guess - 1, guess, guess + 1):
        if 0 <= bits < (1 << width):
            number = as_float(bits, kind)
            if np.isfinite(number):
                candidates.append((abs(Fraction(number) - value), bits & 1, number))
    if not candidates or np.isinf(as_float(guess, kind)):
        return as_float(guess, kind)
    return min(candidates)[2]


def exact_fma(a: np.ndarray, b: np.ndarray, c: np.ndarray, kind: str) -> np.ndarray:
    """a * b + c rounded once, element by element (non-finite operands: IEEE rules via f64)."""
    out = np.empty(len(a), dtype=np.float64)
    for i, (x, y, z) in enumerate(zip(a.astype(np.float64), b.astype(np.float64), c.astype(np.float64))):
        if np.isfinite(x) and np.isfinite(y) and np.isfinite(z):
            exact = Fraction(x) * Fraction(y) + Fraction(z)
            out[i] = round_exact(exact, kind) if exact != 0 else x * y + z
        else:
            with np.errstate(invalid="ignore"):
                out[i] = x * y + z
    return out


def same_floats(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Element-wise: equal bit patterns (so +0 differs from -0), or both NaN (any payload)."""
    got, want = np.asarray(got), np.asarray(want, dtype=got.dtype)
    unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
    both_nan = np.isnan(got.astype(np.float64)) & np.isnan(want.astype(np.float64))
    return (got.view(unsigned) == want.view(unsigned)) | both_nan


def assert_same_floats(got: np.ndarray, want: np.ndarray, what: str) -> None:
    ok = same_floats(got, want)
    if not ok.all():
        first = int(np.flatnonzero(~ok)[0])
        raise AssertionError(f"{what}: {int((~ok).sum())} of {ok.size} differ; first at {first}: "
                             f"got {got.flat[first]!r}, want {np.asarray(want).flat[first]!r}")


def assert_equal(got: np.ndarray, want: np.ndarray, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    ok = got == want
    if not np.all(ok):
        first = int(np.flatnonzero(~ok.ravel())[0])
        raise AssertionError(f"{what}: {int((~ok).sum())} of {ok.size} differ; first at {first}: "
                             f"got {got.ravel()[first]!r}, want {want.ravel()[first]!r}")


def ulp_distance_f32(got: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Steps between f32 results and the reference rounded to f32 (NaN against NaN: 0; one NaN
    or a different infinity: huge)."""
    want = np.asarray(reference, dtype=np.float64).astype(np.float32)
    return _ordered_distance(np.asarray(got, dtype=np.float32).view(np.int32).astype(np.int64),
                             want.view(np.int32).astype(np.int64), np.isnan(got), np.isnan(want))


def ulp_distance_f64(got: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Steps between f64 results and a long double reference rounded to f64."""
    want = np.asarray(reference).astype(np.float64)
    got_bits = np.asarray(got, dtype=np.float64).view(np.int64).astype(object)
    want_bits = want.view(np.int64).astype(object)
    return _ordered_distance(got_bits, want_bits, np.isnan(got), np.isnan(want))


def _ordered_distance(got_bits, want_bits, got_nan, want_nan) -> np.ndarray:
    sign = 1 << (31 if got_bits.dtype != object else 63)
    # sign-magnitude to a monotone integer line (+0 and -0 meet at 0)
    got_line = np.where(got_bits < 0, -(got_bits + sign), got_bits)
    want_line = np.where(want_bits < 0, -(want_bits + sign), want_bits)
    distance = np.abs(got_line - want_line).astype(np.float64)
    distance[got_nan & want_nan] = 0
    distance[got_nan ^ want_nan] = np.inf
    return distance


def wrap(value: int, bits: int, signed: bool) -> int:
    """An integer reduced to ``bits`` bits, two's complement when ``signed``."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if signed and value >> (bits - 1) else value
