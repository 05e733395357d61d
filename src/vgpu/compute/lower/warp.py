"""Warp-wide instructions: ``shfl``, ``vote``, ``match``, ``redux``, ``activemask``, ``elect``,
``bar.warp.sync``.  A warp's lanes are one vector, so a lane reading another lane's value is a
permutation of that vector; the lanes taking part are the active mask, narrowed by the
instruction's member mask."""

from __future__ import annotations

from typing import Callable

from llvmlite import ir

from vgpu.compute.lower.lanes import I1, I32, I64, WARP
from vgpu.compute.lower.registry import TYPES, Unsupported
from vgpu.compute.ptx.syntax import Immediate, Instruction, PredicatePair, Register

V32 = ir.VectorType(I32, WARP)
V1 = ir.VectorType(I1, WARP)


def _members(fl, ins: Instruction, operand: object | None) -> ir.Value:
    """Lanes taking part: active, guarded, and in the member mask when one is given."""
    mask = fl.guard_mask(ins)
    if operand is None:
        return mask
    b = fl.b
    bits = fl.read(operand, "b32")
    member = b.icmp_unsigned("!=", b.and_(b.lshr(bits, fl.lane_ids), fl.lanes.splat(ir.Constant(I32, 1))),
                             fl.lanes.splat(ir.Constant(I32, 0)))
    return b.and_(mask, member)


def _ballot(fl, lanes: ir.Value) -> ir.Value:
    return fl.b.bitcast(lanes, I32)


def _type(ins: Instruction) -> str:
    for modifier in reversed(ins.modifiers):
        if modifier in TYPES:
            return modifier
    return "b32"


def shfl(fl, ins: Instruction) -> None:
    b, lanes = fl.b, fl.lanes
    mode = next(m for m in ins.modifiers if m in ("up", "down", "bfly", "idx"))
    synced = ins.has("sync")
    destination = ins.operands[0]
    a_op, b_op, c_op = ins.operands[1:4]
    member = ins.operands[4] if synced and len(ins.operands) > 4 else None
    mask = _members(fl, ins, member)
    a = fl.read(a_op, "b32")
    if isinstance(b_op, Immediate) and isinstance(c_op, Immediate):
        moved, pval = _constant_shuffle(b, mode, a, int(b_op.value) & 31, int(c_op.value))
    else:
        bval = b.and_(fl.read(b_op, "b32"), lanes.splat(ir.Constant(I32, 31)))
        cval = fl.read(c_op, "b32")
        segmask = b.and_(b.lshr(cval, lanes.splat(ir.Constant(I32, 8))), lanes.splat(ir.Constant(I32, 31)))
        not_seg = b.xor(segmask, lanes.splat(ir.Constant(I32, 31)))
        lane = fl.lane_ids
        max_lane = b.or_(b.and_(lane, segmask), b.and_(b.and_(cval, lanes.splat(ir.Constant(I32, 31))), not_seg))
        if mode == "up":
            j = b.sub(lane, bval)
            pval = b.icmp_signed(">=", j, max_lane)
        else:
            if mode == "down":
                j = b.add(lane, bval)
            elif mode == "bfly":
                j = b.xor(lane, bval)
            else:
                j = b.or_(b.and_(lane, segmask), b.and_(bval, not_seg))
            pval = b.icmp_signed("<=", j, max_lane)
        j = b.select(pval, j, lane)
        moved, pval = _common_shifts(fl, mode, a, bval, cval, lambda: permute(fl, a, j), pval)
    if isinstance(destination, PredicatePair):
        fl.write(destination.first, "b32", moved, mask)
        if destination.second is not None:
            fl.write(destination.second, "pred", pval, mask)
    else:
        fl.write(destination, "b32", moved, mask)


#: the shuffle distances warp reductions and scans use (nvcc keeps them in registers): with
#: such a distance in every lane and a whole warp's clamp, a shfl is one constant shuffle
COMMON_DISTANCES = (1, 2, 4, 8, 16)


