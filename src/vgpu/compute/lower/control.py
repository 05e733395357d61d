"""Control instructions beyond plain branches: CTA barriers, ``trap``, ``brx.idx``, ``call``
(device functions, direct and indirect, and the driver's own: ``vprintf``, ``__assertfail``)."""

from __future__ import annotations

from llvmlite import ir

from vgpu.compute.launch import PRINTF_ARGS_MAX, PRINTF_RECORD_HEAD
from vgpu.compute.launch import offset as launch_offset
from vgpu.compute.lower.lanes import I1, I8, I32, I64, WARP
from vgpu.compute.lower.registry import Unsupported
from vgpu.compute.ptx.syntax import CallTargets, Instruction, Symbol

PTR = ir.PointerType()
ASSERT = 710
TRAP = 715
LAUNCH_FAILED = 719


#: bytes before a CTA's warp frames for what all its warps share: the lanes a ``bar.red``
#: counted with its predicate true and false (BARRIER_COUNTS words), then the totals of the
#: last barrier, which the warps read on resuming (the CTA loop moves them at each release)
CTA_WORDS = 128
BARRIER_COUNTS = 2


def barrier(fl, ins: Instruction, lanes: ir.Value) -> None:
    """What a CTA barrier does before its warp waits: ``bar.red`` adds its lanes' predicates to
    the CTA's counts (the warps of a CTA run on one host thread: no atomics needed)."""
    if ins.has("arrive"):
        raise Unsupported(f"{ins.opcode}.{'.'.join(ins.modifiers)} (barrier arrivals)")
    expected = 3 if ins.has("red") else 1
    if len(ins.operands) > expected:
        raise Unsupported(f"{ins.opcode} with a thread count (named barriers for part of a CTA)")
    if not ins.has("red"):
        return
    b = fl.b
    predicate = fl.read(ins.operands[2], "pred")
    words = _cta_words(fl)
    for word, chosen in enumerate((b.and_(lanes, predicate), b.and_(lanes, b.not_(predicate)))):
        count = fl.lanes.intrinsic("llvm.ctpop", I32, [b.bitcast(chosen, I32)])
        slot = b.gep(words, [ir.Constant(I64, 4 * word)], source_etype=I8)
        b.store(b.add(b.load(slot, typ=I32), count), slot)


def barrier_result(fl, ins: Instruction) -> None:
    """On resuming after ``bar.red``: its result from the CTA's totals, in the waiting lanes."""
    b = fl.b
    words = _cta_words(fl)
    trues, falses = (b.load(b.gep(words, [ir.Constant(I64, 4 * (BARRIER_COUNTS + word))], source_etype=I8), typ=I32)
                     for word in range(BARRIER_COUNTS))
    if ins.has("popc"):
        fl.write(ins.operands[0], "u32", fl.lanes.splat(trues), fl.mask)
        return
    if ins.has("and"):
        value = b.icmp_unsigned("==", falses, ir.Constant(I32, 0))
    elif ins.has("or"):
        value = b.icmp_unsigned("!=", trues, ir.Constant(I32, 0))
    else:
        raise Unsupported(f"{ins.opcode}.{'.'.join(ins.modifiers)}")
    fl.write(ins.operands[0], "pred", fl.lanes.splat(value), fl.mask)


def _cta_words(fl) -> ir.Value:
    """The CTA's shared words, just before warp 0's frame."""
    b = fl.b
    warp_bytes = b.mul(b.zext(fl.args["warp"], I64), ir.Constant(I64, fl.frame_size))
    start = b.sub(b.sub(b.ptrtoint(fl.args["frame"], I64), warp_bytes), ir.Constant(I64, CTA_WORDS))
    return b.inttoptr(start, PTR)


def _thread_linear(fl, lane: ir.Value) -> ir.Value:
    b = fl.b
    return b.add(b.mul(fl.args["warp"], ir.Constant(I32, WARP)), lane)


def _first_lane(fl, mask: ir.Value) -> ir.Value:
    return fl.lanes.intrinsic("llvm.cttz", I32, [fl.b.bitcast(mask, I32), ir.Constant(I1, 0)], [I32])


