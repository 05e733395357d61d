"""Extract an API manifest (functions, types, enums, constants) from an NVIDIA header.

The manifest is the single source of truth for the native stubs, the wire
encodings and the Python dispatch.  It is committed (``nvml.json``) so a build
does not need a parser, and ``python -m vgpu.api.extract`` regenerates it from
the header shipped in the ``nvidia-nvml-dev`` wheel.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from pycparser import CParser, c_ast

TypeRef = dict[str, Any]

_DEFINE = re.compile(r"^\s*#\s*define\s+([A-Za-z_]\w*)\s+(.+?)\s*(?://.*|/\*.*)?$")
_INT_LITERAL = re.compile(r"^\(?\s*(-?(?:0x[0-9a-fA-F]+|\d+))\s*(?:[uUlL]{0,3})\s*\)?$")


def preprocess(header: Path, defines: list[str]) -> str:
    """Run the C preprocessor so pycparser sees plain declarations."""
    args = ["cc", "-E", "-P", "-D__attribute__(x)="] + [f"-D{d}" for d in defines] + [str(header)]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


class _Evaluator:
    """Evaluates the constant expressions found in enums."""

    def __init__(self) -> None:
        self.known: dict[str, int] = {}

    def __call__(self, node: c_ast.Node) -> int:
        if isinstance(node, c_ast.Constant):
            text = node.value.rstrip("uUlL")
            if text.startswith("'"):
                return ord(text[1:-1])
            return int(text, 0)
        if isinstance(node, c_ast.ID):
            return self.known[node.name]
        if isinstance(node, c_ast.UnaryOp):
            value = self(node.expr)
            return {"-": -value, "~": ~value, "+": value}[node.op]
        if isinstance(node, c_ast.BinaryOp):
            left, right = self(node.left), self(node.right)
            ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "<<": int.__lshift__,
                   ">>": int.__rshift__, "|": int.__or__, "&": int.__and__, "/": int.__floordiv__}
            return ops[node.op](left, right)
        if isinstance(node, c_ast.Cast):
            return self(node.expr)
        raise ValueError(f"cannot evaluate {type(node).__name__} in an enum")


class _Extractor:
    def __init__(self) -> None:
        self.typedefs: dict[str, TypeRef] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.enums: dict[str, dict[str, int]] = {}
        self.functions: dict[str, dict[str, Any]] = {}
        self.evaluate = _Evaluator()
        self._anonymous = 0

    def type_ref(self, node: c_ast.Node, hint: str) -> TypeRef:
        if isinstance(node, c_ast.TypeDecl):
            const = "const" in (node.quals or [])
            inner = self.type_ref(node.type, hint)
            return {**inner, "const": True} if const else inner
        if isinstance(node, c_ast.PtrDecl):
            return {"kind": "ptr", "to": self.type_ref(node.type, hint)}
        if isinstance(node, c_ast.ArrayDecl):
            length = self.evaluate(node.dim) if node.dim is not None else 0
            return {"kind": "array", "of": self.type_ref(node.type, hint), "len": length}
        if isinstance(node, c_ast.IdentifierType):
            return {"kind": "name", "name": " ".join(node.names)}
        if isinstance(node, (c_ast.Struct, c_ast.Union)):
            return {"kind": "record", "name": self.record(node, hint)}
        if isinstance(node, c_ast.Enum):
            self.enum(node, hint)
            return {"kind": "name", "name": "int"}
        if isinstance(node, c_ast.FuncDecl):
            return {"kind": "func"}
        raise ValueError(f"unexpected type node {type(node).__name__}")

    def record(self, node: c_ast.Struct | c_ast.Union, hint: str) -> str:
        name = node.name
        if name is None:
            self._anonymous += 1
            name = f"{hint}__anon{self._anonymous}"
        if node.decls is not None:
            fields = [{"name": d.name, "type": self.type_ref(d.type, f"{name}_{d.name}")} for d in node.decls]
            self.records[name] = {"union": isinstance(node, c_ast.Union), "fields": fields}
        return name

    def enum(self, node: c_ast.Enum, hint: str) -> None:
        if node.values is None:
            return
        values: dict[str, int] = {}
        current = -1
        for item in node.values.enumerators:
            current = self.evaluate(item.value) if item.value is not None else current + 1
            self.evaluate.known[item.name] = current
            values[item.name] = current
        self.enums[node.name or hint] = values

    def visit(self, decl: c_ast.Node) -> None:
        if isinstance(decl, c_ast.Typedef):
            self.typedefs[decl.name] = self.type_ref(decl.type, decl.name)
        elif isinstance(decl, c_ast.Decl) and isinstance(decl.type, c_ast.FuncDecl):
            func = decl.type
            params = []
            for index, param in enumerate(func.args.params if func.args else []):
                if isinstance(param, c_ast.Typename):  # "(void)"
                    continue
                params.append({"name": param.name or f"arg{index}", "type": self.type_ref(param.type, decl.name)})
            self.functions[decl.name] = {"name": decl.name, "returns": self.type_ref(func.type, decl.name),
                                         "params": params}
        elif isinstance(decl, c_ast.Decl):
            self.type_ref(decl.type, decl.name or "decl")


def integer_defines(text: str, prefixes: tuple[str, ...]) -> dict[str, int]:
    """Integer ``#define`` constants whose names start with one of ``prefixes``."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        match = _DEFINE.match(line)
        if match and match.group(1).startswith(prefixes):
            literal = _INT_LITERAL.match(match.group(2))
            if literal:
                found[match.group(1)] = int(literal.group(1), 0)
    return found


def extract(header: Path, source: str) -> dict[str, Any]:
    text = header.read_text()
    extractor = _Extractor()
    # Without the auto-upgrade macros every exported name, old and new, is declared.
    ast = CParser().parse(preprocess(header, ["NVML_NO_UNVERSIONED_FUNC_DEFS"]), header.name)
    for decl in ast.ext:
        extractor.visit(decl)
    return {
        "api": "nvml",
        "source": source,
        "header_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "functions": [extractor.functions[name] for name in sorted(extractor.functions)],
        "typedefs": extractor.typedefs,
        "records": extractor.records,
        "enums": extractor.enums,
        "defines": integer_defines(text, ("NVML_", "nvml")),
    }


def find_nvml_header() -> Path:
    """Locate nvml.h inside the installed ``nvidia-nvml-dev`` wheel."""
    import nvidia  # namespace package from the NVIDIA wheels

    for root in nvidia.__path__:
        for candidate in sorted(Path(root).glob("*/include/nvml.h")):
            return candidate
    raise FileNotFoundError("nvml.h not found; install it with `pip install nvidia-nvml-dev`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--header", type=Path, help="nvml.h (default: the nvidia-nvml-dev wheel's)")
    parser.add_argument("--source", default="", help="where the header came from, recorded in the manifest")
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).with_name("nvml.json"))
    args = parser.parse_args(argv)
    header = args.header or find_nvml_header()
    source = args.source
    if not source:
        from importlib.metadata import version

        source = f"nvidia-nvml-dev {version('nvidia-nvml-dev')}"
    manifest = extract(header, source)
    args.output.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"{args.output}: {len(manifest['functions'])} functions from {header} ({source})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
