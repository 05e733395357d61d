"""The typed form of a PTX module, as the parser leaves it and the lowering reads it.

Names are unique within a function: a register or variable declared in a nested ``{ }``
block is renamed by the parser (``name`` becomes ``name$N``) and every use inside that block
follows, so the lowering never deals with scopes.  ``%r<4>`` declarations are expanded into
their names (``%r0`` .. ``%r3``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True)
class Register:
    """A register operand: ``%r1``, ``%tid.x`` (special registers keep their component),
    or a vector register's element."""

    name: str


@dataclass(frozen=True)
class Immediate:
    """A literal: ``value`` is an int for integer literals, and for ``0f``/``0d``/float literals
    the float; ``bits`` keeps a hex float literal's exact bits (``0f3F800000`` -> 0x3F800000),
    None for decimal ones."""

    value: int | float
    bits: int | None = None


@dataclass(frozen=True)
class Symbol:
    """A variable, function or label name used as a value (``mov.u64 %rd1, gvar;``,
    ``bra $L__BB0_2;``, the callee of ``call``)."""

    name: str


@dataclass(frozen=True)
class Address:
    """A memory operand ``[base+offset]``: base is a register, a symbol, or None for an
    absolute address ``[1024]``."""

    base: Register | Symbol | None
    offset: int = 0


@dataclass(frozen=True)
class VectorOperand:
    """``{%r1, %r2, _, %r4}``: ``None`` stands for ``_`` (a sink)."""

    elements: tuple[Union[Register, Immediate, None], ...]


@dataclass(frozen=True)
class Negated:
    """``!%p1`` as an operand (logical-not of a predicate source)."""

    register: Register


@dataclass(frozen=True)
class PredicatePair:
    """``%p|%q``: setp's second destination."""

    first: Register
    second: Register | None


@dataclass(frozen=True)
class CallTargets:
    """A ``call``'s operands: ``call.uni (ret0), func, (arg0, arg1), prototype;`` ->
    returns=(ret0,), callee=func (a Symbol, or a Register for indirect calls),
    arguments=(arg0, arg1), prototype=the label of a ``.callprototype`` or None."""

    returns: tuple[Symbol, ...]
    callee: Union[Symbol, Register]
    arguments: tuple[Union[Symbol, Register, Immediate], ...]
    prototype: str | None = None


@dataclass(frozen=True)
class LabelList:
    """``brx.idx``'s target table: the labels of a ``.branchtargets`` declaration."""

    labels: tuple[str, ...]


@dataclass(frozen=True)
class BracketList:
    """A bracketed operand list: texture, surface and tensor-copy operands
    (``[tex, {%f1, %f2}]``, ``[%rd1, {%r1, %r2}]``)."""

    elements: tuple


Operand = Union[Register, Immediate, Symbol, Address, VectorOperand, Negated, PredicatePair,
                CallTargets, LabelList, BracketList]


def registers_in(operand: object) -> list[Register]:
    """The registers an operand names, in order: itself, a negated predicate, a pair, an
    address's base, a vector's or bracket list's elements, a call's callee and arguments."""
    if isinstance(operand, Register):
        return [operand]
    if isinstance(operand, Negated):
        return [operand.register]
    if isinstance(operand, PredicatePair):
        return [operand.first] + ([operand.second] if operand.second else [])
    if isinstance(operand, Address) and isinstance(operand.base, Register):
        return [operand.base]
    if isinstance(operand, (VectorOperand, BracketList)):
        return [r for e in operand.elements if e is not None for r in registers_in(e)]
    if isinstance(operand, CallTargets):
        return registers_in(operand.callee) + [r for a in operand.arguments for r in registers_in(a)]
    return []


@dataclass(frozen=True)
class Guard:
    """``@%p`` or ``@!%p`` before an instruction."""

    register: Register
    negated: bool = False


@dataclass
class Instruction:
    """``@%p add.rn.f32 %f1, %f2, 0f3F800000;`` -> opcode="add", modifiers=("rn", "f32")
    (in source order, without dots), operands=[Register, Register, Immediate]."""

    opcode: str
    modifiers: tuple[str, ...]
    operands: list[Operand]
    guard: Guard | None = None
    line: int = 0

    def has(self, modifier: str) -> bool:
        return modifier in self.modifiers


