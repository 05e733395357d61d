"""A kernel as an LLVM module: its warp function, the device functions it calls, and the
entry point that runs CTAs.

``int32_t vgpu_entry(Launch *launch, uint32_t first_cta, uint32_t count)``: for each CTA, the
warps run in turn until each has ended or waits at a barrier; when all that have not ended
wait, the barrier opens (their ``WAIT`` bits are cleared) and the round repeats.  Shared
memory, the warps' frames and the lanes' stacks come from one ``malloc`` per call.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from llvmlite import ir

from vgpu.compute.launch import PRINTF_ARGS_MAX
from vgpu.compute.launch import offset as launch_offset
from vgpu.compute.lower.control import BARRIER_COUNTS, CTA_WORDS
from vgpu.compute.lower.function import AT_BARRIER, EXIT, WAIT, FunctionLowering, Unit
from vgpu.compute.lower.lanes import I8, I32, I64, WARP
from vgpu.compute.lower.layout import ModuleLayout, function_ids, local_frame, param_layout
from vgpu.compute.lower.registry import Unsupported
from vgpu.compute.ptx.syntax import Function, Instruction, Module

PTR = ir.PointerType()
ENTRY = "vgpu_entry"
OUT_OF_MEMORY = 2


@dataclass(frozen=True)
class KernelFacts:
    """What a launch needs to know about a compiled kernel."""

    name: str
    param_offsets: dict[str, int]
    param_bytes: int
    param_types: tuple[str, ...]
    static_shared: int
    dynamic_shared_offset: int
    #: bytes of local memory a thread needs at least (all functions' frames together)
    local_bytes: int
    #: the module's .global/.const variables, in symbol-table order: (name, size)
    symbols: tuple[tuple[str, int], ...]
    #: whether running it can be seen: it touches memory outside its CTAs, calls, prints or
    #: traps (a kernel that cannot, an empty one, needs no running)
    observable: bool = True


def lower_kernel(ptx: Module, name: str) -> tuple[ir.Module, KernelFacts]:
    importlib.import_module("vgpu.compute.lower.ops")  # the lane-wise instructions fill the registry
    kernel = ptx.function(name)
    if not kernel.is_kernel:
        raise Unsupported(f"{name} is a device function, not a kernel")
    module = ir.Module(name=name)
    layout = ModuleLayout.of(ptx, kernel)
    unit = Unit(module, ptx, layout, {}, function_ids(ptx), None)
    lowered: list[Function] = [kernel]

    def lower_function(callee: str) -> ir.Function:
        if callee not in unit.functions:
            function = next((f for f in ptx.functions if f.name == callee and f.defined and not f.is_kernel), None)
            if function is None:
                raise Unsupported(f"a call to {callee}, which this module does not define")
            lowered.append(function)
            lowering = FunctionLowering(unit, function, f"func_{len(unit.functions)}")
            unit.functions[callee] = lowering.fn
            lowering.lower()
        return unit.functions[callee]

    unit.lower_function = lower_function
    warp = FunctionLowering(unit, kernel, "warp")
    warp.lower()
    warp.fn.attributes.add("alwaysinline")  # called from the entry's CTA loop alone
    _entry(module, warp, layout)
    offsets, size = param_layout(kernel.params)
    facts = KernelFacts(
        name=name, param_offsets=offsets, param_bytes=size, param_types=tuple(p.type for p in kernel.params),
        static_shared=layout.static_shared, dynamic_shared_offset=layout.dynamic_shared_offset,
        local_bytes=sum(local_frame(f)[1] for f in lowered),
        symbols=tuple((v.name, v.size) for v in layout.globals_), observable=observable(kernel))
    return module, facts


def _entry(module: ir.Module, warp: FunctionLowering, layout: ModuleLayout) -> None:
    fn = ir.Function(module, ir.FunctionType(I32, [PTR, I32, I32]), ENTRY)
    launch, first, count = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    malloc = ir.Function(module, ir.FunctionType(PTR, [I64]), "malloc")
    free = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]), "free")

    def field(name: str, typ: ir.Type, index: int = 0) -> ir.Value:
        at = launch_offset(name) + index * (typ.width // 8)
        return b.load(b.gep(launch, [ir.Constant(I64, at)], source_etype=I8), typ=typ)

    block = [field("block", I32, i) for i in range(3)]
    grid = [field("grid", I32, i) for i in range(2)]
    threads = b.mul(b.mul(block[0], block[1]), block[2])
    warps = b.udiv(b.add(threads, ir.Constant(I32, WARP - 1)), ir.Constant(I32, WARP))
    warps64 = b.zext(warps, I64)
    shared_bytes = b.add(b.zext(field("dynamic_shared", I32), I64), ir.Constant(I64, layout.dynamic_shared_offset))
    shared_room = b.and_(b.add(shared_bytes, ir.Constant(I64, 127)), ir.Constant(I64, ~127))
    stack = b.zext(field("stack_bytes", I32), I64)
    frames_room = b.mul(warps64, ir.Constant(I64, warp.frame_size))
    local_room = b.mul(warps64, b.mul(stack, ir.Constant(I64, WARP)))
    total = b.add(b.add(b.add(shared_room, frames_room), local_room),
                  ir.Constant(I64, 128 + CTA_WORDS + PRINTF_ARGS_MAX))
    scratch = b.call(malloc, [total])
    with b.if_then(b.icmp_unsigned("==", scratch, ir.Constant(PTR, None)), likely=False):
        b.ret(ir.Constant(I32, OUT_OF_MEMORY))
    base = b.and_(b.add(b.ptrtoint(scratch, I64), ir.Constant(I64, 127)), ir.Constant(I64, ~127))
    shared = b.inttoptr(base, PTR)
    cta_words = b.inttoptr(b.add(base, shared_room), PTR)  # the CTA's barrier reductions (control.py)
    frames = b.add(b.add(base, shared_room), ir.Constant(I64, CTA_WORDS))
    locals_ = b.add(frames, frames_room)
    done = b.alloca(ir.ArrayType(I8, WARP))
    result = b.alloca(I32)
    b.store(ir.Constant(I32, 0), result)
    lane_ids = ir.Constant(ir.VectorType(I32, WARP), [ir.Constant(I32, i) for i in range(WARP)])
    v32 = ir.VectorType(I32, WARP)

    def counted(limit: ir.Value, body) -> None:
        """for (i = 0; i < limit; i++) body(i); body may branch to ``leave`` blocks itself."""
        start = b.block
        head = fn.append_basic_block()
        work = fn.append_basic_block()
        after = fn.append_basic_block()
        b.branch(head)
        b.position_at_end(head)
        index = b.phi(limit.type)
        index.add_incoming(ir.Constant(limit.type, 0), start)
        b.cbranch(b.icmp_unsigned("<", index, limit), work, after)
        b.position_at_end(work)
        body(index)
        index.add_incoming(b.add(index, ir.Constant(limit.type, 1)), b.block)
        b.branch(head)
        b.position_at_end(after)

    def frame_of(w: ir.Value) -> ir.Value:
        return b.inttoptr(b.add(frames, b.mul(b.zext(w, I64), ir.Constant(I64, warp.frame_size))), PTR)

    def local_of(w: ir.Value) -> ir.Value:
        return b.inttoptr(b.add(locals_, b.mul(b.zext(w, I64), b.mul(stack, ir.Constant(I64, WARP)))), PTR)

    finish = fn.append_basic_block("finish")

    def one_cta(i: ir.Value) -> None:
        abort = b.load_atomic(b.gep(launch, [ir.Constant(I64, launch_offset("abort"))], source_etype=I8),
                              "monotonic", 4, typ=I32)
        go_on = fn.append_basic_block()
        b.cbranch(b.icmp_unsigned("!=", abort, ir.Constant(I32, 0)), finish, go_on)
        b.position_at_end(go_on)
        cta = b.add(first, i)
        per_layer = b.mul(grid[0], grid[1])
        cz = b.udiv(cta, per_layer)
        cy = b.urem(b.udiv(cta, grid[0]), grid[1])
        cx = b.urem(cta, grid[0])

        for word in range(2 * BARRIER_COUNTS):
            b.store(ir.Constant(I32, 0), b.gep(cta_words, [ir.Constant(I64, 4 * word)], source_etype=I8))

        def start_warp(w: ir.Value) -> None:
            def splat(value: ir.Value) -> ir.Value:
                one = b.insert_element(ir.Constant(v32, ir.Undefined), value, ir.Constant(I32, 0))
                return b.shuffle_vector(one, ir.Constant(v32, ir.Undefined), ir.Constant(v32, [ir.Constant(I32, 0)] * WARP))

            launched = b.icmp_unsigned("<", b.add(splat(b.mul(w, ir.Constant(I32, WARP))), lane_ids), splat(threads))
            zero = ir.Constant(v32, [ir.Constant(I32, 0)] * WARP)
            gone = ir.Constant(v32, [ir.Constant(I32, EXIT)] * WARP)
            b.store(b.select(launched, zero, gone), frame_of(w))
            b.store(ir.Constant(I8, 0), b.gep(done, [ir.Constant(I32, 0), w]))

        counted(warps, start_warp)
        round_head = fn.append_basic_block()
        b.branch(round_head)
        b.position_at_end(round_head)
        waiting = _entry_slot(b, fn, I32)
        b.store(ir.Constant(I32, 0), waiting)

        def run_warp(w: ir.Value) -> None:
            flag = b.gep(done, [ir.Constant(I32, 0), w])
            with b.if_then(b.icmp_unsigned("==", b.load(flag), ir.Constant(I8, 0))):
                rc = b.call(warp.fn, [launch, frame_of(w), shared, local_of(w), cx, cy, cz, w])
                with b.if_else(b.icmp_unsigned("==", rc, ir.Constant(I32, 0))) as (ended, other):
                    with ended:
                        b.store(ir.Constant(I8, 1), flag)
                    with other:
                        with b.if_else(b.icmp_unsigned("==", rc, ir.Constant(I32, AT_BARRIER))) as (at_barrier, failed):
                            with at_barrier:
                                b.store(ir.Constant(I32, 1), waiting)
                            with failed:
                                b.store(rc, result)
                                b.branch(finish)

        counted(warps, run_warp)
        release = fn.append_basic_block()
        next_cta = fn.append_basic_block()
        b.cbranch(b.icmp_unsigned("!=", b.load(waiting), ir.Constant(I32, 0)), release, next_cta)
        b.position_at_end(release)

        # what the warps' bar.red counted becomes the result they read on resuming
        for word in range(BARRIER_COUNTS):
            count = b.gep(cta_words, [ir.Constant(I64, 4 * word)], source_etype=I8)
            b.store(b.load(count, typ=I32), b.gep(cta_words, [ir.Constant(I64, 4 * (BARRIER_COUNTS + word))],
                                                  source_etype=I8))
            b.store(ir.Constant(I32, 0), count)

        def open_barrier(w: ir.Value) -> None:
            pc = b.load(frame_of(w), typ=v32)
            cleared = b.and_(pc, ir.Constant(v32, [ir.Constant(I32, ~WAIT & 0xFFFFFFFF)] * WARP))
            b.store(cleared, frame_of(w))

        counted(warps, open_barrier)
        b.branch(round_head)
        b.position_at_end(next_cta)

    counted(count, one_cta)
    b.branch(finish)
    b.position_at_end(finish)
    b.call(free, [scratch])
    b.ret(b.load(result))


def _entry_slot(b: ir.IRBuilder, fn: ir.Function, typ: ir.Type) -> ir.Value:
    entry = fn.entry_basic_block
    with b.goto_block(entry):
        b.position_before(entry.instructions[0])
        return b.alloca(typ)


#: instructions whose effects reach beyond the CTA's own shared and local memory
_OUTSIDE = frozenset({"st", "ld", "ldu", "atom", "red", "call", "trap", "brkpt", "cp", "prefetch", "mbarrier",
                      "tex", "tld4", "suld", "sust", "sured", "multimem", "stmatrix", "wmma", "griddepcontrol"})


def observable(kernel: Function) -> bool:
    """Whether a kernel's run can be observed: memory beyond its CTA's shared and local
    memory, calls (printf, device functions), traps.  An unknown instruction counts."""
    for statement in kernel.body or []:
        if isinstance(statement, Instruction) and statement.opcode in _OUTSIDE:
            if statement.opcode in ("st", "ld", "atom", "red") and \
                    any(m in ("shared", "local", "param") or m.startswith("shared::") for m in statement.modifiers):
                continue
            return True
    return False
