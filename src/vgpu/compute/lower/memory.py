"""Memory instructions: ``ld``, ``st``, ``atom``, ``red``, ``cvta``, ``isspacep``, ``cp.async``,
fences and cache hints, over every state space.

Every address becomes a host address for each lane.  Generic and ``.global``/``.const``
addresses are host addresses already (device memory is mapped at its device addresses where
kernels run); ``.shared`` addresses are offsets in the CTA's shared block; ``.local`` ones are
offsets in each lane's own stack; a kernel's ``.param`` space is its packed parameter buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from vgpu.compute.lower.lanes import I1, I8, I32, I64, WARP
from vgpu.compute.lower.layout import param_layout
from vgpu.compute.lower.registry import TYPES, Unsupported
from vgpu.compute.lower.scattered import load_scattered, store_scattered
from vgpu.compute.ptx.syntax import Address, Instruction, Register, Symbol

PTR = ir.PointerType()
SPACES = ("global", "shared", "local", "const", "param", "generic")
V64 = ir.VectorType(I64, WARP)
#: branch weights of "the lanes' addresses follow each other": the common case, so that the
#: register allocator keeps the warp's registers out of the way of the scattered path's call
CONTIGUOUS_WEIGHTS = [8, 1]


def space_of(ins: Instruction) -> str:
    for modifier in ins.modifiers:
        if modifier in SPACES:
            return modifier
        if modifier.startswith("shared::"):
            return "shared"
        if modifier.startswith("param::"):
            return "param"
    return "generic"


def value_type(ins: Instruction) -> str:
    for modifier in reversed(ins.modifiers):
        if modifier in TYPES:
            return modifier
    raise Unsupported(f"{ins.opcode}.{'.'.join(ins.modifiers)} without a type")


def vector_count(ins: Instruction) -> int:
    for modifier in ins.modifiers:
        if modifier in ("v2", "v4", "v8"):
            return int(modifier[1:])
    return 1


def kernel_param_address(fl, name: str, offset: int) -> ir.Value:
    offsets, _ = param_layout(fl.ptx.params)
    b = fl.b
    params = b.inttoptr(fl.load_field("params", I64), PTR)
    return b.gep(params, [ir.Constant(I64, offsets[name] + offset)], source_etype=I8)


@dataclass(frozen=True)
class Where:
    """Each lane's address for an access: ``base`` plus ``offsets`` (32-bit offsets in a
    shared block or a lane's stack: half the vector work of 64-bit addresses), or, without a
    base, absolute 64-bit addresses; ``uniform`` when every lane's is the same."""

    base: ir.Value | None
    offsets: ir.Value
    uniform: bool = False
    #: readable whatever the lanes (a kernel's parameters): no check that a lane is active
    readable: bool = False

    def shifted(self, fl, by: int) -> "Where":
        if not by:
            return self
        width = self.offsets.type.element
        return Where(self.base, fl.b.add(self.offsets, fl.lanes.splat(ir.Constant(width, by))), self.uniform,
                     self.readable)

    def pointer(self, fl, offset: ir.Value) -> ir.Value:
        """The address of one lane (its offset given)."""
        if self.base is None:
            return fl.b.inttoptr(offset, PTR)
        return fl.b.gep(self.base, [offset], source_etype=I8)

    def base_pointer(self) -> ir.Value:
        """What the offsets count from (null: they are absolute addresses)."""
        return self.base if self.base is not None else ir.Constant(PTR, None)


