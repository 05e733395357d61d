"""Loads and stores whose lanes' addresses do not follow each other across the warp.

A warp's access is contiguous most of the time (lowered inline as one masked vector access).
What is left is lowered out of line, once per module and element and offset width, so that
each instruction stays small for the compiler.  The helpers look at each half-warp of 16
lanes: a 2D block 16 threads wide gives halves that each read a row (contiguous) or one
value (uniform), which become one vector access or one scalar access per half; any other
pattern is a gather or scatter of 16 lanes.

    value = load_scattered(builder, base, offsets, mask, element)
    store_scattered(builder, base, offsets, value, mask)

``base`` is a pointer the offsets count from (null for absolute 64-bit addresses).
"""

from __future__ import annotations

from llvmlite import ir

from vgpu.compute.lower.lanes import I1, I8, I32, WARP, Lanes, mangled

PTR = ir.PointerType()
HALF = WARP // 2


def load_scattered(builder: ir.IRBuilder, base: ir.Value, offsets: ir.Value, mask: ir.Value,
                   element: ir.IntType) -> ir.Value:
    """Each active lane's ``element`` at ``base + offset`` (inactive lanes: undefined)."""
    helper = _helper(builder.module, "load", element, offsets.type.element)
    return builder.call(helper, [base, offsets, builder.bitcast(mask, I32)])


def store_scattered(builder: ir.IRBuilder, base: ir.Value, offsets: ir.Value, value: ir.Value,
                    mask: ir.Value) -> None:
    """Each active lane's value to ``base + offset``; lanes of a half-warp that share an
    address leave the highest such lane's value, as a scatter does."""
    helper = _helper(builder.module, "store", value.type.element, offsets.type.element)
    builder.call(helper, [base, offsets, builder.bitcast(mask, I32), value])


def _helper(module: ir.Module, kind: str, element: ir.IntType, width: ir.IntType) -> ir.Function:
    name = f"vgpu.{kind}_scattered.{mangled(element)}.{mangled(width)}"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    arguments = [PTR, ir.VectorType(width, WARP), I32]  # the mask as bits: a vector of i1 goes through memory
    if kind == "store":
        arguments.append(ir.VectorType(element, WARP))
    result = ir.VectorType(element, WARP) if kind == "load" else ir.VoidType()
    function = ir.Function(module, ir.FunctionType(result, arguments), name)
    function.linkage = "internal"
    function.attributes.add("noinline")
    _Halves(function, kind, element, width).build()
    return function