def _common_shifts(fl, mode: str, a: ir.Value, bval: ir.Value, cval: ir.Value, general: Callable[[], ir.Value],
                   valid: ir.Value) -> tuple[ir.Value, ir.Value]:
    """What ``general()`` makes (a gather), unless every lane asks for one of COMMON_DISTANCES
    over the whole warp: then the constant shuffle for it, chosen at run time."""
    if mode == "idx":
        return general(), valid
    b, lanes = fl.b, fl.lanes
    clamp = 0 if mode == "up" else 31
    first_b = b.extract_element(bval, ir.Constant(I32, 0))
    first_c = b.extract_element(cval, ir.Constant(I32, 0))
    uniform = b.and_(lanes.intrinsic("llvm.vector.reduce.and", I1, [b.icmp_unsigned("==", bval, lanes.splat(first_b))]),
                     lanes.intrinsic("llvm.vector.reduce.and", I1, [b.icmp_unsigned("==", cval, lanes.splat(first_c))]))
    key = b.select(uniform, b.or_(first_b, b.shl(first_c, ir.Constant(I32, 8))), ir.Constant(I32, -1))
    gathered = fl.fn.append_basic_block("gathered")
    join = fl.fn.append_basic_block("shuffled")
    switch = b.switch(key, gathered)
    moved_phi, valid_phi = [], []
    for distance in COMMON_DISTANCES:
        case = fl.fn.append_basic_block(f"shift_{distance}")
        switch.add_case(ir.Constant(I32, distance | clamp << 8), case)
        b.position_at_end(case)
        moved, ok = _constant_shuffle(b, mode, a, distance, clamp)
        moved_phi.append((moved, case))
        valid_phi.append((ok, case))
        b.branch(join)
    b.position_at_end(gathered)
    moved_phi.append((general(), b.block))
    valid_phi.append((valid, b.block))
    b.branch(join)
    b.position_at_end(join)
    moved, ok = b.phi(a.type), b.phi(V1)
    for (value, block), (flags, _) in zip(moved_phi, valid_phi):
        moved.add_incoming(value, block)
        ok.add_incoming(flags, block)
    return moved, ok


def _constant_shuffle(b: ir.IRBuilder, mode: str, a: ir.Value, bval: int, cval: int) -> tuple[ir.Value, ir.Value]:
    """A shfl whose distance and clamp are known: one shuffle, and the constant valid lanes."""
    source, valid = _constant_sources(mode, bval, cval)
    moved = b.shuffle_vector(a, ir.Constant(V32, ir.Undefined), ir.Constant(V32, [ir.Constant(I32, j) for j in source]))
    return moved, ir.Constant(V1, [ir.Constant(I1, v) for v in valid])


def _constant_sources(mode: str, bval: int, cval: int) -> tuple[list[int], list[bool]]:
    segmask = (cval >> 8) & 31
    sources, valid = [], []
    for lane in range(WARP):
        max_lane = (lane & segmask) | (cval & 31 & ~segmask)
        if mode == "up":
            j = lane - bval
            ok = j >= max_lane
        elif mode == "down":
            j = lane + bval
            ok = j <= max_lane
        elif mode == "bfly":
            j = lane ^ bval
            ok = j <= max_lane
        else:
            j = (lane & segmask) | (bval & ~segmask & 31)
            ok = j <= max_lane
        sources.append(j if ok else lane)
        valid.append(ok)
    return sources, valid