def addresses(fl, operand: Address, space: str) -> Where:
    """Each lane's address for a memory operand in a state space."""
    b, lanes = fl.b, fl.lanes
    base, offset = operand.base, operand.offset
    if isinstance(base, Symbol):
        name = base.name
        if name in fl.unit.layout.shared_offset:
            at = ir.Constant(I32, fl.unit.layout.shared_offset[name] + offset)
            return Where(fl.args["shared"], lanes.splat(at), True)
        if name in fl.unit.layout.symbol_index:
            return Where(None, b.add(fl.symbol_address(name), lanes.splat(ir.Constant(I64, offset))), True)
        if name in fl.local_offsets:
            at = b.trunc(b.add(fl.sp, ir.Constant(I64, fl.local_offsets[name] + offset)), I32)
            return _local(fl, lanes.splat(at))
        if name in fl.own_params:
            if fl.kernel:
                at = b.ptrtoint(kernel_param_address(fl, name, offset), I64)
                return Where(None, lanes.splat(at), True, readable=True)
            index, variable = fl.own_params[name]
            table = fl.args["params"]
            start = b.load(b.gep(table, [ir.Constant(I64, index)], source_etype=PTR), typ=PTR)
            return _per_lane(fl, start, variable.size, offset)
        if name in fl.call_buffers:
            return _per_lane(fl, fl.call_buffers[name], fl.param_vars[name].size, offset)
        raise Unsupported(f"the address [{name}+{offset}]")
    if space in ("shared", "local"):
        value = lanes.splat(ir.Constant(I32, offset)) if base is None else \
            b.add(fl.read(base, "u32"), lanes.splat(ir.Constant(I32, offset)))
        return Where(fl.args["shared"], value, base is None) if space == "shared" else _local(fl, value)
    if space == "param" and not fl.kernel:
        raise Unsupported("a .param access through a register in a device function")
    if base is None:
        return Where(None, lanes.splat(ir.Constant(I64, offset)), True)
    return Where(None, b.add(fl.read(base, "u64"), lanes.splat(ir.Constant(I64, offset))))


def _local(fl, offsets: ir.Value) -> Where:
    """Local-window offsets: each lane's own stack (lane i's starts i stacks into the area)."""
    b = fl.b
    lane_start = b.mul(fl.lane_ids, fl.lanes.splat(b.trunc(fl.stack_bytes, I32)))
    return Where(fl.args["local"], b.add(lane_start, offsets))


def _per_lane(fl, start: ir.Value, size: int, offset: int) -> Where:
    b = fl.b
    lane_bytes = b.mul(fl.lane_ids, fl.lanes.splat(ir.Constant(I32, max(size, 1))))
    return Where(start, b.add(lane_bytes, fl.lanes.splat(ir.Constant(I32, offset))))


def _any(fl, mask: ir.Value) -> ir.Value:
    return fl.lanes.intrinsic("llvm.vector.reduce.or", I1, [mask])


def _contiguous(fl, where: Where, size: int, mask: ir.Value) -> tuple[ir.Value, ir.Value]:
    """Whether the active lanes' addresses follow each other ``size`` bytes apart from lane
    0's, and lane 0's offset."""
    b, lanes = fl.b, fl.lanes
    width = where.offsets.type.element
    first = b.extract_element(where.offsets, ir.Constant(I32, 0))
    steps = ir.Constant(where.offsets.type, [ir.Constant(width, i * size) for i in range(WARP)])
    same = b.icmp_unsigned("==", where.offsets, b.add(lanes.splat(first), steps))
    return lanes.intrinsic("llvm.vector.reduce.and", I1, [b.or_(same, b.not_(mask))]), first


def load(fl, where: Where, element: ir.IntType, mask: ir.Value) -> ir.Value:
    """Each active lane's ``element`` at its address (inactive lanes: undefined)."""
    b, lanes = fl.b, fl.lanes
    vector = ir.VectorType(element, WARP)
    size = element.width // 8
    undef = ir.Constant(vector, ir.Undefined)
    if where.uniform and where.readable:  # one value for every lane, read whoever is active
        scalar = b.load(where.pointer(fl, b.extract_element(where.offsets, ir.Constant(I32, 0))), typ=element)
        scalar.align = size
        return lanes.splat(scalar)
    before = b.block
    fast = fl.fn.append_basic_block()
    slow = fl.fn.append_basic_block()
    join = fl.fn.append_basic_block()
    if where.uniform:
        b.cbranch(_any(fl, mask), fast, join)
        b.position_at_end(fast)
        scalar = b.load(where.pointer(fl, b.extract_element(where.offsets, ir.Constant(I32, 0))), typ=element)
        scalar.align = size
        fast_value = lanes.splat(scalar)
        fast_end = b.block
        b.branch(join)
        b.position_at_end(slow)
        b.unreachable()
        b.position_at_end(join)
        phi = b.phi(vector)
        phi.add_incoming(fast_value, fast_end)
        phi.add_incoming(undef, before)
        return phi
    contiguous, first = _contiguous(fl, where, size, mask)
    b.cbranch(contiguous, fast, slow).set_weights(CONTIGUOUS_WEIGHTS)
    b.position_at_end(fast)
    fast_value = lanes.intrinsic("llvm.masked.load", vector,
                                 [where.pointer(fl, first), ir.Constant(I32, size), mask, undef], [vector, PTR])
    fast_end = b.block
    b.branch(join)
    b.position_at_end(slow)
    slow_value = load_scattered(b, where.base_pointer(), where.offsets, mask, element)
    slow_end = b.block
    b.branch(join)
    b.position_at_end(join)
    phi = b.phi(vector)
    phi.add_incoming(fast_value, fast_end)
    phi.add_incoming(slow_value, slow_end)
    return phi


