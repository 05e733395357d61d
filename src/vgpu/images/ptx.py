"""PTX text: the driver compiles it for the device at load time.  The parameter layout
follows from each ``.entry``'s ``.param`` list (natural alignment unless ``.align`` says
otherwise); registers are not known before compilation and are estimated from how many
virtual registers are live at once (see ``estimated_registers``)."""

from __future__ import annotations

import re

from vgpu.images.model import Global, ImageError, Kernel, ModuleCode, Param

_TYPE_SIZES = {"b8": 1, "u8": 1, "s8": 1, "b16": 2, "u16": 2, "s16": 2, "f16": 2, "bf16": 2, "b32": 4, "u32": 4,
               "s32": 4, "f32": 4, "b64": 8, "u64": 8, "s64": 8, "f64": 8, "pred": 1, "f16x2": 4, "b128": 16}
_TARGET = re.compile(r"^\s*\.target\s+(?:sm|compute)_(\d+)", re.M)
_ENTRY = re.compile(r"\.entry\s+([\w$.]+)\s*\(([^)]*)\)([^{;]*)\{", re.S)
_PARAM = re.compile(r"\.param\s+(?:\.ptr\s*\.\w+\s*)?(?:\.align\s+(\d+)\s+)?\.(\w+)\s+(?:\.ptr\s+\.\w+\s+(?:\.align\s+\d+\s+)?)?"
                    r"[\w$]+(?:\[(\d+)\])?")
_DIMS = re.compile(r"\.(maxntid|reqntid)\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?")
_REG = re.compile(r"\.reg\s+\.(\w+)\s+%(\w+?)<(\d+)>")
_REGISTER = re.compile(r"%([A-Za-z_]+)(\d+)\b")
#: what ptxas allocates beyond the virtual registers live at once (measured against ptxas 13
#: for sm_90 over the compute corpus's 63 kernels: 4.8 registers off on average, never above 64
#: where ptxas stayed at or below 32)
_REGISTERS_BEYOND_LIVE = 6
_SHARED = re.compile(r"\.shared\s+(?:\.align\s+(\d+)\s+)?\.(\w+)\s+[\w$]+(?:\[(\d+)\])?\s*;")
_VARIABLE = re.compile(r"^\s*(\.visible\s+|\.extern\s+|\.weak\s+|\.common\s+)?\.(global|const)\s+(?:\.align\s+(\d+)\s+)?\.(\w+)\s+"
                       r"([\w$]+)(?:\[(\d*)\])?\s*(?:=\s*(\{[^}]*\}|[^;]+))?;", re.M)
#: a device function: defined when a body follows, else declared (.extern: defined elsewhere)
_FUNC = re.compile(r"^\s*(\.extern\s+|\.visible\s+|\.weak\s+)?\.func\s+(?:\([^)]*\)\s*)?([\w$]+)\s*"
                   r"(?:\([^)]*\))?[^;{]*([;{])", re.M)


def is_ptx(data: bytes) -> bool:
    head = data[:4096]
    return b".version" in head and (b".target" in head or b".entry" in head)


def _number(text: str) -> int:
    """A PTX integer literal (decimal, 0x hex, 0b binary, leading-0 octal, U suffix) or the
    bits of a 0f/0d float literal."""
    text = text.strip().rstrip("Uu")
    if text[:2].lower() in ("0f", "0d"):
        return int(text[2:], 16)
    if re.fullmatch(r"-?0[0-7]+", text):
        return int(text, 8)
    return int(text, 0)


def _initial(kind: str, count: int, value: str | None) -> bytes:
    if value is None:
        return b""
    element = _TYPE_SIZES.get(kind, 1)
    items = [v for v in value.strip().strip("{}").split(",") if v.strip()]
    out = bytearray()
    for item in items:
        try:
            number = _number(item)
        except ValueError:
            return b""  # an address (generic(...), a symbol): known only after loading
        out += (number & ((1 << (8 * element)) - 1)).to_bytes(element, "little")
    return bytes(out[:count * element]).ljust(count * element, b"\0")


def read_ptx(data: bytes) -> ModuleCode:
    text = data.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    target = _TARGET.search(text)
    if target is None:
        raise ImageError("PTX without a .target directive")
    code = ModuleCode("ptx", int(target.group(1)), source=data.split(b"\0", 1)[0])
    for match in _FUNC.finditer(text):
        linkage, name, end = match.groups()
        if end == "{":
            code.defines.add(name)
        elif (linkage or "").strip() == ".extern":
            code.needs.add(name)
    for match in _VARIABLE.finditer(text):
        linkage, space, _align, kind, name, count, value = match.groups()
        if (linkage or "").strip() == ".extern":
            code.needs.add(name)  # another module's variable (a link resolves it)
            continue
        element = _TYPE_SIZES.get(kind, 1)
        length = int(count) if count else 1
        code.globals[name] = Global(name, element * length, _initial(kind, length, value), constant=space == "const")
    for match in _ENTRY.finditer(text):
        name, params_text, directives = match.groups()
        kernel = Kernel(name, compiled=False)
        offset = 0
        for align, kind, count in _PARAM.findall(params_text):
            element = _TYPE_SIZES.get(kind, 8)
            size = element * (int(count) if count else 1)
            alignment = int(align) if align else element
            offset = (offset + alignment - 1) // alignment * alignment
            kernel.params.append(Param(offset, size))
            offset += size
        for which, x, y, z in _DIMS.findall(directives):
            dims = (int(x), int(y or 1), int(z or 1))
            kernel.max_threads = dims[0] * dims[1] * dims[2]
            if which == "reqntid":
                kernel.required_block = dims
        body = _body(text, match.end())
        kernel.registers = estimated_registers(body)
        for align, kind, count in _SHARED.findall(body):
            size = _TYPE_SIZES.get(kind, 1) * (int(count) if count else 1)
            alignment = int(align) if align else 1
            kernel.shared_bytes = (kernel.shared_bytes + alignment - 1) // alignment * alignment + size
        code.kernels[name] = kernel
    return code


def estimated_registers(body: str) -> int:
    """The registers ptxas would give a kernel: the most 32-bit virtual registers live at once,
    each from the line of its first mention to the line of its last (a linear scan; predicates
    live elsewhere, 64-bit ones take two), plus what ptxas adds; at most 255.  Summing the
    declarations instead counts every SSA value nvcc numbered: 3 to 8 times too many, which
    refused launches of 1,024 threads a GPU runs."""
    slots = {prefix: 0 if kind == "pred" else max(1, _TYPE_SIZES.get(kind, 4) // 4)
             for kind, prefix, _ in _REG.findall(body)}
    first: dict[tuple[str, str], int] = {}
    last: dict[tuple[str, str], int] = {}
    lines = [line for line in body.split("\n") if line.strip() and not line.lstrip().startswith(".reg")]
    for number, line in enumerate(lines):
        for prefix, index in _REGISTER.findall(line):
            if slots.get(prefix):
                first.setdefault((prefix, index), number)
                last[(prefix, index)] = number
    change = [0] * (len(lines) + 1)
    for register, start in first.items():
        change[start] += slots[register[0]]
        change[last[register] + 1] -= slots[register[0]]
    live = most = 0
    for step in change:
        live += step
        most = max(most, live)
    return min(255, most + _REGISTERS_BEYOND_LIVE)


def _body(text: str, start: int) -> str:
    """The text of a kernel's body, from just after its opening brace to the matching one."""
    depth, at = 1, start
    while depth and at < len(text):
        char = text[at]
        depth += char == "{"
        depth -= char == "}"
        at += 1
    return text[start:at]
