"""Special registers (``%tid.x``, ``%laneid``, ``%clock64``...), each lane's value as a
vector of its natural width."""

from __future__ import annotations

from llvmlite import ir

from vgpu.compute.lower.lanes import I32, I64, WARP
from vgpu.compute.lower.registry import Unsupported

V32 = ir.VectorType(I32, WARP)


def _block(fl, axis: int) -> ir.Value:
    return fl.load_field("block", I32, axis)


def special_register(fl, name: str) -> ir.Value:
    b, lanes = fl.b, fl.lanes
    axis = {"x": 0, "y": 1, "z": 2}.get(name.rsplit(".", 1)[-1]) if "." in name else None
    base = name.split(".", 1)[0]
    if base == "%tid":
        return _thread_index(fl, axis)
    if base == "%ntid":
        return lanes.splat(_block(fl, axis))
    if base == "%ctaid":
        return lanes.splat(fl.args[("ctaid_x", "ctaid_y", "ctaid_z")[axis]])
    if base == "%nctaid":
        return lanes.splat(fl.load_field("grid", I32, axis))
    if name == "%laneid":
        return fl.lane_ids
    if name == "%warpid":
        return lanes.splat(fl.args["warp"])
    if name == "%nwarpid":
        return lanes.splat(ir.Constant(I32, 64))
    if name.startswith("%lanemask_"):
        one = lanes.splat(ir.Constant(I32, 1))
        bit = b.shl(one, fl.lane_ids)
        kind = name[len("%lanemask_"):]
        if kind == "eq":
            return bit
        if kind == "lt":
            return b.sub(bit, one)
        if kind == "le":
            return b.or_(bit, b.sub(bit, one))
        if kind == "gt":
            return b.not_(b.or_(bit, b.sub(bit, one)))
        if kind == "ge":
            return b.not_(b.sub(bit, one))
    if name in ("%clock", "%clock64", "%clock_hi"):
        cycles = fl.lanes.intrinsic("llvm.readcyclecounter", I64, [], [])
        if name == "%clock":
            return lanes.splat(b.trunc(cycles, I32))
        if name == "%clock_hi":
            return lanes.splat(b.trunc(b.lshr(cycles, ir.Constant(I64, 32)), I32))
        return lanes.splat(cycles)
    if name in ("%globaltimer", "%globaltimer_lo", "%globaltimer_hi"):
        value = _realtime_ns(fl)
        if name == "%globaltimer_lo":
            return lanes.splat(b.trunc(value, I32))
        if name == "%globaltimer_hi":
            return lanes.splat(b.trunc(b.lshr(value, ir.Constant(I64, 32)), I32))
        return lanes.splat(value)
    if name == "%smid":
        linear = b.add(fl.args["ctaid_x"], b.mul(fl.load_field("grid", I32, 0),
                                                 b.add(fl.args["ctaid_y"], b.mul(fl.load_field("grid", I32, 1),
                                                                                 fl.args["ctaid_z"]))))
        return lanes.splat(b.urem(linear, fl.load_field("sm_count", I32)))
    if name == "%nsmid":
        return lanes.splat(fl.load_field("sm_count", I32))
    if name == "%gridid":
        return lanes.splat(ir.Constant(I64, 1))
    if name == "%dynamic_smem_size":
        return lanes.splat(fl.load_field("dynamic_shared", I32))
    if name == "%total_smem_size":
        return lanes.splat(b.add(fl.load_field("dynamic_shared", I32),
                                 ir.Constant(I32, fl.unit.layout.dynamic_shared_offset)))
    if name in ("%envreg1", "%envreg2"):  # the grid barrier of a cooperative launch: high and low halves
        barrier = fl.load_field("grid_barrier", I64)
        if name == "%envreg1":
            barrier = b.lshr(barrier, ir.Constant(I64, 32))
        return lanes.splat(b.trunc(barrier, I32))
    if name.startswith("%envreg"):
        raise Unsupported(f"the driver's register {name}")
    if name.startswith("%pm"):  # performance counters
        return lanes.splat(ir.Constant(I32, 0))
    if name == "WARP_SZ":
        return lanes.splat(ir.Constant(I32, WARP))
    raise Unsupported(f"the special register {name}")


def _realtime_ns(fl) -> ir.Value:
    """Nanoseconds of the host's real-time clock (a GPU's global timer also counts ns)."""
    b = fl.b
    clock_gettime = fl.unit.module.globals.get("clock_gettime") or ir.Function(
        fl.unit.module, ir.FunctionType(I32, [I32, ir.PointerType()]), "clock_gettime")
    spec = fl.entry_alloca(ir.ArrayType(I64, 2))
    b.call(clock_gettime, [ir.Constant(I32, 0), spec])
    seconds = b.load(b.gep(spec, [ir.Constant(I32, 0), ir.Constant(I32, 0)]), typ=I64)
    nanos = b.load(b.gep(spec, [ir.Constant(I32, 0), ir.Constant(I32, 1)]), typ=I64)
    return b.add(b.mul(seconds, ir.Constant(I64, 1_000_000_000)), nanos)


def divide(fl, values: ir.Value, divisor: ir.Value) -> tuple[ir.Value, ir.Value]:
    """Quotient and remainder of each lane's value (below 2**24) by a positive divisor the
    same in every lane, without integer division (x86 has none for vectors): through a float
    reciprocal, then one correction each way."""
    b, lanes = fl.b, fl.lanes
    d = lanes.splat(divisor)
    floats = ir.VectorType(ir.FloatType(), WARP)
    reciprocal = b.fdiv(ir.Constant(ir.FloatType(), 1.0), b.uitofp(divisor, ir.FloatType()))
    q = b.fptosi(b.fmul(b.sitofp(values, floats), lanes.splat(reciprocal)), V32)
    r = b.sub(values, b.mul(q, d))
    one = lanes.splat(ir.Constant(I32, 1))
    low = b.icmp_signed("<", r, lanes.splat(ir.Constant(I32, 0)))
    q, r = b.select(low, b.sub(q, one), q), b.select(low, b.add(r, d), r)
    high = b.icmp_signed(">=", r, d)
    return b.select(high, b.add(q, one), q), b.select(high, b.sub(r, d), r)


def _thread_index(fl, axis: int) -> ir.Value:
    """A lane's place in its block along ``axis``: in a one-dimensional block, its linear
    index (or 0) at once; otherwise worked out by dividing by the block's extents."""
    b, lanes = fl.b, fl.lanes
    linear = b.add(lanes.splat(b.mul(fl.args["warp"], ir.Constant(I32, WARP))), fl.lane_ids)
    flat = b.icmp_unsigned("==", b.mul(_block(fl, 1), _block(fl, 2)), ir.Constant(I32, 1))
    before = b.block
    divided = fl.fn.append_basic_block("divided")
    join = fl.fn.append_basic_block("thread_index")
    b.cbranch(flat, join, divided)
    b.position_at_end(divided)
    rows, x = divide(fl, linear, _block(fl, 0))
    if axis == 0:
        value = x
    else:
        z, y = divide(fl, rows, _block(fl, 1))
        value = y if axis == 1 else z
    divided_end = b.block
    b.branch(join)
    b.position_at_end(join)
    index = b.phi(V32)
    index.add_incoming(linear if axis == 0 else lanes.splat(ir.Constant(I32, 0)), before)
    index.add_incoming(value, divided_end)
    return index
