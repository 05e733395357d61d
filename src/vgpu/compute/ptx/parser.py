"""PTX text to ``syntax.Module``.

The module level is split cheaply (directives, variables, function headers; each function's
body is found by brace matching); a function's body is parsed the first time something reads
``Function.body``, so loading a module of thousands of kernels to launch one of them parses
one body.  ``parse(text, lazy=False)`` parses every body at once (a syntax error anywhere is
raised then).

Comments (``//``, ``/* */``), ``.file``/``.loc`` line information and ``.section`` debug
blocks are skipped.  Registers, ``.param``/``.local``/``.shared`` variables and labels
declared inside a nested ``{ }`` block are renamed ``name$N`` (N counts the function's
blocks) together with every use inside that block, and the block's statements are flattened
into the function body.  A lone ``_`` operand (a sink) is ``Symbol("_")``; ``sym+8`` outside
brackets is ``Address(Symbol("sym"), 8)``.

Module-variable initialisers are flat lists: ints (the element's bits: a ``0f``/``0d``
literal whose width is the element's is kept as its exact bits), floats (decimal literals, or
a hex float of another width), and ``(Symbol, offset)`` for addresses (``generic(a)+8``).
A byte initialiser taking a slice of an address (``0xFF00(generic(a))``) is
``(Symbol, offset, mask)``: the element is ``(address + offset) & mask`` shifted down to the
mask's lowest set bit (the same slice of a constant is computed here).
"""

from __future__ import annotations

import re
import struct
import threading

from vgpu.compute.ptx.syntax import (Address, BracketList, BranchTargets, CallPrototype, CallTargets, Function,
                                     Guard, Immediate, Instruction, Label, Module, Negated, Operand, Pragma,
                                     PredicatePair, Register, RegisterDecl, Statement, Symbol, TYPE_SIZES,
                                     Variable, VectorOperand)


