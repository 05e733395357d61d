"""Generate the native shim's C from the manifest: exported stubs, parameter
descriptors, the error-string table and the wire constants.

``python -m vgpu.api.gen_c OUTDIR`` writes ``vgpu_wire.h`` and ``nvml_generated.c``;
the package build runs it before compiling ``native/``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vgpu.api.manifest import Api, Function, Kind, load
from vgpu.wire import protocol


def c_decl(ref: dict[str, Any], name: str = "") -> str:
    """Render a manifest type as a C declaration of ``name`` (an abstract one if empty)."""
    kind = ref["kind"]
    if kind == "ptr":
        return c_decl(ref["to"], f"*{name}")
    if kind == "array":
        return c_decl(ref["of"], f"{name}[{ref['len']}]")
    const = "const " if ref.get("const") else ""
    base = ref["name"] if kind == "name" else f"struct {ref['name']}"
    return f"{const}{base} {name}".rstrip()


def _size_expr(api: Api, function: Function, index: int) -> str:
    param = function.params[index]
    if param.kind is Kind.VALUE:
        return f"sizeof({c_decl(param.type)})"
    if param.kind in (Kind.IN, Kind.INOUT, Kind.ARRAY):
        pointee = dict(api.resolve(param.type)["to"])
        pointee.pop("const", None)
        return f"sizeof({c_decl(pointee)})"
    if param.kind is Kind.BUFFER and param.fixed is not None:
        return str(param.fixed)
    return "0"


def _handle_fields(api: Api, function: Function, index: int) -> str:
    """A C array of the handles inside an INOUT struct (they travel as ids), or ""."""
    param = function.params[index]
    if param.kind is not Kind.INOUT:
        return ""
    pointee = {k: v for k, v in api.resolve(param.type)["to"].items() if k != "const"}
    record = api.resolve(pointee)
    if record["kind"] != "record":
        return ""
    handle_index = {name: i for i, name in enumerate(api.handle_types)}
    entries = [f"{{offsetof({c_decl(pointee)}, {f['name']}), {handle_index[f['type']['name']]}}}"
               for f in api.raw["records"][record["name"]]["fields"]
               if f["type"]["kind"] == "name" and f["type"]["name"] in api.handle_types]
    if not entries:
        return ""
    return f"static const vgpu_handle_field H_{function.name}_{param.name}[] = {{{', '.join(entries)}, {{-1, 0}}}};\n"


def _descriptor(api: Api, function: Function, index: int) -> str:
    handle_index = {name: i for i, name in enumerate(api.handle_types)}
    param = function.params[index]
    fields = f"H_{function.name}_{param.name}" if _handle_fields(api, function, index) else "NULL"
    count = param.count if param.count is not None else -1
    record = int(param.kind in (Kind.IN, Kind.INOUT) and api.resolve(api.resolve(param.type)["to"])["kind"] == "record")
    return (f"{{{int(param.kind)}, {handle_index[param.handle] if param.handle else 0}, {count}, "
            f"{_size_expr(api, function, index)}, {fields}, {record}}}")


def _stub(api: Api, function: Function, prefix: str) -> str:
    descriptors = ",\n    ".join(_descriptor(api, function, i) for i in range(len(function.params)))
    name = function.name
    params_c = ", ".join(c_decl(p.type, p.name) for p in function.params) or "void"
    args = ", ".join(f"(void *)&{p.name}" for p in function.params)
    fields = "".join(_handle_fields(api, function, i) for i in range(len(function.params)))
    table = fields + (f"static const vgpu_param P_{name}[] = {{\n    {descriptors}\n}};\n" if function.params else "")
    wait = function.wait_param if function.wait_param is not None else -1
    return (
        f"{table}static const vgpu_function F_{name} = "
        f'{{"{name}", 0x{function.op:04x}, {len(function.params)}, {wait}, {int(function.published)}, '
        f"{f'P_{name}' if function.params else 'NULL'}}};\n"
        f"VGPU_EXPORT {c_decl(function.returns, name)}({params_c}) {{\n"
        + (f"    void *const args[] = {{{args}}};\n" if function.params else "    void *const *args = NULL;\n")
        + f"    return ({c_decl(function.returns)}){prefix}_dispatch(&F_{name}, args);\n}}\n"
    )


def nvml_source(api: Api) -> str:
    errors = api.annotations["error_strings"]
    codes = api.enum("nvmlReturn_enum")
    cases = "\n".join(f'    case {codes[name]}: return "{text}";' for name, text in errors.items())
    stubs = "\n".join(_stub(api, f, "vgpu_nvml") for f in api.functions if not f.local)
    first = api.functions[0].op
    return f"""/* Generated from vgpu/api/nvml.json by vgpu.api.gen_c; do not edit. */
#define NVML_NO_UNVERSIONED_FUNC_DEFS
#include <stddef.h>
#include <nvml.h>
#include "marshal.h"
#include "nvml_shim.h"

const char vgpu_nvml_digest[] = "{api.digest}";
const unsigned vgpu_nvml_op_base = 0x{first:04x};
const unsigned vgpu_nvml_op_count = {len(api.functions)};

const char *vgpu_nvml_error_text(int code) {{
    switch (code) {{
{cases}
    default: return "Unknown Error";
    }}
}}

{stubs}"""


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "vgpu_wire.h").write_text(protocol.c_header())
    (out / "nvml_generated.c").write_text(nvml_source(load("nvml")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