def record_failure(fl, mask: ir.Value) -> None:
    """Note the first failing thread's place in the launch record and stop other CTAs."""
    b = fl.b
    lane = _first_lane(fl, mask)
    field = lambda name, i: b.gep(fl.launch, [ir.Constant(I64, launch_offset(name) + 4 * i)], source_etype=I8)
    for axis, arg in enumerate(("ctaid_x", "ctaid_y", "ctaid_z")):
        b.store(fl.args[arg], field("error_cta", axis))
    linear = _thread_linear(fl, lane)
    x, y = fl.load_field("block", I32, 0), fl.load_field("block", I32, 1)
    b.store(b.urem(linear, x), field("error_thread", 0))
    b.store(b.urem(b.udiv(linear, x), y), field("error_thread", 1))
    b.store(b.udiv(linear, b.mul(x, y)), field("error_thread", 2))
    b.atomic_rmw("xchg", field("abort", 0), ir.Constant(I32, 1), "monotonic")


def fail(fl, ins: Instruction, mask: ir.Value, code: int) -> None:
    """If any lane in ``mask`` gets here, the launch ends with ``code``."""
    b = fl.b
    any_lane = fl.lanes.intrinsic("llvm.vector.reduce.or", I1, [mask])
    with b.if_then(any_lane, likely=False):
        record_failure(fl, mask)
        b.ret(ir.Constant(I32, code))


def branch_indexed(fl, ins: Instruction, lanes: ir.Value) -> None:
    """``brx.idx index, table``: each lane goes to the table's entry it indexes."""
    from vgpu.compute.lower.cfg import branch_tables
    table = branch_tables(fl.ptx)[ins.operands[1].name]
    index = fl.read(ins.operands[0], "u32")
    target = fl.splat32(0)
    b = fl.b
    for position, label in enumerate(table):
        hit = b.icmp_unsigned("==", index, fl.lanes.splat(ir.Constant(I32, position)))
        target = b.select(hit, fl.splat32(fl.labels[label]), target)
    fl.go(lanes, target)


def call(fl, ins: Instruction) -> None:
    targets = ins.operands[0]
    if not isinstance(targets, CallTargets):
        raise Unsupported(f"call without its operand lists (line {ins.line})")
    mask = fl.guard_mask(ins)
    callee = targets.callee
    if isinstance(callee, Symbol) and callee.name == "vprintf":
        _vprintf(fl, targets, mask)
        return
    if isinstance(callee, Symbol) and callee.name == "__assertfail":
        _assertfail(fl, targets, mask)
        return
    for name in (*targets.returns, *targets.arguments):
        if not isinstance(name, Symbol) or name.name not in fl.call_buffers:
            raise Unsupported(f"a call argument that is not a .param variable (line {ins.line})")
    buffers = [fl.call_buffers[s.name] for s in (*targets.returns, *targets.arguments)]
    table = fl.entry_alloca(ir.ArrayType(PTR, max(len(buffers), 1)))
    b = fl.b
    for index, buffer in enumerate(buffers):
        b.store(buffer, b.gep(table, [ir.Constant(I32, 0), ir.Constant(I32, index)]))
    if isinstance(callee, Symbol):
        candidates = [(callee.name, mask)]
    else:
        ids = fl.read(callee, "u64")
        candidates = []
        for name, number in fl.unit.function_ids.items():
            if _arity(fl, name) == (len(targets.returns), len(targets.arguments)):
                candidates.append((name, b.and_(mask, b.icmp_unsigned("==", ids, fl.lanes.splat(ir.Constant(I64, number))))))
    sp = b.add(fl.sp, ir.Constant(I64, fl.frame_bytes))
    context = [fl.args[name] if name in fl.args else ir.Constant(PTR, None) for name in
               ("launch", "frame", "shared", "local", "ctaid_x", "ctaid_y", "ctaid_z", "warp")]
    for name, lanes in candidates:
        function = fl.unit.lower_function(name)
        any_lane = fl.lanes.intrinsic("llvm.vector.reduce.or", I1, [lanes])
        with b.if_then(any_lane):
            rc = b.call(function, [*context, lanes, table, sp])
            with b.if_then(b.icmp_unsigned("!=", rc, ir.Constant(I32, 0)), likely=False):
                b.ret(rc)


def _arity(fl, name: str) -> tuple[int, int]:
    for function in fl.unit.ptx.functions:
        if function.name == name and function.defined:
            return len(function.returns), len(function.params)
    return -1, -1


def stack_check(fl) -> None:
    """A device function whose frame does not fit in the lane's stack ends the launch (a GPU
    reports a stack overflow as a launch failure)."""
    b = fl.b
    end = b.add(fl.sp, ir.Constant(I64, fl.frame_bytes))
    with b.if_then(b.icmp_unsigned(">", end, fl.stack_bytes), likely=False):
        record_failure(fl, fl.args["mask"])
        b.ret(ir.Constant(I32, LAUNCH_FAILED))