@dataclass
class Label:
    name: str
    line: int = 0


@dataclass
class RegisterDecl:
    """``.reg .v4 .f32 %f<8>;`` -> type="f32", vector=4, names=["%f0", ...]."""

    type: str
    names: list[str]
    vector: int = 1


@dataclass
class Variable:
    """A ``.global``/``.shared``/``.const``/``.local``/``.param`` variable, module-level or
    inside a function.

    ``dims``: array dimensions (None for an unsized ``[]``); ``initializer``: the flat list of
    element values (ints, floats, or Symbol for an address such as ``generic(gvar)+8``, kept
    as ``(Symbol, offset)`` tuples; one byte of an address, ``0xFF00(generic(gvar))``, as
    ``(Symbol, offset, mask)``), None when absent.
    """

    space: str
    name: str
    type: str
    dims: list[int | None] = field(default_factory=list)
    align: int | None = None
    vector: int = 1
    initializer: list | None = None
    linkage: str | None = None  # "visible", "extern", "weak", "common" or None
    #: ``.ptr`` attributes of a kernel parameter (``.ptr .global .align 16``)
    ptr_space: str | None = None
    ptr_align: int | None = None
    #: ``.attribute(.managed)`` and the like, without dots
    attributes: tuple[str, ...] = ()

    @property
    def element_size(self) -> int:
        return TYPE_SIZES[self.type] * self.vector

    @property
    def size(self) -> int:
        """Bytes the variable takes; an unsized array takes none (extern shared: dynamic)."""
        count = 1
        for dim in self.dims:
            if dim is None:
                return 0
            count *= dim
        return count * self.element_size


@dataclass
class Pragma:
    text: str


@dataclass
class BranchTargets:
    """``$L_table: .branchtargets $L1, $L2;``"""

    name: str
    labels: list[str]


@dataclass
class CallPrototype:
    """``proto: .callprototype (.param .b32 _) _ (.param .b64 _);``"""

    name: str
    returns: list[Variable]
    params: list[Variable]


Statement = Union[Instruction, Label, RegisterDecl, Variable, Pragma, BranchTargets, CallPrototype]


@dataclass
class Function:
    """An ``.entry`` (kernel) or ``.func``; ``body`` is None for a declaration."""

    name: str
    kind: str  # "entry" or "func"
    params: list[Variable] = field(default_factory=list)
    returns: list[Variable] = field(default_factory=list)
    body: list[Statement] | None = None
    linkage: str | None = None
    #: performance directives: {"maxntid": (256, 1, 1), "reqntid": (...), "minnctapersm": (2,),
    #: "maxnreg": (64,), "noreturn": (), "explicitcluster": (), ...}
    directives: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def is_kernel(self) -> bool:
        return self.kind == "entry"

    @property
    def defined(self) -> bool:
        """Whether the function has a body here (not a declaration); unlike reading ``body``,
        this does not parse a body the parser left for later."""
        return self.body is not None


@dataclass
class Module:
    version: tuple[int, int]
    target: list[str]  # ("sm_90", "texmode_independent", "debug", ...)
    address_size: int = 64
    variables: list[Variable] = field(default_factory=list)
    functions: list[Function] = field(default_factory=list)
    #: ``.alias name, target;``
    aliases: dict[str, str] = field(default_factory=dict)

    def function(self, name: str) -> Function:
        for function in self.functions:
            if function.name == name and function.defined:
                return function
        raise KeyError(name)


TYPE_SIZES = {"b8": 1, "u8": 1, "s8": 1, "b16": 2, "u16": 2, "s16": 2, "f16": 2, "bf16": 2,
              "b32": 4, "u32": 4, "s32": 4, "f32": 4, "f16x2": 4, "bf16x2": 4, "tf32": 4,
              "b64": 8, "u64": 8, "s64": 8, "f64": 8, "b128": 16, "pred": 1,
              "e4m3": 1, "e5m2": 1, "e4m3x2": 2, "e5m2x2": 2,
              "texref": 8, "samplerref": 8, "surfref": 8}
