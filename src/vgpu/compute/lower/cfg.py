"""A function body as basic blocks, and which registers are live where.

Blocks end at labels and after instructions that leave straight-line code: branches, returns,
``exit``, ``trap`` and CTA barriers (a warp suspends there).  Block indices follow the text:
a warp's lanes always run the lowest-numbered block any of them waits for, which makes them
meet again where structured code rejoins (the end of an ``if``, the exit of a loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vgpu.compute.ptx.syntax import (Address, BranchTargets, Function, Instruction, Label, PredicatePair, Register,
                                     VectorOperand, registers_in)

#: opcodes whose first operand is never a destination register
NO_DESTINATION = frozenset({"st", "red", "bar", "barrier", "bra", "brx", "call", "ret", "exit", "trap",
                            "membar", "fence", "prefetch", "prefetchu", "cp", "nanosleep", "pmevent",
                            "griddepcontrol", "discard", "applypriority", "setmaxnreg", "brkpt",
                            "stmatrix", "cp.async", "multimem", "cvta.st"})


def is_barrier(ins: Instruction) -> bool:
    """A CTA-wide barrier (``bar.sync``, ``barrier.sync``, ``bar.red``...): a suspension point.
    ``bar.warp.sync`` is a warp's own affair and is not one."""
    if ins.opcode == "bar":
        return not ins.has("warp")
    return ins.opcode == "barrier" and not ins.has("cluster")


def ends_block(ins: Instruction) -> bool:
    return ins.opcode in ("bra", "brx", "ret", "exit", "trap") or is_barrier(ins)


@dataclass
class Block:
    index: int
    labels: list[str] = field(default_factory=list)
    instructions: list[Instruction] = field(default_factory=list)
    successors: list[int] = field(default_factory=list)

    @property
    def last(self) -> Instruction | None:
        return self.instructions[-1] if self.instructions else None


def split_blocks(function: Function) -> tuple[list[Block], dict[str, int]]:
    """The function's blocks, and each label's block index."""
    blocks = [Block(0)]
    for statement in function.body or []:
        if isinstance(statement, Label):
            if blocks[-1].instructions:
                blocks.append(Block(len(blocks)))
            blocks[-1].labels.append(statement.name)
        elif isinstance(statement, Instruction):
            if blocks[-1].last is not None and ends_block(blocks[-1].last):
                blocks.append(Block(len(blocks)))
            blocks[-1].instructions.append(statement)
    labels = {name: block.index for block in blocks for name in block.labels}
    targets = branch_tables(function)
    for block in blocks:
        last, after = block.last, block.index + 1
        falls = after < len(blocks)
        if last is None:
            block.successors = [after] if falls else []
        elif last.opcode == "bra":
            target = labels[last.operands[0].name]
            block.successors = [target] + ([after] if last.guard is not None and falls else [])
        elif last.opcode == "brx":
            table = last.operands[1].name
            block.successors = sorted({labels[name] for name in targets[table]})
        elif last.opcode in ("ret", "exit", "trap"):
            block.successors = [after] if last.guard is not None and falls else []
        else:
            block.successors = [after] if falls else []
    return blocks, labels


def branch_tables(function: Function) -> dict[str, list[str]]:
    return {s.name: list(s.labels) for s in function.body or [] if isinstance(s, BranchTargets)}


def destinations(ins: Instruction) -> list[Register | None]:
    """The registers an instruction writes (a vector destination gives one per element)."""
    if ins.opcode in NO_DESTINATION or not ins.operands:
        return []
    first = ins.operands[0]
    if isinstance(first, Register):
        return [first]
    if isinstance(first, PredicatePair):
        return [first.first, first.second]
    if isinstance(first, VectorOperand):
        return [e if isinstance(e, Register) else None for e in first.elements]
    return []


def sources(ins: Instruction) -> list[Register]:
    """The registers an instruction reads: its source operands, address bases, its guard."""
    found: list[Register] = []
    skip = 0 if ins.opcode in NO_DESTINATION else 1

    for position, operand in enumerate(ins.operands):
        if position >= skip or isinstance(operand, Address):
            found.extend(registers_in(operand))
    if ins.guard is not None:
        found.append(ins.guard.register)
    return found


def live_in(blocks: list[Block], index_of: dict[str, int]) -> list[int]:
    """Per block, the registers (bit ``index_of[name]``) it may read before writing them.
    A write counts as a definition even when lanes are masked: each lane follows one path,
    and on every path a dead register is written before it is read."""
    uses, defs = [], []
    for block in blocks:
        used = defined = 0
        for ins in block.instructions:
            for register in sources(ins):
                bit = index_of.get(register.name)
                if bit is not None and not defined >> bit & 1:
                    used |= 1 << bit
            if ins.guard is None:  # a guarded write leaves the old value in some lanes
                for register in destinations(ins):
                    bit = index_of.get(register.name) if register is not None else None
                    if bit is not None:
                        defined |= 1 << bit
        uses.append(used)
        defs.append(defined)
    live = [0] * len(blocks)
    changed = True
    while changed:
        changed = False
        for block in reversed(blocks):
            out = 0
            for successor in block.successors:
                out |= live[successor]
            new = uses[block.index] | (out & ~defs[block.index])
            if new != live[block.index]:
                live[block.index] = new
                changed = True
    return live
