"""Runs lane-wise PTX semantics on numpy arrays: one compiled function per instruction, whose
loop feeds 32 lanes at a time through the registered ``emit`` (as the lowering does), with
the engine's own optimiser and JIT."""

from __future__ import annotations

import ctypes
import importlib
from typing import Callable, Sequence

import numpy as np
from llvmlite import ir

from vgpu.compute import compiler
from vgpu.compute.lower.lanes import WARP, I64, Lanes, bit_width, element_type
from vgpu.compute.lower.registry import SEMANTICS
from vgpu.compute.ptx.syntax import Immediate, Instruction, Register

importlib.import_module("vgpu.compute.lower.ops")  # the lane-wise instructions fill the registry

STORAGE = {1: np.uint8, 8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}
NATURAL = {"f16": np.float16, "f32": np.float32, "f64": np.float64, "bf16": np.uint16, "pred": np.bool_,
           "f16x2": np.uint32, "bf16x2": np.uint32, "tf32": np.uint32}

Body = Callable[[Lanes, list[ir.Value]], list[ir.Value]]


def instruction(text: str, sources: int | None = None, immediates: dict[int, int] | None = None) -> Instruction:
    """``"add.rn.f32"`` as an Instruction; with ``sources``, register operands (a destination
    and that many sources), some of which may be immediates."""
    opcode, *modifiers = text.split(".")
    operands = []
    if sources is not None:
        operands = [Register("%d")]
        for index in range(sources):
            if immediates and index in immediates:
                operands.append(Immediate(immediates[index]))
            else:
                operands.append(Register(f"%s{index}"))
    return Instruction(opcode, tuple(modifiers), operands)


def storage(ptx_type: str) -> type:
    return STORAGE[bit_width(ptx_type)]


def natural(ptx_type: str) -> type:
    if ptx_type in NATURAL:
        return NATURAL[ptx_type]
    return {"s": {8: np.int8, 16: np.int16, 32: np.int32, 64: np.int64}}.get(ptx_type[0], {}).get(
        bit_width(ptx_type), storage(ptx_type))


class Compiled:
    """A compiled ``void f(ptr out..., ptr in..., i64 chunks)``; call with numpy arrays whose
    length is a multiple of 32, get the outputs in their natural numpy types."""

    def __init__(self, body: Body, sources: Sequence[str], destinations: Sequence[str]) -> None:
        self.sources, self.destinations = list(sources), list(destinations)
        module = ir.Module(name="lanes")
        pointer = ir.PointerType()
        arguments = [pointer] * (len(destinations) + len(sources)) + [I64]
        function = ir.Function(module, ir.FunctionType(ir.VoidType(), arguments), name="lanes")
        entry, loop, done = (function.append_basic_block(n) for n in ("entry", "loop", "done"))
        builder = ir.IRBuilder(entry)
        chunks = function.args[-1]
        builder.cbranch(builder.icmp_unsigned("==", chunks, ir.Constant(I64, 0)), done, loop)
        builder.position_at_end(loop)
        index = builder.phi(I64)
        index.add_incoming(ir.Constant(I64, 0), entry)
        lanes = Lanes(builder)
        values = []
        for argument, ptx_type in zip(function.args[len(destinations):], sources):
            values.append(self._load(builder, argument, index, ptx_type))
        results = body(lanes, values)
        assert len(results) == len(destinations), (results, destinations)
        for argument, ptx_type, value in zip(function.args, destinations, results):
            self._store(builder, argument, index, ptx_type, value)
        following = builder.add(index, ir.Constant(I64, 1))
        index.add_incoming(following, builder.block)
        builder.cbranch(builder.icmp_unsigned("<", following, chunks), loop, done)
        builder.position_at_end(done)
        builder.ret_void()
        self.ir = str(module)
        self.engine, address = compiler.load_object(compiler.compile_object(module), "lanes")
        self.function = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * (len(arguments) - 1) + [ctypes.c_int64]))(address)

    @staticmethod
    def _slot(builder: ir.IRBuilder, argument: ir.Value, index: ir.Value, element: ir.Type) -> ir.Value:
        return builder.gep(argument, [builder.mul(index, ir.Constant(I64, WARP))], source_etype=element)

    def _load(self, builder: ir.IRBuilder, argument: ir.Value, index: ir.Value, ptx_type: str) -> ir.Value:
        element = element_type(ptx_type)
        if ptx_type == "pred":
            raw = builder.load(self._slot(builder, argument, index, ir.IntType(8)), typ=ir.VectorType(ir.IntType(8), WARP), align=1)
            return builder.trunc(raw, ir.VectorType(ir.IntType(1), WARP))
        return builder.load(self._slot(builder, argument, index, element), typ=ir.VectorType(element, WARP), align=1)

    def _store(self, builder: ir.IRBuilder, argument: ir.Value, index: ir.Value, ptx_type: str, value: ir.Value) -> None:
        element = element_type(ptx_type)
        assert value.type == ir.VectorType(element, WARP), (ptx_type, value.type)
        if ptx_type == "pred":
            value = builder.zext(value, ir.VectorType(ir.IntType(8), WARP))
            element = ir.IntType(8)
        builder.store(value, self._slot(builder, argument, index, element), align=1)

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        assert len(inputs) == len(self.sources)
        count = len(inputs[0])
        padded = -(-count // WARP) * WARP
        held = []
        for value, ptx_type in zip(inputs, self.sources):
            array = np.zeros(padded, dtype=storage(ptx_type))
            value = np.asarray(value)
            if value.dtype.kind == "b" or value.dtype.itemsize != array.dtype.itemsize:
                value = value.astype(natural(ptx_type))
            array[:count] = value.view(storage(ptx_type))
            held.append(array)
        outputs = [np.zeros(padded, dtype=storage(t)) for t in self.destinations]
        pointers = [a.ctypes.data for a in outputs + held]
        self.function(*pointers, padded // WARP)
        return [out[:count].view(natural(t)) if t != "pred" else out[:count].astype(bool)
                for out, t in zip(outputs, self.destinations)]


_CACHE: dict[tuple, Compiled] = {}


def compile_instruction(ins: Instruction) -> Compiled:
    """The registered semantics of ``ins`` as a callable on arrays (cached per instruction)."""
    key = (ins.opcode, ins.modifiers, tuple(map(repr, ins.operands)))
    if key not in _CACHE:
        semantics = SEMANTICS[ins.opcode]
        signature = semantics.signature(ins)
        _CACHE[key] = Compiled(lambda lanes, values: semantics.emit(lanes, ins, values),
                               signature.sources, signature.destinations)
    return _CACHE[key]


def run(text: str, *inputs: np.ndarray, sources: int | None = None) -> np.ndarray | list[np.ndarray]:
    """Run ``text`` (an opcode with modifiers) over the inputs; one output comes back bare."""
    compiled = compile_instruction(instruction(text, sources))
    outputs = compiled(*inputs)
    return outputs[0] if len(outputs) == 1 else outputs
