"""Extract an API manifest (functions, types, enums, constants) from NVIDIA's headers.

The manifest is the single source of truth for the native stubs, the wire
encodings and the Python dispatch.  It is committed (``nvml.json``, ``cuda.json``)
so a build does not need a parser; ``python -m vgpu.api.extract nvml|cuda``
regenerates it from the headers in NVIDIA's wheels (nvidia-nvml-dev for nvml.h,
nvidia-cuda-runtime for cuda.h and cudaTypedefs.h).

The header is always the one the package build compiles against: the wheel version
pyproject.toml's build-system requires. Where the installed wheel is another version (the
test extras keep an older cudart for the runtime tests), the required wheel is downloaded
once with pip and its headers kept in a cache (``$VGPU_HEADER_CACHE``, by default
``~/.cache/vgpu/headers``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycparser import CParser, c_ast
from pycparser.c_generator import CGenerator

TypeRef = dict[str, Any]

FAKE_LIBC = Path(__file__).with_name("fake_libc")
#: the source checkout's pyproject.toml, whose build requirements name the headers' wheels
PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"
_PFN = re.compile(r"\(\s*(?:CUDAAPI\s*)?\*\s*PFN_(cu\w+?)_v(\d+)(_ptds|_ptsz)?\s*\)")
_DEFINE = re.compile(r"^\s*#\s*define\s+([A-Za-z_]\w*)\s+(.+?)\s*(?://.*|/\*.*)?$")
_INT_LITERAL = re.compile(r"^\(?\s*(-?(?:0x[0-9a-fA-F]+|\d+))\s*(?:[uUlL]{0,3})\s*\)?$")


@dataclass(frozen=True)
class HeaderSpec:
    """Where an API's header lives and how to read every exported name out of it."""

    header: str
    wheel: str
    #: preprocessor definitions under which the header declares every exported name
    defines: tuple[str, ...]
    #: prefixes of the integer #defines worth keeping
    prefixes: tuple[str, ...]


SPECS = {
    # Without the auto-upgrade macros nvml.h declares every name, old and new.
    "nvml": HeaderSpec("nvml.h", "nvidia-nvml-dev", ("NVML_NO_UNVERSIONED_FUNC_DEFS",), ("NVML_", "nvml")),
    # NVIDIA's own build flag: plain, versioned, _ptds and _ptsz names all declared.
    "cuda": HeaderSpec("cuda.h", "nvidia-cuda-runtime", ("__CUDA_API_VERSION_INTERNAL",), ("CU_", "CUDA_")),
}


def preprocess(header: Path, defines: tuple[str, ...]) -> str:
    """Run the C preprocessor so pycparser sees plain declarations."""
    args = ["cc", "-E", "-P", "-nostdinc", f"-I{FAKE_LIBC}", f"-I{header.parent}", "-D__attribute__(x)="]
    args += [f"-D{d}" for d in defines] + [str(header)]
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
        #: arrays whose length only the C compiler can work out, with the expression
        self.compiler_sized: list[tuple[dict[str, Any], str]] = []

    def size_with_compiler(self, header: Path, defines: tuple[str, ...]) -> None:
        """Fill in array lengths such as ``64 - sizeof(x)`` by compiling a program that prints them."""
        if not self.compiler_sized:
            return
        with tempfile.TemporaryDirectory() as folder:
            program = Path(folder) / "sizes.c"
            lines = [f"#define {d}" for d in defines] + ["#include <stdio.h>", f'#include "{header}"',
                                                         "int main(void) {"]
            lines += [f'    printf("%lld\\n", (long long)({expr}));' for _, expr in self.compiler_sized]
            program.write_text("\n".join(lines + ["    return 0;", "}"]))
            binary = Path(folder) / "sizes"
            subprocess.run(["cc", "-w", "-o", str(binary), str(program)], check=True)
            values = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout.split()
        for (array, _), value in zip(self.compiler_sized, values):
            array["len"] = int(value)

    def type_ref(self, node: c_ast.Node, hint: str) -> TypeRef:
        if isinstance(node, c_ast.TypeDecl):
            const = "const" in (node.quals or [])
            inner = self.type_ref(node.type, hint)
            return {**inner, "const": True} if const else inner
        if isinstance(node, c_ast.PtrDecl):
            return {"kind": "ptr", "to": self.type_ref(node.type, hint)}
        if isinstance(node, c_ast.ArrayDecl):
            array = {"kind": "array", "of": self.type_ref(node.type, hint), "len": 0}
            if node.dim is not None:
                try:
                    array["len"] = self.evaluate(node.dim)
                except (ValueError, KeyError):  # sizeof and friends: the C compiler tells
                    self.compiler_sized.append((array, CGenerator().visit(node.dim)))
            return array
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