def store(fl, where: Where, value: ir.Value, mask: ir.Value) -> None:
    b, lanes = fl.b, fl.lanes
    size = value.type.element.width // 8
    contiguous, first = _contiguous(fl, where, size, mask)
    with b.if_else(contiguous) as (fast, slow):
        b.block.terminator.set_weights(CONTIGUOUS_WEIGHTS)
        with fast:
            lanes.intrinsic("llvm.masked.store", ir.VoidType(),
                            [value, where.pointer(fl, first), ir.Constant(I32, size), mask], [value.type, PTR])
        with slow:
            store_scattered(b, where.base_pointer(), where.offsets, value, mask)


def _bits(ptx_type: str) -> ir.IntType:
    from vgpu.compute.lower.lanes import bit_width
    return ir.IntType(bit_width(ptx_type))


def ld(fl, ins: Instruction) -> None:
    space = space_of(ins)
    ptx_type = value_type(ins)
    element = _bits(ptx_type)
    destination, source = ins.operands[0], ins.operands[1]
    if not isinstance(source, Address):
        raise Unsupported(f"ld from {source!r}")
    mask = fl.guard_mask(ins)
    where = addresses(fl, source, space)
    if ins.has("acquire"):
        fl.b.fence("acquire")
    targets = fl.vector_elements(destination)
    size = element.width // 8
    for k, register in enumerate(targets):
        value = load(fl, where.shifted(fl, k * size), element, mask)
        if isinstance(register, Register):
            fl.write(register, ptx_type, value, mask)


def st(fl, ins: Instruction) -> None:
    space = space_of(ins)
    ptx_type = value_type(ins)
    element = _bits(ptx_type)
    target, source = ins.operands[0], ins.operands[1]
    if not isinstance(target, Address):
        raise Unsupported(f"st to {target!r}")
    mask = fl.guard_mask(ins)
    where = addresses(fl, target, space)
    if ins.has("release"):
        fl.b.fence("release")
    size = element.width // 8
    bits_type = "b" + str(element.width) if element.width > 1 else "pred"
    for k, operand in enumerate(fl.vector_elements(source)):
        if operand is None:
            continue
        store(fl, where.shifted(fl, k * size), fl.read(operand, bits_type), mask)


# atomics ----------------------------------------------------------------------------------
_RMW = {"add": "add", "and": "and", "or": "or", "xor": "xor", "exch": "xchg"}


def _each_lane(fl, mask: ir.Value, body) -> None:
    """Run ``body(lane_index)`` for each active lane in turn (atomics: lanes of a warp that hit
    one address are serialised, as on a GPU)."""
    b = fl.b
    bits = b.bitcast(mask, I32)
    before = b.block
    loop = fl.fn.append_basic_block()
    work = fl.fn.append_basic_block()
    after = fl.fn.append_basic_block()
    b.branch(loop)
    b.position_at_end(loop)
    remaining = b.phi(I32)
    remaining.add_incoming(bits, before)
    b.cbranch(b.icmp_unsigned("==", remaining, ir.Constant(I32, 0)), after, work)
    b.position_at_end(work)
    lane = fl.lanes.intrinsic("llvm.cttz", I32, [remaining, ir.Constant(I1, 0)], [I32])
    body(lane)
    remaining.add_incoming(b.and_(remaining, b.sub(remaining, ir.Constant(I32, 1))), b.block)
    b.branch(loop)
    b.position_at_end(after)