class PtxSyntaxError(ValueError):
    """Malformed PTX: the message names the line and what was expected there."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"PTX line {line}: {message}")
        self.line = line


# -- lexical pieces ------------------------------------------------------------------------
_COMMENT = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|/\*.*?\*/', re.S)
_NAME = re.compile(r"[A-Za-z_$%][\w$]*")
_IDENT = re.compile(r"[A-Za-z_$][\w$]*\Z")
_REG_RANGE = re.compile(r"(%?[A-Za-z_$][\w$]*)\s*<\s*(\d+)\s*>\Z")
_DECL_NAME = re.compile(r"(%?[A-Za-z_$][\w$]*)\s*((?:\[\s*\w*\s*\]\s*)*)\Z")
_REG_DECL = re.compile(r"\s*\.reg\s*(?:\.v([248])\s*)?\.(\w+)\s*(.*)\Z", re.S)
_DIM = re.compile(r"\[\s*(\w*)\s*\]")
#: an item of a function body: a ``.loc``/``.file`` line (no group), a label (1), a block's
#: braces (2, 3), or a statement up to ``;`` (4; braces inside it are vector operands)
_BODY_ITEM = re.compile(r"\s*(?:\.(?:loc|file)\b[^\n]*|([A-Za-z_$][\w$]*)[ \t]*:(?!:)|(\{)|(\})"
                        r"|([^;{}]*(?:\{[^{}]*\}[^;{}]*)*);)")
_BRACES = re.compile(r"[{}]")
_SPACE = re.compile(r"\s*")
_REGISTER = re.compile(r"%[\w$]+(?:\.[\w$]+)?\Z")
_OPERAND_ITEM = re.compile(r"\s*(\{[^{}]*\}|\[[^\]]*\]|\([^()]*\)|[^,\s{\[(][^,{\[(]*?)\s*(?:,|\Z)")
_FUNC_HEADER = re.compile(
    r"\s*((?:\.(?:visible|extern|weak|common)\s+)*)\.(entry|func)\s*"
    r"(?:\.attribute\s*\((?:[^()]|\([^()]*\))*\)\s*)?"
    r"(?:\(([^)]*)\)\s*)?([A-Za-z_$][\w$]*)\s*(?:\(([^)]*)\))?(.*)\Z", re.S)
_DIRECTIVE = re.compile(r"\.(\w+)\s*((?:\d+\s*,?\s*)*)")
_INIT_ADDRESS = re.compile(r"(?:generic\s*\(\s*([A-Za-z_$][\w$]*)\s*(?:([+-])\s*(\w+)\s*)?\)|([A-Za-z_$][\w$]*))"
                           r"\s*(?:([+-])\s*(\w+))?\s*\Z")
_INIT_MASKED = re.compile(r"\s*(0[xX][0-9a-fA-F]+|\d+)\s*\((.*)\)\s*\Z", re.S)
_INIT_SUM = re.compile(r"\s*([+-]?)\s*(\w+)")

_LINE_DIRECTIVES = (".version", ".target", ".address_size", ".file", ".loc", "@@DWARF")
_DIMENSIONS = frozenset({"maxntid", "reqntid", "reqnctapercluster"})
LINKAGES = frozenset({"visible", "extern", "weak", "common"})
SPACES = frozenset({"global", "shared", "const", "local", "param", "reg", "tex"})
PERFORMANCE = frozenset({"maxntid", "reqntid", "minnctapersm", "maxnctapersm", "maxnreg", "maxclusterrank",
                         "reqnctapercluster", "explicitcluster", "noreturn", "blocksareclusters"})
VARIABLE_TYPES = frozenset({"b8", "u8", "s8", "b16", "u16", "s16", "f16", "bf16", "b32", "u32", "s32", "f32",
                            "f16x2", "bf16x2", "tf32", "b64", "u64", "s64", "f64", "b128", "pred", "e4m3", "e5m2",
                            "e4m3x2", "e5m2x2", "texref", "samplerref", "surfref"})


def _integer(text: str, line: int) -> int:
    """A PTX integer literal: decimal, ``0x`` hex, ``0b`` binary, ``0`` octal, ``U`` suffix,
    a leading minus."""
    body = text
    if body[-1:] in "Uu":
        body = body[:-1]
    negative = body[:1] == "-"
    if negative:
        body = body[1:].lstrip()
    try:
        if body[:2] in ("0x", "0X"):
            value = int(body[2:], 16)
        elif body[:2] in ("0b", "0B"):
            value = int(body[2:], 2)
        elif len(body) > 1 and body[0] == "0":
            value = int(body[1:], 8)
        else:
            value = int(body, 10)
    except ValueError:
        raise PtxSyntaxError(line, f"expected a number, found {text!r}") from None
    return -value if negative else value


def _immediate(text: str, line: int) -> Immediate:
    if text[:1] == "-" and text[1:3] in ("0f", "0F", "0d", "0D"):
        positive = _immediate(text[1:], line)
        if positive.bits is None:
            raise PtxSyntaxError(line, f"expected a hex float literal, found {text!r}")
        sign = 1 << (31 if len(text) == 11 else 63)
        return Immediate(-positive.value, positive.bits ^ sign)
    head = text[:2]
    if head in ("0f", "0F") and len(text) == 10:
        bits = _hex(text[2:], text, line)
        return Immediate(struct.unpack("<f", struct.pack("<I", bits))[0], bits)
    if head in ("0d", "0D") and len(text) == 18:
        bits = _hex(text[2:], text, line)
        return Immediate(struct.unpack("<d", struct.pack("<Q", bits))[0], bits)
    if head not in ("0x", "0X") and ("." in text or "e" in text or "E" in text):
        try:
            return Immediate(float(text))
        except ValueError:
            raise PtxSyntaxError(line, f"expected a number, found {text!r}") from None
    return Immediate(_integer(text, line))


def _first_line(text: str) -> str:
    """The start of some text, for an error message."""
    lines = text.strip().splitlines()
    return lines[0] if lines else text.strip()


def _hex(digits: str, text: str, line: int) -> int:
    try:
        return int(digits, 16)
    except ValueError:
        raise PtxSyntaxError(line, f"expected a hex float literal, found {text!r}") from None


def _split_operands(text: str, line: int) -> list[str]:
    """Comma-separated operands; braces, brackets and parentheses group."""
    if "{" not in text and "(" not in text and "[" not in text:
        return [item.strip() for item in text.split(",")]
    items: list[str] = []
    at, end = 0, len(text)
    while at < end:
        match = _OPERAND_ITEM.match(text, at)
        if match is None:
            rest = text[at:].strip().lstrip(",").strip()
            closing = {"{": "}", "[": "]", "(": ")"}.get(rest[:1])
            if closing is not None:
                raise PtxSyntaxError(line, f"expected '{closing}' to close {rest!r}")
            raise PtxSyntaxError(line, f"expected ',' between operands, found {rest!r}")
        items.append(match.group(1))
        at = match.end()
    return items


class _FunctionParser:
    """Parses one function body; ``plain`` holds register names declared without ``%``
    (inline assembly's ``.reg .pred p;``) so that their uses are registers, not symbols."""

    def __init__(self, cache: dict[str, Operand]) -> None:
        self.cache = cache
        self.plain: set[str] = set()

    # -- operands -------------------------------------------------------------------------
    def operand(self, text: str, line: int) -> Operand:
        if self.plain and text[:1] not in "%0123456789-":  # a name may be a register here only
            return self._operand(text, line)
        found = self.cache.get(text)
        if found is None:
            found = self.cache[text] = self._operand(text, line)
        return found

    def _operand(self, text: str, line: int) -> Operand:
        if not text:
            raise PtxSyntaxError(line, "expected an operand, found nothing")
        first = text[0]
        if first == "%":
            if "|" in text:
                a, _, b = text.partition("|")
                b = b.strip()
                return PredicatePair(self._register(a.strip(), line), None if b == "_" else self._register(b, line))
            return self._register(text, line)
        if first == "[":
            return self._address(text, line)
        if first == "{":
            if not text.endswith("}"):
                raise PtxSyntaxError(line, f"expected '}}' to close {text!r}")
            inner = text[1:-1].strip()
            items = [] if not inner else [i.strip() for i in inner.split(",")]
            return VectorOperand(tuple(None if i == "_" else self.operand(i, line) for i in items))
        if first == "!":
            register = self.operand(text[1:].strip(), line)
            if not isinstance(register, Register):
                raise PtxSyntaxError(line, f"expected a predicate register after '!', found {text!r}")
            return Negated(register)
        if first.isdigit() or first in "-+.":
            if first == "+":
                text = text[1:]
            return _immediate(text, line)
        if "|" in text:
            a, _, b = text.partition("|")
            b = b.strip()
            return PredicatePair(self._register(a.strip(), line), None if b == "_" else self._register(b, line))
        if "+" in text or "-" in text:  # sym+8 outside brackets
            return self._address("[" + text + "]", line)
        if _IDENT.match(text) is None:
            raise PtxSyntaxError(line, f"expected an operand, found {text!r}")
        if text in self.plain or text == "WARP_SZ":
            return Register(text)
        return Symbol(text)

    def _register(self, text: str, line: int) -> Register:
        if text in self.plain or _REGISTER.match(text):
            return Register(text)
        raise PtxSyntaxError(line, f"expected a register, found {text!r}")

    def _address(self, text: str, line: int) -> Operand:
        if not text.endswith("]"):
            raise PtxSyntaxError(line, f"expected ']' to close {text!r}")
        inner = text[1:-1].strip()
        if "," in inner:  # texture, surface and tensor operands: [tex, {%f1, %f2}]
            return BracketList(tuple(self.operand(i, line) for i in _split_operands(inner, line)))
        offset = 0
        base_text = inner
        for at in range(len(inner) - 1, 0, -1):
            char = inner[at]
            if char == "+" or (char == "-" and inner[at - 1] != "+"):
                number = inner[at + 1:].strip() if char == "+" else inner[at:].replace(" ", "")
                base_text = inner[:at].rstrip()
                offset = _integer(number, line)
                break
        if not base_text:
            raise PtxSyntaxError(line, f"expected an address, found {text!r}")
        first = base_text[0]
        if first.isdigit() or first == "-":
            return Address(None, _integer(base_text, line) + offset)
        base = self.operand(base_text, line)
        if not isinstance(base, (Register, Symbol)):
            raise PtxSyntaxError(line, f"expected a register or a name as an address, found {text!r}")
        return Address(base, offset)

    # -- statements -----------------------------------------------------------------------
    def instruction(self, text: str, line: int) -> Instruction:
        guard = None
        if text[0] == "@":
            parts = text[1:].split(None, 1)
            if len(parts) < 2:
                raise PtxSyntaxError(line, f"expected an instruction after the guard {text!r}")
            predicate, text = parts
            negated = predicate[0] == "!"
            register = self.operand(predicate[1:] if negated else predicate, line)
            if not isinstance(register, Register):
                raise PtxSyntaxError(line, f"expected a predicate register as a guard, found {predicate!r}")
            guard = Guard(register, negated)
        parts = text.split(None, 1)
        head = parts[0]
        if "(" in head:  # call(r), f; with no space
            head, _, rest = head.partition("(")
            parts = [head, "(" + rest + (" " + parts[1] if len(parts) > 1 else "")]
        pieces = head.split(".")
        opcode = pieces[0]
        if not opcode or not (opcode[0].isalpha() or opcode[0] == "_"):
            raise PtxSyntaxError(line, f"expected an instruction, found {_first_line(text)!r}")
        if len(parts) == 1:
            operands: list[Operand] = []
        elif opcode == "call":
            operands = [self._call(parts[1], line)]
        else:
            items = _split_operands(parts[1], line)
            operands = [self.operand(item, line) for item in items]
        return Instruction(opcode, tuple(pieces[1:]), operands, guard, line)

    def _call(self, text: str, line: int) -> CallTargets:
        items = _split_operands(text, line)
        returns: tuple = ()
        if items and items[0].startswith("("):
            returns = self._name_list(items.pop(0), line)
        if not items:
            raise PtxSyntaxError(line, "expected the called function after call")
        callee = self.operand(items.pop(0), line)
        if not isinstance(callee, (Symbol, Register)):
            raise PtxSyntaxError(line, f"expected a function or a register to call, found {callee!r}")
        arguments: tuple = ()
        if items and items[0].startswith("("):
            arguments = self._name_list(items.pop(0), line)
        prototype = None
        if items:
            prototype = items.pop(0)
            if _IDENT.match(prototype) is None:
                raise PtxSyntaxError(line, f"expected a call prototype's name, found {prototype!r}")
        if items:
            raise PtxSyntaxError(line, f"expected ';' after the call, found {items[0]!r}")
        return CallTargets(returns, callee, arguments, prototype)

    def _name_list(self, text: str, line: int) -> tuple:
        if not text.endswith(")"):
            raise PtxSyntaxError(line, f"expected ')' to close {text!r}")
        inner = text[1:-1].strip()
        return tuple(self.operand(i.strip(), line) for i in inner.split(",")) if inner else ()


def _directive_values(word: str, text: str, line: int) -> tuple[int, ...]:
    """A performance directive's numbers; the dimensions of ``.maxntid``, ``.reqntid`` and
    ``.reqnctapercluster`` always come as three (``.maxntid 256`` is ``(256, 1, 1)``)."""
    text = text.strip()
    values = tuple(_integer(v.strip(), line) for v in text.split(",")) if text else ()
    if word in _DIMENSIONS:
        if not 1 <= len(values) <= 3:
            raise PtxSyntaxError(line, f"expected one to three numbers after .{word}")
        values += (1,) * (3 - len(values))
    return values


def _variable(text: str, line: int) -> Variable:
    """A variable declaration: ``[linkage] .space [.attribute(..)] [.align N] [.vN] .type
    [.ptr [.space] [.align N]] name[dims] [= initialiser]``."""
    init_text = None
    if "=" in text:
        text, _, init_text = text.partition("=")
    tokens = text.replace(".", " .").replace("(", " ( ").replace(")", " ) ").split()
    space = type_ = linkage = ptr_space = None
    align = ptr_align = None
    vector = 1
    attributes: list[str] = []
    pointer = False
    at = 0
    while at < len(tokens) and tokens[at][0] == ".":
        word = tokens[at][1:]
        at += 1
        if word == "align":
            if at >= len(tokens):
                raise PtxSyntaxError(line, "expected a number after .align")
            value = _integer(tokens[at], line)
            at += 1
            if pointer:
                ptr_align = value
            else:
                align = value
        elif word == "ptr":
            pointer = True
        elif word == "attribute":
            depth, start = 0, at
            while at < len(tokens):
                depth += tokens[at] == "("
                depth -= tokens[at] == ")"
                at += 1
                if depth == 0:
                    break
            attributes.append(" ".join(tokens[start:at]).replace("( ", "(").replace(" )", ")").strip("() ")
                              .lstrip("."))
        elif word in LINKAGES:
            linkage = word
        elif word in SPACES and not pointer:
            space = word
        elif pointer and word in ("global", "shared", "const", "local"):
            ptr_space = word
        elif word in ("v2", "v4", "v8"):
            vector = int(word[1:])
        elif word in VARIABLE_TYPES:
            type_ = word
        else:
            raise PtxSyntaxError(line, f"expected a state space, type or attribute, found .{word}")
    if space is None or type_ is None:
        raise PtxSyntaxError(line, f"expected a state space and a type in {text.strip()!r}")
    rest = " ".join(tokens[at:])
    match = _DECL_NAME.match(rest)
    if match is None:
        raise PtxSyntaxError(line, f"expected a variable name, found {rest!r}")
    name, dims_text = match.groups()
    dims: list[int | None] = [(_integer(d, line) if d else None) for d in _DIM.findall(dims_text)]
    variable = Variable(space, name, type_, dims, align, vector, None, linkage, ptr_space, ptr_align)
    if attributes:
        variable.attributes = tuple(attributes)
    if init_text is not None:
        variable.initializer = _initializer(init_text, variable, line)
        if dims and dims[0] is None:
            inner = 1
            for dim in dims[1:]:
                inner *= dim or 1
            dims[0] = -(-len(variable.initializer) // (inner * vector))
    return variable


def _initializer(text: str, variable: Variable, line: int) -> list:
    flat = text.replace("{", " ").replace("}", " ").strip()
    if not flat:
        return []
    items = flat.split(",")
    out: list = []
    size = TYPE_SIZES.get(variable.type, 0)  # of one scalar element
    append = out.append
    for item in items:
        try:
            number = int(item)
        except ValueError:
            pass
        else:
            if not number or item.lstrip(" \t\r\n-+")[0] != "0":  # a leading 0 means octal
                append(number)
                continue
        item = item.strip()
        if not item:
            raise PtxSyntaxError(line, "expected an initialiser value between commas")
        first = item[0]
        if (first.isdigit() or first in "-+.") and "(" not in item:
            value = _immediate(item.lstrip("+"), line)
            if value.bits is not None and (4 if item.lstrip("+-")[1] in "fF" else 8) == size:
                append(value.bits)
            else:
                append(value.value)
            continue
        masked = _INIT_MASKED.match(item)
        if masked is None:
            append(_init_address(item, line))
            continue
        mask = _integer(masked.group(1), line)
        shift = (mask & -mask).bit_length() - 1 if mask else 0
        inner = masked.group(2)
        if _INIT_ADDRESS.match(inner.strip()):
            append(_init_address(inner.strip(), line) + (mask,))
        else:
            append((_init_sum(inner, line) & mask) >> shift)
    return out


def _init_address(text: str, line: int) -> tuple[Symbol, int]:
    """``generic(a)+8``, ``generic(a+8)``, ``a-4``: (Symbol, byte offset)."""
    match = _INIT_ADDRESS.match(text)
    if match is None:
        raise PtxSyntaxError(line, f"expected a number or an address in the initialiser, found {text!r}")
    generic, inner_sign, inner_offset, name, sign, offset = match.groups()
    total = 0
    for sign_text, number in ((inner_sign, inner_offset), (sign, offset)):
        if number is not None:
            total += -_integer(number, line) if sign_text == "-" else _integer(number, line)
    return Symbol(generic or name), total


def _init_sum(text: str, line: int) -> int:
    """An integer constant expression of sums and differences: ``1000 + 546``."""
    total, at, text = 0, 0, text.strip()
    while at < len(text):
        match = _INIT_SUM.match(text, at)
        if match is None or (at and not match.group(1)):
            raise PtxSyntaxError(line, f"expected a constant expression, found {text!r}")
        value = _integer(match.group(2), line)
        total += -value if match.group(1) == "-" else value
        at = match.end()
    return total


def _register_decl(text: str, line: int) -> RegisterDecl:
    """``.reg [.vN] .type %r<4>, %x;``"""
    match = _REG_DECL.match(text)
    if match is None or match.group(2) not in VARIABLE_TYPES:
        raise PtxSyntaxError(line, f"expected .reg .type names, found {' '.join(text.split())!r}")
    vector, type_, names_text = match.groups()
    names: list[str] = []
    for item in names_text.split(","):
        item = item.strip()
        found = _REG_RANGE.match(item)
        if found is not None:
            prefix = found.group(1)
            names.extend(f"{prefix}{i}" for i in range(int(found.group(2))))
        elif _NAME.fullmatch(item):
            names.append(item)
        else:
            raise PtxSyntaxError(line, f"expected a register name, found {item!r}")
    return RegisterDecl(type_, names, int(vector) if vector else 1)


def _params(text: str | None, line: int) -> list[Variable]:
    if text is None or not text.strip():
        return []
    return [_variable(item, line) for item in text.split(",")]


def _label_list(text: str, line: int) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    for name in names:
        if _IDENT.match(name) is None:
            raise PtxSyntaxError(line, f"expected a label, found {name!r}")
    return names


def _prototype_params(text: str, line: int) -> tuple[list[Variable], list[Variable]]:
    """``(.param .b32 _) _ (.param .b64 _, .param .b32 _)``: return and parameter lists."""
    text = text.strip()
    returns: list[Variable] = []
    if text.startswith("("):
        close = text.find(")")
        if close < 0:
            raise PtxSyntaxError(line, f"expected ')' in the call prototype, found {text!r}")
        returns = _params(text[1:close], line)
        text = text[close + 1:].strip()
    if not text.startswith("_"):
        raise PtxSyntaxError(line, f"expected '_' in the call prototype, found {text!r}")
    text = text[1:].strip()
    params: list[Variable] = []
    if text.startswith("("):
        if not text.endswith(")"):
            raise PtxSyntaxError(line, f"expected ')' to end the call prototype, found {text!r}")
        params = _params(text[1:-1], line)
    elif text:
        raise PtxSyntaxError(line, f"expected the call prototype's parameters, found {text!r}")
    return returns, params


class _Body:
    """A function's body text, parsed on first access (once, whichever thread reads first)."""

    __slots__ = ("text", "line", "cache", "lock")

    def __init__(self, text: str, line: int, cache: dict[str, Operand]) -> None:
        self.text, self.line, self.cache = text, line, cache
        self.lock = threading.Lock()

    def __getstate__(self) -> tuple[str, int, dict[str, Operand]]:
        return self.text, self.line, self.cache

    def __setstate__(self, state: tuple[str, int, dict[str, Operand]]) -> None:
        self.__init__(*state)


class LazyFunction(Function):
    """A Function whose body is parsed the first time it is read.  A syntax error in it is
    raised on every read."""

    @property  # type: ignore[override]
    def body(self) -> list[Statement] | None:
        pending = self.__dict__.get("_pending")
        if pending is not None:
            with pending.lock:
                if "_pending" in self.__dict__:
                    self.__dict__["_body"] = _parse_body(self, pending)
                    del self.__dict__["_pending"]
        return self.__dict__.get("_body")

    @body.setter
    def body(self, value: list[Statement] | None) -> None:
        if isinstance(value, _Body):
            self.__dict__["_pending"] = value
            self.__dict__["_body"] = None
        else:
            self.__dict__.pop("_pending", None)
            self.__dict__["_body"] = value

    @property
    def defined(self) -> bool:
        return "_pending" in self.__dict__ or self.__dict__.get("_body") is not None


def _parse_body(function: Function, pending: _Body) -> list[Statement]:
    text, line = pending.text, pending.line
    items: list[tuple[int, str, int]] = []  # (kind, text, line): 0 label, 1 open, 2 close, 3 statement
    position, end = 0, len(text)
    match_at, count, append = _BODY_ITEM.match, text.count, items.append
    while True:
        match = match_at(text, position)
        if match is None:
            space = _SPACE.match(text, position).end()
            if space < end:
                line += count("\n", position, space)
                raise PtxSyntaxError(line, f"expected ';' after {_first_line(text[space:])!r}")
            break
        kind = match.lastindex
        if kind is not None:
            start = match.start(kind)
            line += count("\n", position, start)
            append((kind - 1, match.group(kind), line))
            line += count("\n", start, match.end())
        else:  # .loc / .file
            line += count("\n", position, match.end())
        position = match.end()
    return _Statements(function, pending.cache).run(items)


class _Statements:
    """Turns a body's items into statements, renaming what nested blocks declare."""

    def __init__(self, function: Function, cache: dict[str, Operand]) -> None:
        self.function = function
        self.parser = _FunctionParser(cache)
        self.out: list[Statement] = []
        self.blocks = 0
        self.label: Label | None = None  # the label just before, which may name a table
        self.used = {p.name for p in function.params} | {p.name for p in function.returns}

    def run(self, items: list[tuple[int, str, int]]) -> list[Statement]:
        if any(kind == 1 for kind, _, _ in items):
            self._scoped(items, 0, len(items), {})
        else:
            for kind, text, line in items:
                self._item(kind, text, line, None)
        return self.out

    @staticmethod
    def _declared(kind: int, text: str, line: int) -> list[str]:
        """Names an item of a block declares (a label, a register or a variable)."""
        if kind == 0:
            return [text]
        word = text.lstrip()[:7]
        if word.startswith(".reg"):
            return _register_decl(text, line).names
        if word.startswith((".param", ".local", ".shared")):
            return [_variable(text, line).name]
        return []

    def _scoped(self, items: list, start: int, stop: int, renames: dict[str, str]) -> None:
        at = start
        while at < stop:
            kind, text, line = items[at]
            if kind == 2:
                raise PtxSyntaxError(line, "found '}' without a matching '{'")
            if kind != 1:
                self._item(kind, text, line, renames or None)
                at += 1
                continue
            self.blocks += 1
            suffix = f"${self.blocks}"
            inner = dict(renames)
            depth, close = 1, at + 1
            while close < stop:
                k, t, ln = items[close]
                if k == 1:
                    depth += 1
                elif k == 2:
                    depth -= 1
                    if depth == 0:
                        break
                elif depth == 1:
                    for name in self._declared(k, t, ln):
                        new = name + suffix
                        while new in self.used:
                            new += "_"
                        self.used.add(new)
                        inner[name] = new
                close += 1
            if close >= stop:
                raise PtxSyntaxError(line, "expected '}' to close this block")
            self.label = None
            self._scoped(items, at + 1, close, inner)
            self.label = None
            at = close + 1

    def _item(self, kind: int, text: str, line: int, renames: dict[str, str] | None) -> None:
        if kind == 0:
            self.label = Label(renames.get(text, text) if renames else text, line)
            self.out.append(self.label)
            return
        text = text.strip()
        if not text:  # an empty statement
            return
        if text[:1] != ".":
            ins = self.parser.instruction(text, line)
            self.out.append(_rename_instruction(ins, renames) if renames else ins)
        else:
            statement = self._directive(text, line, renames, self.label)
            if self.label is not None and isinstance(statement, (BranchTargets, CallPrototype)):
                self.out.pop()  # the label names the table, not a place in the code
            if statement is not None:
                self.out.append(statement)
        self.label = None

    def _directive(self, text: str, line: int, renames: dict[str, str] | None,
                   label: Label | None) -> Statement | None:
        word = _NAME.match(text, 1)
        word = word.group(0) if word else ""
        if word == "reg":
            decl = _register_decl(text, line)
            for name in decl.names:
                if not name.startswith("%"):
                    self.parser.plain.add(name)
            if renames:
                decl.names = [renames.get(n, n) for n in decl.names]
            for name in decl.names:
                self.used.add(name)
            return decl
        if word in ("param", "local", "shared", "global", "const") or word in LINKAGES:
            variable = _variable(text, line)
            if renames:
                variable.name = renames.get(variable.name, variable.name)
            self.used.add(variable.name)
            return variable
        if word in ("loc", "file"):
            return None
        if word == "pragma":
            return Pragma(_pragma_text(text[7:], line))
        if word in ("branchtargets", "calltargets"):
            if label is None:
                raise PtxSyntaxError(line, f"expected a label before .{word}")
            labels = _label_list(text[len(word) + 1:], line)
            if renames:
                labels = [renames.get(n, n) for n in labels]
            return BranchTargets(label.name, labels)
        if word == "callprototype":
            if label is None:
                raise PtxSyntaxError(line, "expected a label before .callprototype")
            returns, params = _prototype_params(text[len(word) + 1:], line)
            return CallPrototype(label.name, returns, params)
        if word in PERFORMANCE:
            self.function.directives[word] = _directive_values(word, text[len(word) + 1:], line)
            return None
        raise PtxSyntaxError(line, f"expected an instruction or a declaration, found .{word}")


def _pragma_text(text: str, line: int) -> str:
    strings = re.findall(r'"((?:[^"\\]|\\.)*)"', text)
    if not strings:
        raise PtxSyntaxError(line, f"expected a quoted pragma, found {text.strip()!r}")
    return ", ".join(strings)


def _rename(operand: Operand, names: dict[str, str]) -> Operand:
    kind = type(operand)
    if kind is Register:
        name = operand.name
        if name in names:
            return Register(names[name])
        base, dot, part = name.partition(".")
        if dot and base in names:
            return Register(f"{names[base]}.{part}")
        return operand
    if kind is Symbol:
        return Symbol(names[operand.name]) if operand.name in names else operand
    if kind is Address:
        base = operand.base
        return operand if base is None else Address(_rename(base, names), operand.offset)
    if kind is VectorOperand:
        return VectorOperand(tuple(None if e is None else _rename(e, names) for e in operand.elements))
    if kind is Negated:
        return Negated(_rename(operand.register, names))
    if kind is PredicatePair:
        second = operand.second
        return PredicatePair(_rename(operand.first, names), None if second is None else _rename(second, names))
    if kind is CallTargets:
        prototype = operand.prototype
        return CallTargets(tuple(_rename(r, names) for r in operand.returns), _rename(operand.callee, names),
                           tuple(_rename(a, names) for a in operand.arguments),
                           names.get(prototype, prototype) if prototype else None)
    if kind is BracketList:
        return BracketList(tuple(_rename(e, names) for e in operand.elements))
    return operand


def _rename_instruction(ins: Instruction, names: dict[str, str]) -> Instruction:
    ins.operands = [_rename(op, names) for op in ins.operands]
    if ins.guard is not None:
        ins.guard = Guard(_rename(ins.guard.register, names), ins.guard.negated)
    return ins


def _strip_comments(text: str) -> str:
    if "/" not in text:
        return text

    def keep(match: re.Match) -> str:
        found = match.group(0)
        if found[0] == '"':
            return found
        return "\n" * found.count("\n")

    return _COMMENT.sub(keep, text)


def _closing_brace(text: str, start: int, line: int) -> int:
    """Index just past the ``}`` matching the ``{`` at ``start``."""
    depth = 0
    for match in _BRACES.finditer(text, start):
        depth += 1 if match.group(0) == "{" else -1
        if depth == 0:
            return match.end()
    raise PtxSyntaxError(line, "expected '}' before the end of the text")


def parse(text: str, lazy: bool = True) -> Module:
    """The module ``text`` holds; bodies are parsed on first access unless ``lazy`` is False."""
    text = _strip_comments(text)
    module = Module((0, 0), [])
    cache: dict[str, Operand] = {}
    position, line, end = 0, 1, len(text)
    seen_version = False
    while True:
        space = _SPACE.match(text, position).end()
        line += text.count("\n", position, space)
        position = space
        if position >= end:
            break
        if text.startswith(_LINE_DIRECTIVES, position):  # these end at the end of their line
            stop = text.find("\n", position)
            stop = end if stop < 0 else stop
            _module_statement(module, text[position:stop].rstrip().rstrip(";"), line, seen_version)
            seen_version = seen_version or text.startswith(".version", position)
            position = stop
            continue
        if text[position] == "}":
            raise PtxSyntaxError(line, "found '}' without a matching '{'")
        semicolon = text.find(";", position)
        brace = text.find("{", position)
        stop = semicolon if brace < 0 or (0 <= semicolon < brace) else brace
        if stop < 0:
            raise PtxSyntaxError(line, f"expected ';' after {_first_line(text[position:])!r}")
        head = text[position:stop]
        start_line = line
        if text[stop] == ";":
            _module_statement(module, head, start_line, seen_version)
            seen_version = seen_version or head.startswith(".version")
            line += head.count("\n")
            position = stop + 1
            continue
        # a brace: a debug section, a function body or an initialiser
        if head.startswith(".section"):
            close = _closing_brace(text, stop, line)
            line += text.count("\n", position, close)
            position = close
            continue
        if "=" in head:
            close = _closing_brace(text, stop, line)
            after = text.find(";", close)
            if after < 0 or text[close:after].strip():
                raise PtxSyntaxError(line, "expected ';' after the initialiser")
            statement = text[position:after]
            _module_statement(module, statement, start_line, seen_version)
            line += statement.count("\n")
            position = after + 1
            continue
        header = _FUNC_HEADER.match(head)
        line += text.count("\n", position, stop)
        if header is None:
            raise PtxSyntaxError(start_line, f"expected a directive, a variable or a function, found "
                                             f"{_first_line(head)!r}")
        close = _closing_brace(text, stop, line)
        function = _function(header, start_line)
        function.body = _Body(text[stop + 1:close - 1], line, cache)
        module.functions.append(function)
        line += text.count("\n", stop, close)
        position = close
    if not seen_version:
        raise PtxSyntaxError(1, "expected .version before anything else")
    if not lazy:
        for function in module.functions:
            function.body
    return module


def _function(header: re.Match, line: int) -> LazyFunction:
    linkage_text, kind, returns_text, name, params_text, rest = header.groups()
    linkages = linkage_text.split()
    function = LazyFunction(name, kind, _params(params_text, line), _params(returns_text, line), None,
                            linkages[-1][1:] if linkages else None, {})
    rest = rest.strip()
    while rest:
        directive = _DIRECTIVE.match(rest)
        if directive is None:
            raise PtxSyntaxError(line, f"expected a performance directive or a body, found {_first_line(rest)!r}")
        word, values = directive.groups()
        if word == "pragma":
            break
        if word not in PERFORMANCE:
            raise PtxSyntaxError(line, f"expected a performance directive, found .{word}")
        function.directives[word] = _directive_values(word, values, line)
        rest = rest[directive.end():].strip()
    return function


def _module_statement(module: Module, text: str, line: int, seen_version: bool) -> None:
    text = text.strip()
    word = text.split(None, 1)[0] if text else ""
    if word == ".version":
        parts = text.split()
        try:
            major, minor = parts[1].split(".")
            module.version = (int(major), int(minor))
        except (IndexError, ValueError):
            raise PtxSyntaxError(line, f"expected .version MAJOR.MINOR, found {text!r}") from None
        return
    if not seen_version:
        raise PtxSyntaxError(line, f"expected .version before {word or 'this'}")
    if word == ".target":
        module.target = [t.strip() for t in text[7:].split(",") if t.strip()]
        if not module.target:
            raise PtxSyntaxError(line, "expected an architecture after .target")
        return
    if word == ".address_size":
        module.address_size = _integer(text.split()[1], line) if len(text.split()) > 1 else 0
        if module.address_size not in (32, 64):
            raise PtxSyntaxError(line, f"expected .address_size 32 or 64, found {text!r}")
        return
    if word in (".file", ".loc", ".pragma", "@@DWARF"):
        return
    if word == ".alias":
        names = [n.strip() for n in text[6:].split(",")]
        if len(names) != 2:
            raise PtxSyntaxError(line, f"expected .alias NAME, TARGET, found {text!r}")
        module.aliases[names[0]] = names[1]
        return
    header = _FUNC_HEADER.match(text)
    if header is not None:  # a declaration: .extern .func vprintf(...);
        module.functions.append(_function(header, line))
        return
    if word[1:] in LINKAGES or word[1:] in SPACES:
        module.variables.append(_variable(text, line))
        return
    raise PtxSyntaxError(line, f"expected a directive, a variable or a function, found {word or text!r}")