def permute(fl, values: ir.Value, sources: ir.Value) -> ir.Value:
    """Lane i gets ``values[sources[i]]`` (sources in 0..31)."""
    b = fl.b
    slot = fl.entry_alloca(values.type)
    b.store(values, slot)
    size = values.type.element.width // 8
    start = fl.lanes.splat(b.ptrtoint(slot, I64))
    offsets = b.mul(b.zext(sources, ir.VectorType(I64, WARP)), fl.lanes.splat(ir.Constant(I64, size)))
    pointers = b.inttoptr(b.add(start, offsets), ir.VectorType(ir.PointerType(), WARP))
    return fl.lanes.intrinsic("llvm.masked.gather", values.type,
                              [pointers, ir.Constant(I32, values.type.element.width // 8),
                               ir.Constant(V1, [ir.Constant(I1, 1)] * WARP), ir.Constant(values.type, ir.Undefined)],
                              [values.type, pointers.type])


def vote(fl, ins: Instruction) -> None:
    b, lanes = fl.b, fl.lanes
    synced = ins.has("sync")
    member = ins.operands[2] if synced and len(ins.operands) > 2 else None
    active = _members(fl, ins, member)
    predicate = fl.read(ins.operands[1], "pred")
    mode = next(m for m in ins.modifiers if m in ("all", "any", "uni", "ballot"))
    chosen = b.and_(predicate, active)
    if mode == "ballot":
        fl.write(ins.operands[0], "b32", lanes.splat(_ballot(fl, chosen)), active)
        return
    if mode == "all":
        result = lanes.intrinsic("llvm.vector.reduce.and", I1, [b.or_(predicate, b.not_(active))])
    elif mode == "any":
        result = lanes.intrinsic("llvm.vector.reduce.or", I1, [chosen])
    else:
        some = lanes.intrinsic("llvm.vector.reduce.or", I1, [chosen])
        every = lanes.intrinsic("llvm.vector.reduce.and", I1, [b.or_(predicate, b.not_(active))])
        result = b.or_(every, b.not_(some))
    fl.write(ins.operands[0], "pred", lanes.splat(result), active)


def match(fl, ins: Instruction) -> None:
    b, lanes = fl.b, fl.lanes
    ptx_type = _type(ins)
    active = _members(fl, ins, ins.operands[2] if len(ins.operands) > 2 else None)
    values = fl.read(ins.operands[1], ptx_type)
    active_bits = _ballot(fl, active)
    destination = ins.operands[0]
    if ins.has("any"):
        result = lanes.splat(ir.Constant(I32, 0))
        for k in range(WARP):
            same = b.icmp_unsigned("==", values, lanes.splat(b.extract_element(values, ir.Constant(I32, k))))
            bit = b.and_(active_bits, ir.Constant(I32, 1 << k))
            result = b.or_(result, b.select(same, lanes.splat(bit), lanes.splat(ir.Constant(I32, 0))))
        fl.write(destination, "b32", result, active)
        return
    leader = b.extract_element(values, lanes.intrinsic("llvm.cttz", I32, [active_bits, ir.Constant(I1, 0)], [I32]))
    differs = b.and_(b.icmp_unsigned("!=", values, lanes.splat(leader)), active)
    equal = b.not_(lanes.intrinsic("llvm.vector.reduce.or", I1, [differs]))
    result = b.select(equal, active_bits, ir.Constant(I32, 0))
    first = destination.first if isinstance(destination, PredicatePair) else destination
    fl.write(first, "b32", lanes.splat(result), active)
    if isinstance(destination, PredicatePair) and destination.second is not None:
        fl.write(destination.second, "pred", lanes.splat(equal), active)


_REDUCE = {"add": ("llvm.vector.reduce.add", 0), "and": ("llvm.vector.reduce.and", -1),
           "or": ("llvm.vector.reduce.or", 0), "xor": ("llvm.vector.reduce.xor", 0)}


def redux(fl, ins: Instruction) -> None:
    b, lanes = fl.b, fl.lanes
    ptx_type = _type(ins)
    if ptx_type not in ("u32", "s32", "b32"):
        raise Unsupported(f"redux.{'.'.join(ins.modifiers)}")
    active = _members(fl, ins, ins.operands[2] if len(ins.operands) > 2 else None)
    values = fl.read(ins.operands[1], ptx_type)
    operation = next(m for m in ins.modifiers if m in ("add", "and", "or", "xor", "min", "max"))
    signed = ptx_type == "s32"
    if operation in _REDUCE:
        name, identity = _REDUCE[operation]
    else:
        name = f"llvm.vector.reduce.{'s' if signed else 'u'}{operation}"
        identity = {("min", True): 0x7FFFFFFF, ("min", False): -1, ("max", True): -0x80000000,
                    ("max", False): 0}[(operation, signed)]
    kept = b.select(active, values, lanes.splat(ir.Constant(I32, identity)))
    fl.write(ins.operands[0], ptx_type, lanes.splat(lanes.intrinsic(name, I32, [kept])), active)


def activemask(fl, ins: Instruction) -> None:
    mask = fl.guard_mask(ins)
    fl.write(ins.operands[0], "b32", fl.lanes.splat(_ballot(fl, fl.mask)), mask)


def elect(fl, ins: Instruction) -> None:
    b, lanes = fl.b, fl.lanes
    active = _members(fl, ins, ins.operands[1] if len(ins.operands) > 1 else None)
    leader = lanes.intrinsic("llvm.cttz", I32, [_ballot(fl, active), ir.Constant(I1, 0)], [I32])
    destination = ins.operands[0]
    first = destination.first if isinstance(destination, PredicatePair) else destination
    second = destination.second if isinstance(destination, PredicatePair) else None
    if isinstance(first, Register):
        fl.write(first, "b32", lanes.splat(leader), active)
    if second is not None:
        fl.write(second, "pred", b.icmp_unsigned("==", fl.lane_ids, lanes.splat(leader)), active)


def warp_barrier(fl, ins: Instruction) -> None:
    """``bar.warp.sync``: the lanes of a warp already run together here."""