def atom(fl, ins: Instruction) -> None:
    reduction = ins.opcode == "red"
    space = space_of(ins)
    ptx_type = value_type(ins)
    operation = next((m for m in ins.modifiers if m in ("add", "and", "or", "xor", "exch", "cas", "min", "max",
                                                        "inc", "dec")), None)
    if operation is None:
        raise Unsupported(f"{ins.opcode}.{'.'.join(ins.modifiers)}")
    if ptx_type in ("f16x2", "bf16x2", "bf16") or (ptx_type == "f16" and operation != "add") or \
            any(m in ("v2", "v4", "v8") for m in ins.modifiers):
        raise Unsupported(f"{ins.opcode}.{'.'.join(ins.modifiers)}")
    operands = ins.operands if reduction else ins.operands[1:]
    where = addresses(fl, operands[0], space)
    mask = fl.guard_mask(ins)
    b = fl.b
    from vgpu.compute.lower.lanes import element_type
    scalar = element_type(ptx_type)
    integer = ir.IntType(scalar.width) if isinstance(scalar, ir.IntType) else \
        {ir.HalfType(): ir.IntType(16), ir.FloatType(): I32, ir.DoubleType(): I64}[scalar]
    values = fl.read(operands[1], ptx_type)
    swap = fl.read(operands[2], ptx_type) if operation == "cas" else None
    result = fl.entry_alloca(ir.VectorType(scalar, WARP))
    ordering = "seq_cst" if any(m in ("acquire", "release", "acq_rel") for m in ins.modifiers) else "monotonic"

    def one(lane: ir.Value) -> None:
        pointer = where.pointer(fl, b.extract_element(where.offsets, lane))
        value = b.extract_element(values, lane)
        if operation == "cas":
            compare = b.bitcast(value, integer) if scalar != integer else value
            new = b.extract_element(swap, lane)
            new = b.bitcast(new, integer) if scalar != integer else new
            old = b.extract_value(b.cmpxchg(pointer, compare, new, ordering, "monotonic"), 0)
            old = b.bitcast(old, scalar) if scalar != integer else old
        elif operation in ("inc", "dec"):
            old = _wrapping_step(fl, pointer, value, operation == "inc")
        elif isinstance(scalar, ir.IntType):
            op = _RMW.get(operation) or {("min", True): "min", ("max", True): "max", ("min", False): "umin",
                                          ("max", False): "umax"}[(operation, ptx_type.startswith("s"))]
            old = b.atomic_rmw(op, pointer, value, ordering)
        elif operation == "add":
            old = b.atomic_rmw("fadd", pointer, value, ordering)
        elif operation in ("min", "max"):
            old = b.atomic_rmw("f" + operation, pointer, value, ordering)
        elif operation == "exch":
            old = b.bitcast(b.atomic_rmw("xchg", pointer, b.bitcast(value, integer), ordering), scalar)
        else:
            raise Unsupported(f"{ins.opcode}.{'.'.join(ins.modifiers)}")
        b.store(b.insert_element(b.load(result), old, lane), result)

    _each_lane(fl, mask, one)
    if not reduction:
        fl.write(ins.operands[0], ptx_type, b.load(result), mask)


def _wrapping_step(fl, pointer: ir.Value, bound: ir.Value, increment: bool) -> ir.Value:
    """atom.inc / atom.dec: ``old >= bound ? 0 : old + 1`` and
    ``(old == 0 || old > bound) ? bound : old - 1``, as a compare-and-swap loop."""
    b = fl.b
    element = bound.type
    start = b.load(pointer, typ=element)
    before = b.block
    loop = fl.fn.append_basic_block()
    after = fl.fn.append_basic_block()
    b.branch(loop)
    b.position_at_end(loop)
    old = b.phi(element)
    old.add_incoming(start, before)
    one, zero = ir.Constant(element, 1), ir.Constant(element, 0)
    if increment:
        new = b.select(b.icmp_unsigned(">=", old, bound), zero, b.add(old, one))
    else:
        wrap = b.or_(b.icmp_unsigned("==", old, zero), b.icmp_unsigned(">", old, bound))
        new = b.select(wrap, bound, b.sub(old, one))
    pair = b.cmpxchg(pointer, old, new, "seq_cst", "monotonic")
    seen = b.extract_value(pair, 0)
    old.add_incoming(seen, b.block)
    b.cbranch(b.extract_value(pair, 1), after, loop)
    b.position_at_end(after)
    return old


