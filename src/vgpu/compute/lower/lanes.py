"""What an instruction's lowering works with: an IR builder positioned in a warp's code, and
helpers for values that hold one element per lane (``<32 x T>`` vectors).

Value types by PTX type: integers and bit types are ``iN``; ``f16`` is ``half``, ``f32``
``float``, ``f64`` ``double``; ``bf16`` is ``i16`` (its bits: LLVM arithmetic on bfloat is
done through ``float`` anyway); packed types (``f16x2``, ``bf16x2``) are their ``i32`` bits;
``pred`` is ``i1``.
"""

from __future__ import annotations

from typing import Sequence

from llvmlite import ir

WARP = 32

I1, I8, I16, I32, I64, I128 = (ir.IntType(n) for n in (1, 8, 16, 32, 64, 128))
HALF, FLOAT, DOUBLE = ir.HalfType(), ir.FloatType(), ir.DoubleType()

_FLOATS = {"f16": HALF, "f32": FLOAT, "f64": DOUBLE}
_BITS = {"pred": 1, "b8": 8, "u8": 8, "s8": 8, "b16": 16, "u16": 16, "s16": 16, "bf16": 16,
         "b32": 32, "u32": 32, "s32": 32, "f16x2": 32, "bf16x2": 32, "tf32": 32,
         "b64": 64, "u64": 64, "s64": 64, "b128": 128,
         "e4m3": 8, "e5m2": 8, "e4m3x2": 16, "e5m2x2": 16}


def element_type(ptx_type: str) -> ir.Type:
    """The LLVM type of one lane's value of a PTX type."""
    if ptx_type in _FLOATS:
        return _FLOATS[ptx_type]
    return ir.IntType(_BITS[ptx_type])


def bit_width(ptx_type: str) -> int:
    return 16 if ptx_type == "f16" else 32 if ptx_type == "f32" else 64 if ptx_type == "f64" else _BITS[ptx_type]


def mangled(llvm_type: ir.Type) -> str:
    """A type's part of an overloaded intrinsic's name (``v32f32``, ``i64``, ``p0``)."""
    if isinstance(llvm_type, ir.VectorType):
        return f"v{llvm_type.count}{mangled(llvm_type.element)}"
    if isinstance(llvm_type, ir.IntType):
        return f"i{llvm_type.width}"
    if isinstance(llvm_type, ir.PointerType):
        return "p0"
    return {HALF: "f16", FLOAT: "f32", DOUBLE: "f64"}[llvm_type]


def is_signed(ptx_type: str) -> bool:
    return ptx_type[0] == "s"


def is_float(ptx_type: str) -> bool:
    return ptx_type in _FLOATS


class Lanes:
    """A builder for one warp's code: every value is a vector of ``WARP`` lanes."""

    def __init__(self, builder: ir.IRBuilder) -> None:
        self.builder = builder
        self.module: ir.Module = builder.module
        self._carry: ir.Value | None = None  # an alloca of <WARP x i1>, made on first use

    @staticmethod
    def vector(element: ir.Type) -> ir.VectorType:
        return ir.VectorType(element, WARP)

    def of(self, ptx_type: str) -> ir.VectorType:
        """The vector type holding a PTX type's value in every lane."""
        return self.vector(element_type(ptx_type))

    def splat(self, value: ir.Value) -> ir.Value:
        """A scalar broadcast to every lane (LLVM folds constants)."""
        vector_type = self.vector(value.type)
        if isinstance(value, ir.Constant):
            return ir.Constant(vector_type, [value] * WARP)
        one = self.builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(I32, 0))
        return self.builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined),
                                           ir.Constant(self.vector(I32), [0] * WARP))

    def constant(self, ptx_type: str, value: int | float) -> ir.Constant:
        """``value`` in every lane, as the PTX type (ints wrap to the type's width)."""
        element = element_type(ptx_type)
        if isinstance(element, ir.IntType):
            value = int(value) & ((1 << element.width) - 1)
        return ir.Constant(self.vector(element), [ir.Constant(element, value)] * WARP)

    def intrinsic(self, name: str, return_type: ir.Type, args: Sequence[ir.Value],
                  types: Sequence[ir.Type] | None = None) -> ir.Value:
        """Call an LLVM intrinsic (``llvm.fma``, ``llvm.ctpop``...), overloaded on ``types``
        (default: the arguments' types, deduplicated, as LLVM mangles most intrinsics)."""
        if types is None:
            types = []
            for arg in args:
                if arg.type not in types:
                    types.append(arg.type)
        full = ".".join([name, *(mangled(t) for t in types)])
        function = self.module.globals.get(full)
        if function is None:
            function = ir.Function(self.module, ir.FunctionType(return_type, [a.type for a in args]), full)
        return self.builder.call(function, list(args))

    def bitcast(self, value: ir.Value, element: ir.Type) -> ir.Value:
        """Reinterpret each lane's bits as ``element`` (same width)."""
        return self.builder.bitcast(value, self.vector(element))

    # the carry flag of add.cc / addc / sub.cc / subc / mad.cc / madc --------------------------
    def _carry_slot(self) -> ir.Value:
        if self._carry is None:
            function = self.builder.function
            entry = function.entry_basic_block
            with self.builder.goto_block(entry):
                if entry.instructions:
                    self.builder.position_before(entry.instructions[0])
                self._carry = self.builder.alloca(self.vector(I1), name="carry")
                self.builder.store(ir.Constant(self.vector(I1), [ir.Constant(I1, 0)] * WARP), self._carry)
        return self._carry

    def carry(self) -> ir.Value:
        """Each lane's carry flag (CC.CF) as the last ``.cc`` instruction left it."""
        return self.builder.load(self._carry_slot())

    def set_carry(self, value: ir.Value) -> None:
        self.builder.store(value, self._carry_slot())