def _param_value(fl, symbol: object, lane: ir.Value, offset: int, element: ir.IntType) -> ir.Value:
    """One lane's value stored (st.param) into a call buffer."""
    b = fl.b
    buffer = fl.call_buffers[symbol.name]
    size = fl.param_vars[symbol.name].size
    at = b.add(b.mul(b.zext(lane, I64), ir.Constant(I64, size)), ir.Constant(I64, offset))
    return b.load(b.gep(buffer, [at], source_etype=I8), typ=element)


def _reserve(fl, size: int) -> ir.Value:
    """Room for a record in the printf buffer: its address, or null when full."""
    b = fl.b
    used = b.gep(fl.launch, [ir.Constant(I64, launch_offset("printf_used"))], source_etype=I8)
    start = b.atomic_rmw("add", used, ir.Constant(I64, size), "monotonic")
    capacity = fl.load_field("printf_capacity", I64)
    buffer = fl.load_field("printf_buffer", I64)
    fits = b.icmp_unsigned("<=", b.add(start, ir.Constant(I64, size)), capacity)
    return b.select(fits, b.inttoptr(b.add(buffer, start), PTR), ir.Constant(PTR, None))


def _write_record(fl, lane: ir.Value, format_address: ir.Value, source: ir.Value | None, size: int) -> None:
    b = fl.b
    record = _reserve(fl, PRINTF_RECORD_HEAD + size)
    with b.if_then(b.icmp_unsigned("!=", record, ir.Constant(PTR, None))):
        field = lambda at: b.gep(record, [ir.Constant(I64, at)], source_etype=I8)
        b.store(format_address, field(0))
        b.store(ir.Constant(I32, size if source is not None else 0), field(8))
        b.store(_thread_linear(fl, lane), field(12))
        b.store(fl.args["ctaid_x"], field(16))
        b.store(fl.args["ctaid_y"], field(20))
        b.store(fl.args["ctaid_z"], field(24))
        b.store(ir.Constant(I32, 0), field(28))
        if source is not None:
            fl.lanes.intrinsic("llvm.memcpy", ir.VoidType(),
                               [field(PRINTF_RECORD_HEAD), source, ir.Constant(I64, size), ir.Constant(I1, 0)],
                               [PTR, PTR, I64])


def _vprintf(fl, targets: CallTargets, mask: ir.Value) -> None:
    """Each calling lane, in lane order, files its format's address and a copy of its
    argument buffer; the host formats them at the next synchronisation."""
    from vgpu.compute.lower.memory import _each_lane
    b = fl.b
    fmt_symbol, args_symbol = targets.arguments

    def one(lane: ir.Value) -> None:
        fmt = _param_value(fl, fmt_symbol, lane, 0, I64)
        args = _param_value(fl, args_symbol, lane, 0, I64)
        _write_record(fl, lane, fmt, b.inttoptr(args, PTR), PRINTF_ARGS_MAX)

    _each_lane(fl, mask, one)
    if targets.returns:  # printf's result: CUDA gives the number of arguments; 0 here
        ret = targets.returns[0]
        buffer = fl.call_buffers[ret.name]
        size = fl.param_vars[ret.name].size
        b.store(ir.Constant(ir.ArrayType(I8, size * WARP), [ir.Constant(I8, 0)] * (size * WARP)), buffer)


def _assertfail(fl, targets: CallTargets, mask: ir.Value) -> None:
    """``__assertfail(message, file, line, function, char size)``: the first failing lane's
    message is filed like a printf record whose format address is 0, and the launch ends
    with CUDA_ERROR_ASSERT."""
    b = fl.b
    any_lane = fl.lanes.intrinsic("llvm.vector.reduce.or", I1, [mask])
    with b.if_then(any_lane, likely=False):
        lane = _first_lane(fl, mask)
        message, file, line, function = targets.arguments[:4]
        slot = fl.entry_alloca(ir.ArrayType(I64, 4))
        values = [_param_value(fl, message, lane, 0, I64), _param_value(fl, file, lane, 0, I64),
                  b.zext(_param_value(fl, line, lane, 0, I32), I64), _param_value(fl, function, lane, 0, I64)]
        for index, value in enumerate(values):
            b.store(value, b.gep(slot, [ir.Constant(I32, 0), ir.Constant(I32, index)]))
        _write_record(fl, lane, ir.Constant(I64, 0), slot, 32)
        record_failure(fl, mask)
        b.ret(ir.Constant(I32, ASSERT))