class _Halves:
    """The body of one helper: each half-warp classified and accessed on its own."""

    def __init__(self, function: ir.Function, kind: str, element: ir.IntType, width: ir.IntType) -> None:
        self.fn = function
        self.kind = kind
        self.element = element
        self.width = width
        self.size = element.width // 8
        self.b = ir.IRBuilder(function.append_basic_block("entry"))
        self.lanes = Lanes(self.b)  # (its intrinsic calls; the helper's vectors are half-warps)

    def build(self) -> None:
        base, offsets, mask = self.fn.args[:3]
        halves = []
        for half in range(2):
            lanes = [half * HALF + i for i in range(HALF)]
            part_offsets = self._pick(offsets, lanes)
            bits = self.b.trunc(self.b.lshr(mask, ir.Constant(I32, half * HALF)), ir.IntType(HALF))
            part_mask = self.b.bitcast(bits, ir.VectorType(I1, HALF))
            part_value = self._pick(self.fn.args[3], lanes) if self.kind == "store" else None
            halves.append(self._half(base, part_offsets, part_mask, part_value))
        if self.kind == "load":
            self.b.ret(self.b.shuffle_vector(halves[0], halves[1], _indices(range(WARP))))
        else:
            self.b.ret_void()

    def _pick(self, vector: ir.Value, lanes: list[int]) -> ir.Value:
        return self.b.shuffle_vector(vector, ir.Constant(vector.type, ir.Undefined), _indices(lanes))

    def _splat(self, value: ir.Value, typ: ir.VectorType) -> ir.Value:
        one = self.b.insert_element(ir.Constant(typ, ir.Undefined), value, ir.Constant(I32, 0))
        return self.b.shuffle_vector(one, ir.Constant(typ, ir.Undefined), _indices([0] * HALF))

    def _all(self, condition: ir.Value, mask: ir.Value) -> ir.Value:
        """Whether ``condition`` holds in every active lane."""
        return self.lanes.intrinsic("llvm.vector.reduce.and", I1, [self.b.or_(condition, self.b.not_(mask))])

    def _half(self, base: ir.Value, offsets: ir.Value, mask: ir.Value, value: ir.Value | None) -> ir.Value | None:
        """One half-warp: contiguous from its first active lane, all at one address, or neither."""
        b = self.b
        vector = ir.VectorType(self.element, HALF)
        bits = b.bitcast(mask, ir.IntType(HALF))
        first_lane = self.lanes.intrinsic("llvm.cttz", bits.type, [bits, ir.Constant(I1, 0)], [bits.type])
        first = b.extract_element(offsets, first_lane)
        size = ir.Constant(self.width, self.size)
        start = b.sub(first, b.mul(b.zext(first_lane, self.width), size))
        steps = ir.Constant(offsets.type, [ir.Constant(self.width, i * self.size) for i in range(HALF)])
        contiguous = self._all(b.icmp_unsigned("==", offsets, b.add(self._splat(start, offsets.type), steps)), mask)
        uniform = self._all(b.icmp_unsigned("==", offsets, self._splat(first, offsets.type)), mask)
        active = b.icmp_unsigned("!=", bits, ir.Constant(bits.type, 0))

        before = b.block
        run = self.fn.append_basic_block()
        row = self.fn.append_basic_block()
        check_one = self.fn.append_basic_block()
        one = self.fn.append_basic_block()
        each = self.fn.append_basic_block()
        join = self.fn.append_basic_block()
        b.cbranch(active, run, join)
        b.position_at_end(run)
        b.cbranch(contiguous, row, check_one)
        b.position_at_end(check_one)
        b.cbranch(uniform, one, each)
        align = ir.Constant(I32, self.size)

        b.position_at_end(row)
        row_pointer = b.gep(base, [start], source_etype=I8)
        if value is None:
            row_value = self.lanes.intrinsic("llvm.masked.load", vector,
                                             [row_pointer, align, mask, ir.Constant(vector, ir.Undefined)], [vector, PTR])
        else:
            self.lanes.intrinsic("llvm.masked.store", ir.VoidType(), [value, row_pointer, align, mask], [vector, PTR])
        b.branch(join)

        b.position_at_end(one)
        pointer = b.gep(base, [first], source_etype=I8)
        if value is None:
            scalar = b.load(pointer, typ=self.element)
            scalar.align = self.size
            one_value = self._splat(scalar, vector)
        else:  # the highest active lane's value, as a scatter leaves it
            last = b.sub(ir.Constant(bits.type, HALF - 1),
                         self.lanes.intrinsic("llvm.ctlz", bits.type, [bits, ir.Constant(I1, 0)], [bits.type]))
            stored = b.store(b.extract_element(value, last), pointer)
            stored.align = self.size
        b.branch(join)

        b.position_at_end(each)
        pointers = b.gep(base, [offsets], source_etype=I8)
        pointers.type = ir.VectorType(PTR, HALF)  # llvmlite types a GEP by its base; a vector index makes a vector
        if value is None:
            each_value = self.lanes.intrinsic("llvm.masked.gather", vector,
                                              [pointers, align, mask, ir.Constant(vector, ir.Undefined)],
                                              [vector, pointers.type])
        else:
            self.lanes.intrinsic("llvm.masked.scatter", ir.VoidType(), [value, pointers, align, mask],
                                 [vector, pointers.type])
        b.branch(join)

        b.position_at_end(join)
        if value is not None:
            return None
        phi = b.phi(vector)
        phi.add_incoming(ir.Constant(vector, ir.Undefined), before)
        phi.add_incoming(row_value, row)
        phi.add_incoming(one_value, one)
        phi.add_incoming(each_value, each)
        return phi


def _indices(lanes) -> ir.Constant:
    return ir.Constant(ir.VectorType(I32, len(list(lanes))), [ir.Constant(I32, lane) for lane in lanes])
