"""One PTX function as one LLVM function that runs a warp: 32 lanes as vectors.

Each lane has a program counter: the index of the block it runs next (``cfg``).  The warp
runs the lowest block any live lane waits for, with the lanes waiting there as the active
mask; every register write keeps the inactive lanes' old values.  Lanes that reach a CTA
barrier wait (their counter gets ``WAIT``); when every live lane waits, a kernel's warp
function saves the registers live after its barriers in its frame and returns
``AT_BARRIER``; the CTA loop (``kernel``) releases the barrier and calls it again.

Kernel warp functions: ``i32 (ptr launch, ptr frame, ptr shared, ptr local, i32 ctaid.x,
i32 ctaid.y, i32 ctaid.z, i32 warp)``.  Device functions (``.func``) run to completion for
the lanes that called them: ``i32 (same context..., <32 x i1> mask, ptr params, i64 sp)``.
Both return 0, ``AT_BARRIER`` or a CUDA error code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from llvmlite import ir

from vgpu.compute.launch import offset as launch_offset
from vgpu.compute.lower import cfg
from vgpu.compute.lower.lanes import I1, I8, I32, I64, WARP, Lanes, bit_width, element_type, is_float
from vgpu.compute.lower.layout import ModuleLayout, local_frame
from vgpu.compute.lower.registry import SEMANTICS, Unsupported
from vgpu.compute.ptx.syntax import (Function, Immediate, Instruction, Module, Negated, Register, RegisterDecl,
                                     Symbol, Variable, VectorOperand)

EXIT = 0x8000_0000
WAIT = 0x4000_0000
AT_BARRIER = 1
#: every this many dispatches, the furthest lanes run first (a power of two)
YIELD_EVERY = 1024
PTR = ir.PointerType()

CTX_ARGS = ("launch", "frame", "shared", "local", "ctaid_x", "ctaid_y", "ctaid_z", "warp")
CTX_TYPES = (PTR, PTR, PTR, PTR, I32, I32, I32, I32)
FUNC_EXTRA = ("mask", "params", "sp")


@dataclass
class Unit:
    """What the functions of one compiled kernel share: the LLVM module, the PTX module's
    layout and its device functions (lowered on first call)."""

    module: ir.Module
    ptx: Module
    layout: ModuleLayout
    functions: dict[str, ir.Function]
    function_ids: dict[str, int]
    #: called back to lower a device function the first time something calls it
    lower_function: Callable[[str], ir.Function]


class FunctionLowering:
    def __init__(self, unit: Unit, function: Function, name: str) -> None:
        self.unit = unit
        self.ptx = function
        self.kernel = function.is_kernel
        if self.kernel:
            ftype = ir.FunctionType(I32, CTX_TYPES)
        else:
            ftype = ir.FunctionType(I32, CTX_TYPES + (ir.VectorType(I1, WARP), PTR, I64))
        self.fn = ir.Function(unit.module, ftype, name)
        names = CTX_ARGS + (FUNC_EXTRA if not self.kernel else ())
        for arg, arg_name in zip(self.fn.args, names):
            arg.name = arg_name
        self.args = dict(zip(names, self.fn.args))
        for index in (0, 1) if self.kernel else (0,):
            self.fn.args[index].add_attribute("noalias")
        self.blocks, self.labels = cfg.split_blocks(function)
        self.register_types: dict[str, str] = {}
        self.local_offsets, self.frame_bytes = local_frame(function)
        self.param_vars: dict[str, Variable] = {}  # .param variables declared in the body (call arguments)
        for statement in function.body or []:
            if isinstance(statement, RegisterDecl):
                if statement.vector != 1:
                    raise Unsupported(f"vector registers (.v{statement.vector}) in {function.name}")
                for reg in statement.names:
                    self.register_types[reg] = statement.type
            elif isinstance(statement, Variable) and statement.space == "param":
                self.param_vars[statement.name] = statement
        self.own_params = {p.name: (i, p) for i, p in enumerate(list(function.returns) + list(function.params))}

    # -- setup ----------------------------------------------------------------------------
    def lower(self) -> ir.Function:
        fn = self.fn
        entry = fn.append_basic_block("entry")
        self.b = ir.IRBuilder(entry)
        self.lanes = Lanes(self.b)
        b = self.b
        self.lane_ids = ir.Constant(ir.VectorType(I32, WARP), [ir.Constant(I32, i) for i in range(WARP)])
        self.registers = {name: b.alloca(self._reg_vector(name), name=name.lstrip("%")) for name in self.register_types}
        self.pc = b.alloca(ir.VectorType(I32, WARP), name="pc")
        self.rounds = b.alloca(I32, name="rounds")
        b.store(ir.Constant(I32, 0), self.rounds)
        self.call_buffers = {name: b.alloca(ir.ArrayType(I8, max(v.size, 1) * WARP), name=name)
                             for name, v in self.param_vars.items()}
        for buffer in self.call_buffers.values():
            buffer.align = 16
        self.launch = self.args["launch"]
        self.stack_bytes = b.zext(self.load_field("stack_bytes", I32), I64)
        self.lane_local = b.add(self.lanes.splat(b.ptrtoint(self.args["local"], I64)),
                                b.mul(b.zext(self.lane_ids, ir.VectorType(I64, WARP)), self.lanes.splat(self.stack_bytes)))
        self.sp = self.args["sp"] if not self.kernel else ir.Constant(I64, 0)
        index_of = {name: i for i, name in enumerate(self.register_types)}
        live = cfg.live_in(self.blocks, index_of)
        resume = 0
        for block in self.blocks:
            if block.last is not None and cfg.is_barrier(block.last) and block.index + 1 < len(self.blocks):
                resume |= live[block.index + 1]
        if not self.kernel and resume:
            raise Unsupported(f"a CTA barrier inside the device function {self.ptx.name}")
        self.saved = [name for name, i in index_of.items() if resume >> i & 1]
        if self.kernel:
            frame = self.args["frame"]
            b.store(b.load(frame, typ=self.pc.allocated_type), self.pc)
            at = WARP * 4
            self.frame_slots = {}
            for name in self.saved:
                vector = self._reg_vector(name)
                at = (at + 127) // 128 * 128
                self.frame_slots[name] = at
                b.store(b.load(b.gep(frame, [ir.Constant(I64, at)], source_etype=I8), typ=vector), self.registers[name])
                at += WARP * max(1, vector.element.width // 8)
            self.frame_size = (at + 127) // 128 * 128
        else:
            mask = self.args["mask"]
            b.store(b.select(mask, self.splat32(0), self.splat32(EXIT)), self.pc)
            from vgpu.compute.lower.control import stack_check
            stack_check(self)
        self.dispatch = fn.append_basic_block("dispatch")
        setup_end = b.block
        self.ir_blocks = [fn.append_basic_block(f"b{block.index}") for block in self.blocks]
        # each block's active lanes, and whether they are all the lanes that may run: from the
        # dispatcher, or from a block whose lanes all branched here together
        self.mask_phis, self.alone_phis = [], []
        for ir_block in self.ir_blocks:
            b.position_at_end(ir_block)
            self.mask_phis.append(b.phi(ir.VectorType(I1, WARP), name="mask"))
            self.alone_phis.append(b.phi(I1, name="alone"))
        b.position_at_end(setup_end)
        b.branch(self.dispatch)
        self._emit_dispatch()
        for block in self.blocks:
            self._emit_block(block)
        return fn

    def entry_alloca(self, typ: ir.Type, name: str = "") -> ir.Value:
        """Stack space in the entry block (an alloca inside a loop would grow the stack)."""
        entry = self.fn.entry_basic_block
        with self.b.goto_block(entry):
            self.b.position_before(entry.instructions[0])
            slot = self.b.alloca(typ, name=name)
        return slot

    def _reg_vector(self, name: str) -> ir.VectorType:
        return ir.VectorType(ir.IntType(bit_width(self.register_types[name])), WARP)

    def splat32(self, value: int) -> ir.Constant:
        return ir.Constant(ir.VectorType(I32, WARP), [ir.Constant(I32, value)] * WARP)

    def load_field(self, field: str, typ: ir.Type, index: int = 0) -> ir.Value:
        at = launch_offset(field) + index * (typ.width // 8)
        return self.b.load(self.b.gep(self.launch, [ir.Constant(I64, at)], source_etype=I8), typ=typ)

    def _emit_dispatch(self) -> None:
        b = self.b
        b.position_at_end(self.dispatch)
        pc = b.load(self.pc)
        low = self.lanes.intrinsic("llvm.vector.reduce.umin", I32, [pc])
        done_block = self.fn.append_basic_block("done")
        check_wait = self.fn.append_basic_block("check_wait")
        b.cbranch(b.icmp_unsigned(">=", low, ir.Constant(I32, EXIT)), done_block, check_wait)
        b.position_at_end(done_block)
        b.ret(ir.Constant(I32, 0))
        b.position_at_end(check_wait)
        suspend = self.fn.append_basic_block("suspend")
        run = self.fn.append_basic_block("run")
        b.cbranch(b.icmp_unsigned("!=", b.and_(low, ir.Constant(I32, WAIT)), ir.Constant(I32, 0)), suspend, run)
        b.position_at_end(suspend)
        if self.kernel:
            frame = self.args["frame"]
            b.store(pc, frame)
            for name in self.saved:
                b.store(b.load(self.registers[name]),
                        b.gep(frame, [ir.Constant(I64, self.frame_slots[name])], source_etype=I8))
            b.ret(ir.Constant(I32, AT_BARRIER))
        else:
            b.unreachable()
        b.position_at_end(run)
        runnable = b.icmp_unsigned("<", pc, self.splat32(WAIT))
        # now and then the lanes furthest on run first: a lane spinning on a lock that a lane
        # further on holds (as a GPU's independent thread scheduling allows) lets it go on
        rounds = b.add(b.load(self.rounds), ir.Constant(I32, 1))
        b.store(rounds, self.rounds)
        yield_now = b.icmp_unsigned("==", b.and_(rounds, ir.Constant(I32, YIELD_EVERY - 1)), ir.Constant(I32, 0))
        before = b.block
        furthest = self.fn.append_basic_block("furthest")
        chosen = self.fn.append_basic_block("chosen")
        b.cbranch(yield_now, furthest, chosen).set_weights([1, YIELD_EVERY - 1])
        b.position_at_end(furthest)
        high = self.lanes.intrinsic("llvm.vector.reduce.umax", I32, [b.select(runnable, pc, self.splat32(0))])
        b.branch(chosen)
        b.position_at_end(chosen)
        picked = b.phi(I32)
        picked.add_incoming(low, before)
        picked.add_incoming(high, furthest)
        low = picked
        mask = b.icmp_unsigned("==", pc, self.lanes.splat(low))
        alone = b.not_(self.lanes.intrinsic("llvm.vector.reduce.or", I1, [b.and_(runnable, b.not_(mask))]))
        for mask_phi, alone_phi in zip(self.mask_phis, self.alone_phis):
            mask_phi.add_incoming(mask, chosen)
            alone_phi.add_incoming(alone, chosen)
        unreachable = self.fn.append_basic_block("bad_pc")
        switch = b.switch(low, unreachable)
        for block in self.blocks:
            switch.add_case(ir.Constant(I32, block.index), self.ir_blocks[block.index])
        b.position_at_end(unreachable)
        b.unreachable()

    # -- blocks ---------------------------------------------------------------------------
    def _emit_block(self, block: cfg.Block) -> None:
        b = self.b
        b.position_at_end(self.ir_blocks[block.index])
        self.mask = self.mask_phis[block.index]
        self.alone = self.alone_phis[block.index]
        before = self.blocks[block.index - 1].last if block.index else None
        if before is not None and cfg.is_barrier(before) and before.has("red"):
            from vgpu.compute.lower.control import barrier_result
            if block.index in self.labels.values():
                raise Unsupported(f"a branch to the instruction after {before.opcode}.red")
            barrier_result(self, before)
        nxt = block.index + 1 if block.index + 1 < len(self.blocks) else EXIT
        for ins in block.instructions:
            if ins is block.last and cfg.ends_block(ins):
                self._terminator(ins, nxt)
                return
            self._instruction(ins)
        if nxt != EXIT:
            self._jump_if(self.alone, nxt)
        self.go(self.mask, nxt)
        b.branch(self.dispatch)

    def _jump_if(self, condition: ir.Value, target: int) -> None:
        """When ``condition`` holds, every lane that may run goes to block ``target`` together:
        branch there directly, its lanes unchanged (no dispatch, and LLVM sees the loop)."""
        b = self.b
        jump = self.fn.append_basic_block()
        stay = self.fn.append_basic_block()
        b.cbranch(condition, jump, stay)
        b.position_at_end(jump)
        self.mask_phis[target].add_incoming(self.mask, jump)
        self.alone_phis[target].add_incoming(ir.Constant(I1, 1), jump)
        b.branch(self.ir_blocks[target])
        b.position_at_end(stay)

    def go(self, lanes: ir.Value, target: int | ir.Value) -> None:
        """Lanes in ``lanes`` continue at block ``target``."""
        value = self.splat32(target) if isinstance(target, int) else target
        self.b.store(self.b.select(lanes, value, self.b.load(self.pc)), self.pc)

    def guard_mask(self, ins: Instruction) -> ir.Value:
        if ins.guard is None:
            return self.mask
        p = self.b.load(self.registers[ins.guard.register.name])
        if ins.guard.negated:
            p = self.b.not_(p)
        return self.b.and_(self.mask, p)

    def _terminator(self, ins: Instruction, nxt: int) -> None:
        b = self.b
        taken = self.guard_mask(ins)
        not_taken = b.and_(self.mask, b.not_(taken))
        if ins.opcode == "bra":
            target = self.labels[ins.operands[0].name]
            if ins.guard is None:
                self._jump_if(self.alone, target)
            else:
                all_taken = b.not_(self.lanes.intrinsic("llvm.vector.reduce.or", I1, [not_taken]))
                self._jump_if(b.and_(self.alone, all_taken), target)
                if nxt != EXIT:
                    none_taken = b.not_(self.lanes.intrinsic("llvm.vector.reduce.or", I1, [taken]))
                    self._jump_if(b.and_(self.alone, none_taken), nxt)
            self.go(taken, target)
            self.go(not_taken, nxt)
        elif ins.opcode == "brx":
            from vgpu.compute.lower.control import branch_indexed
            branch_indexed(self, ins, taken)
            self.go(not_taken, nxt)
        elif ins.opcode in ("ret", "exit"):
            self.go(taken, EXIT)
            if ins.opcode == "exit" and not self.kernel:
                raise Unsupported(f"exit inside the device function {self.ptx.name}")
            self.go(not_taken, nxt)
        elif ins.opcode == "trap":
            from vgpu.compute.lower.control import fail
            fail(self, ins, taken, 715)
            self.go(not_taken, nxt)
        else:  # a CTA barrier
            from vgpu.compute.lower.control import barrier
            barrier(self, ins, taken)
            self.go(taken, nxt | WAIT if nxt != EXIT else EXIT)
            self.go(not_taken, nxt)
        b.branch(self.dispatch)

    def _instruction(self, ins: Instruction) -> None:
        from vgpu.compute.lower.handlers import HANDLERS
        handler = HANDLERS.get(ins.opcode)
        if handler is not None:
            handler(self, ins)
            return
        semantics = SEMANTICS.get(ins.opcode)
        if semantics is None:
            raise Unsupported(f"the instruction {ins.opcode} (line {ins.line})")
        signature = semantics.signature(ins)
        dests = cfg.destinations(ins)
        first_source = 1 if dests else 0
        sources = [self.read(op, t) for op, t in zip(ins.operands[first_source:], signature.sources)]
        if len(sources) != len(signature.sources):
            raise Unsupported(f"{ins.opcode}: {len(ins.operands)} operands (line {ins.line})")
        results = semantics.emit(self.lanes, ins, sources)
        mask = self.guard_mask(ins)
        for register, ptx_type, value in zip(dests, signature.destinations, results):
            if register is not None:
                self.write(register, ptx_type, value, mask)

    # -- operands -------------------------------------------------------------------------
    def read(self, operand: object, ptx_type: str) -> ir.Value:
        """An operand's value in every lane, as the PTX type's LLVM type."""
        b = self.b
        if isinstance(operand, Negated):
            return b.not_(self.read(operand.register, "pred"))
        if isinstance(operand, Immediate):
            return self._immediate(operand, ptx_type)
        if isinstance(operand, Symbol):
            return self._convert_bits(self.symbol_address(operand.name), ptx_type, signed=False)
        if isinstance(operand, Register):
            if operand.name not in self.registers:
                from vgpu.compute.lower.special import special_register
                value = special_register(self, operand.name)
                return self._convert_bits(value, ptx_type, signed=False)
            value = b.load(self.registers[operand.name])
            return self._convert_bits(value, ptx_type, signed=ptx_type.startswith("s"))
        raise Unsupported(f"operand {operand!r} as a {ptx_type} source")

    def _convert_bits(self, value: ir.Value, ptx_type: str, signed: bool) -> ir.Value:
        """Register bits (any width) to the PTX type: truncate, extend, reinterpret."""
        b = self.b
        value_type = element_type(ptx_type)
        width = value.type.element.width
        bits = 16 if value_type == ir.HalfType() else 32 if value_type == ir.FloatType() else \
            64 if value_type == ir.DoubleType() else value_type.width
        if width > bits:
            value = b.trunc(value, ir.VectorType(ir.IntType(bits), WARP))
        elif width < bits:
            extend = b.sext if signed else b.zext
            value = extend(value, ir.VectorType(ir.IntType(bits), WARP))
        if is_float(ptx_type):
            value = b.bitcast(value, ir.VectorType(value_type, WARP))
        return value

    def _immediate(self, operand: Immediate, ptx_type: str) -> ir.Value:
        value_type = element_type(ptx_type)
        if isinstance(value_type, ir.IntType):
            if isinstance(operand.value, float):
                if operand.bits is None:
                    raise Unsupported(f"a float literal as a {ptx_type} operand")
                number = operand.bits
            else:
                number = operand.value
            return self.lanes.constant(ptx_type, number)
        value = operand.value
        if operand.bits is not None and not isinstance(operand.value, float):
            value = float(operand.value)
        return ir.Constant(ir.VectorType(value_type, WARP), [ir.Constant(value_type, float(value))] * WARP)

    def write(self, register: Register, ptx_type: str, value: ir.Value, mask: ir.Value) -> None:
        """Store a result into a register for the lanes in ``mask``."""
        b = self.b
        slot = self.registers.get(register.name)
        if slot is None:
            raise Unsupported(f"writing {register.name}")
        target = slot.allocated_type
        if isinstance(value.type.element, (ir.HalfType, ir.FloatType, ir.DoubleType)):
            bits = {ir.HalfType(): 16, ir.FloatType(): 32, ir.DoubleType(): 64}[value.type.element]
            value = b.bitcast(value, ir.VectorType(ir.IntType(bits), WARP))
        width, want = value.type.element.width, target.element.width
        if width > want:
            value = b.trunc(value, target)
        elif width < want:
            value = (b.sext if ptx_type.startswith("s") else b.zext)(value, target)
        b.store(b.select(mask, value, b.load(slot)), slot)

    # -- addresses ------------------------------------------------------------------------
    def symbol_address(self, name: str) -> ir.Value:
        """A variable's address as a mov would give it: generic for .global/.const, the
        window offset for .shared/.local, a function's id for a function."""
        layout = self.unit.layout
        b = self.b
        if name in layout.symbol_index:
            symbols = b.inttoptr(self.load_field("symbols", I64), PTR)
            at = b.gep(symbols, [ir.Constant(I64, layout.symbol_index[name])], source_etype=I64)
            return self.lanes.splat(b.load(at, typ=I64))
        if name in layout.shared_offset:
            return self.lanes.splat(ir.Constant(I64, layout.shared_offset[name]))
        if name in self.local_offsets:
            return self.lanes.splat(b.add(self.sp, ir.Constant(I64, self.local_offsets[name])))
        if name in self.unit.function_ids:
            return self.lanes.splat(ir.Constant(I64, self.unit.function_ids[name]))
        if self.kernel and name in self.own_params:
            from vgpu.compute.lower.memory import kernel_param_address
            return self.lanes.splat(b.ptrtoint(kernel_param_address(self, name, 0), I64))
        raise Unsupported(f"the address of {name}")

    def vector_elements(self, operand: object) -> list:
        if isinstance(operand, VectorOperand):
            return list(operand.elements)
        return [operand]