def proc_address_table(typedefs_header: Path, functions: set[str]) -> dict[str, list[list[Any]]]:
    """cuGetProcAddress's map, from cudaTypedefs.h's PFN_<name>_v<version>[_ptds|_ptsz] typedefs:
    for each name, rows [CUDA version, symbol, per-thread-stream symbol or "", its version or 0]
    in version order.

    The i-th version of a name is its i-th exported symbol (name, name_v2, name_v3, ...), and a
    per-thread variant belongs to the newest plain version not newer than itself; both hold for
    every name in CUDA 13's headers and are checked here."""
    text = preprocess(typedefs_header, SPECS["cuda"].defines)
    versions: dict[str, set[int]] = {}
    per_thread: dict[str, list[tuple[int, str]]] = {}
    for name, version, variant in _PFN.findall(text):
        if variant:
            per_thread.setdefault(name, []).append((int(version), variant))
        else:
            versions.setdefault(name, set()).add(int(version))
    table: dict[str, list[list[Any]]] = {}
    for name, found in sorted(versions.items()):
        numbered = sorted((int(f[len(name) + 2:]), f) for f in functions
                          if f.startswith(name + "_v") and f[len(name) + 2:].isdigit())
        symbols = ([name] if name in functions else []) + [symbol for _, symbol in numbered]
        if len(symbols) != len(found):
            raise ValueError(f"{name}: versions {sorted(found)} do not pair with symbols {symbols}")
        rows = [[version, symbol, "", 0] for version, symbol in zip(sorted(found), symbols)]
        for version, variant in per_thread.get(name, []):
            row = max((r for r in rows if r[0] <= version), key=lambda r: r[0])
            if row[1] + variant not in functions:
                raise ValueError(f"{name}: no symbol {row[1] + variant} for PFN_{name}_v{version}{variant}")
            row[2], row[3] = row[1] + variant, version
        table[name] = rows
    return table


def extract(api: str, header: Path, source: str) -> dict[str, Any]:
    spec = SPECS[api]
    text = header.read_text()
    extractor = _Extractor()
    ast = CParser().parse(preprocess(header, spec.defines), header.name)
    for decl in ast.ext:
        extractor.visit(decl)
    extractor.size_with_compiler(header, spec.defines)
    manifest = {
        "api": api,
        "source": source,
        "header_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "functions": [extractor.functions[name] for name in sorted(extractor.functions)],
        "typedefs": extractor.typedefs,
        "records": extractor.records,
        "enums": extractor.enums,
        "defines": integer_defines(text, spec.prefixes),
    }
    if api == "cuda":
        manifest["proc_address"] = proc_address_table(header.with_name("cudaTypedefs.h"), set(extractor.functions))
    return manifest


def build_requirement(api: str) -> str:
    """The version of the API's header wheel that the package build requires (pyproject.toml)."""
    wheel = SPECS[api].wheel
    requires = tomllib.loads(PYPROJECT.read_text())["build-system"]["requires"]
    for requirement in requires:
        name, _, version = requirement.partition("==")
        if name.strip() == wheel:
            return version.strip()
    raise LookupError(f"pyproject.toml's build-system requires no pinned {wheel}")


def _installed_header(api: str, version: str) -> Path | None:
    """The header in the installed wheel, if that wheel is ``version``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    spec = SPECS[api]
    try:
        if installed_version(spec.wheel) != version:
            return None
        import nvidia  # namespace package from the NVIDIA wheels
    except (PackageNotFoundError, ImportError):
        return None
    for root in nvidia.__path__:
        for candidate in sorted(Path(root).glob(f"*/include/{spec.header}")):
            return candidate
    return None


def _cached_header(api: str, version: str) -> Path:
    """The header from the wheel ``version``, downloaded with pip once and kept in the cache
    with the other headers of its include folder (cudaTypedefs.h beside cuda.h)."""
    spec = SPECS[api]
    cache = Path(os.environ.get("VGPU_HEADER_CACHE") or Path.home() / ".cache" / "vgpu" / "headers")
    folder = cache / f"{spec.wheel}-{version}"
    if (folder / spec.header).exists():
        return folder / spec.header
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download, tempfile.TemporaryDirectory(dir=cache) as staging:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--dest", download, f"{spec.wheel}=={version}"],
                       check=True, env={**os.environ, "PIP_CONSTRAINT": ""})
        wheel = next(Path(download).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                folder_name, _, file_name = member.rpartition("/")
                if folder_name.endswith("/include") and file_name.endswith(".h"):
                    (Path(staging) / file_name).write_bytes(archive.read(member))
        if not (Path(staging) / spec.header).exists():
            raise FileNotFoundError(f"{wheel.name} holds no {spec.header}")
        if not folder.exists():  # whole or not at all, should two runs race
            os.rename(staging, folder)
            os.mkdir(staging)  # for the context manager to remove
    return folder / spec.header


def find_header(api: str) -> Path:
    """The API's header from the wheel version the package build requires: the installed
    wheel's when it is that version, otherwise one downloaded into the cache."""
    version = build_requirement(api)
    return _installed_header(api, version) or _cached_header(api, version)


def header_source(api: str) -> str:
    """What a manifest records as its source: the header wheel and the version the build requires."""
    return f"{SPECS[api].wheel} {build_requirement(api)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("api", choices=sorted(SPECS))
    parser.add_argument("--header", type=Path, help="the header (default: that of the wheel version the build requires)")
    parser.add_argument("--source", default="", help="where the header came from, recorded in the manifest")
    parser.add_argument("-o", "--output", type=Path, help="default: API.json beside this file")
    args = parser.parse_args(argv)
    header = args.header or find_header(args.api)
    source = args.source or header_source(args.api)
    args.output = args.output or Path(__file__).with_name(f"{args.api}.json")
    manifest = extract(args.api, header, source)
    args.output.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"{args.output}: {len(manifest['functions'])} functions from {header} ({source})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