# address conversions ----------------------------------------------------------------------
def cvta(fl, ins: Instruction) -> None:
    b, lanes = fl.b, fl.lanes
    to = ins.has("to")
    space = space_of(ins)
    ptx_type = value_type(ins)
    value = fl.read(ins.operands[1], "u64")
    if space == "shared":
        base = lanes.splat(b.ptrtoint(fl.args["shared"], I64))
        value = b.sub(value, base) if to else b.add(b.and_(value, lanes.splat(ir.Constant(I64, 0xFFFF_FFFF))), base)
    elif space == "local":
        value = b.sub(value, fl.lane_local) if to else b.add(value, fl.lane_local)
    elif space not in ("global", "const", "param"):
        raise Unsupported(f"cvta.{'.'.join(ins.modifiers)}")
    fl.write(ins.operands[0], ptx_type, value, fl.guard_mask(ins))


def isspacep(fl, ins: Instruction) -> None:
    b, lanes = fl.b, fl.lanes
    space = ins.modifiers[0]
    value = fl.read(ins.operands[1], "u64")
    shared_start = lanes.splat(b.ptrtoint(fl.args["shared"], I64))
    shared_bytes = b.zext(fl.load_field("dynamic_shared", I32), I64)
    shared_end = b.add(shared_start, lanes.splat(b.add(shared_bytes, ir.Constant(I64, fl.unit.layout.dynamic_shared_offset))))
    in_shared = b.and_(b.icmp_unsigned(">=", value, shared_start), b.icmp_unsigned("<", value, shared_end))
    local_start = lanes.splat(b.ptrtoint(fl.args["local"], I64))
    local_end = b.add(local_start, lanes.splat(b.mul(fl.stack_bytes, ir.Constant(I64, WARP))))
    in_local = b.and_(b.icmp_unsigned(">=", value, local_start), b.icmp_unsigned("<", value, local_end))
    if space == "shared" or space.startswith("shared"):
        result = in_shared
    elif space == "local":
        result = in_local
    elif space in ("global", "const", "param"):
        result = b.not_(b.or_(in_shared, in_local))
    else:
        raise Unsupported(f"isspacep.{space}")
    fl.write(ins.operands[0], "pred", result, fl.guard_mask(ins))


def cp_async(fl, ins: Instruction) -> None:
    """``cp.async``: the copy is done at once (its completion may come any time before the
    wait, and now is such a time); ``commit_group``/``wait_group`` then have nothing to do."""
    if any(m.startswith("bulk") for m in ins.modifiers) or "mbarrier" in " ".join(ins.modifiers):
        raise Unsupported(f"cp.{'.'.join(ins.modifiers)}")
    if "commit_group" in ins.modifiers or "wait_group" in ins.modifiers or "wait_all" in ins.modifiers:
        return
    destination, source, size = ins.operands[0], ins.operands[1], ins.operands[2]
    copied = size.value if hasattr(size, "value") else None
    if copied not in (4, 8, 16):
        raise Unsupported("cp.async with a copy size that is not 4, 8 or 16")
    mask = fl.guard_mask(ins)
    to = addresses(fl, destination, "shared")
    frm = addresses(fl, source, "global")
    valid = None
    if len(ins.operands) > 3:  # src-size: bytes beyond it are zero-filled
        valid = fl.read(ins.operands[3], "u32")
    b = fl.b
    for k in range(copied // 4):
        word = load(fl, Where(frm.base, frm.shifted(fl, 4 * k).offsets), I32, mask)
        if valid is not None:
            keep = b.icmp_unsigned(">", valid, fl.lanes.splat(ir.Constant(I32, 4 * k)))
            word = b.select(keep, word, fl.lanes.splat(ir.Constant(I32, 0)))
        store(fl, to.shifted(fl, 4 * k), word, mask)


def fence(fl, ins: Instruction) -> None:
    fl.b.fence("seq_cst")
