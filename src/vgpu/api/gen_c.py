"""Generate the native shim's C from the manifest: exported stubs, parameter
descriptors, the error-string table and the wire constants.

``python -m vgpu.api.gen_c OUTDIR`` writes ``vgpu_wire.h`` and ``nvml_generated.c``;
the package build runs it before compiling ``native/``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vgpu.api.manifest import Api, Function, Kind, load, per_thread_base
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
    if param.kind in (Kind.IN, Kind.INOUT, Kind.ARRAY, Kind.ARRAY_IN, Kind.ARRAY_OUT):
        pointee = dict(api.resolve(param.type)["to"])
        pointee.pop("const", None)
        if api.resolve(pointee) == {"kind": "name", "name": "void"}:
            return "1"  # a byte array
        return f"sizeof({c_decl(pointee)})"
    if param.kind is Kind.BUFFER and param.fixed is not None:
        return str(param.fixed)
    if param.kind in (Kind.HANDLE_ARRAY, Kind.HANDLE_ARRAY_OUT):
        return "sizeof(void *)"
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
    handle_index = api.handle_index
    entries = [f"{{offsetof({c_decl(pointee)}, {f['name']}), {handle_index[f['type']['name']]}}}"
               for f in api.raw["records"][record["name"]]["fields"]
               if f["type"]["kind"] == "name" and f["type"]["name"] in api.handle_types]
    if not entries:
        return ""
    return f"static const vgpu_handle_field H_{function.name}_{param.name}[] = {{{', '.join(entries)}, {{-1, 0}}}};\n"


def _descriptor(api: Api, function: Function, index: int) -> str:
    handle_index = api.handle_index
    param = function.params[index]
    fields = f"H_{function.name}_{param.name}" if _handle_fields(api, function, index) else "NULL"
    count = param.count if param.count is not None else -1
    pointee = api.resolve(api.resolve(param.type)["to"]) if param.kind in (Kind.IN, Kind.INOUT) else {}
    record = int(pointee.get("kind") == "record")
    return (f"{{{int(param.kind)}, {handle_index[param.handle] if param.handle else 0}, {count}, "
            f"{_size_expr(api, function, index)}, {fields}, {record}, {int(_versioned(api, pointee))}}}")


def _versioned(api: Api, pointee: dict) -> bool:
    """An NVML struct that starts with its version (NVML_STRUCT_VERSION: its size in the low 24 bits),
    so a caller built with an older header passes a smaller one."""
    if api.name != "nvml" or pointee.get("kind") != "record":
        return False
    fields = api.raw["records"][pointee["name"]]["fields"]
    return bool(fields) and fields[0]["name"] == "version"


def _stub(api: Api, function: Function, prefix: str) -> str:
    """The function's parameter table and, unless the shim's core defines it, its export."""
    descriptors = ",\n    ".join(_descriptor(api, function, i) for i in range(len(function.params)))
    name = function.name
    params_c = ", ".join(c_decl(p.type, p.name) for p in function.params) or "void"
    args = ", ".join(f"(void *)&{p.name}" for p in function.params)
    fields = "".join(_handle_fields(api, function, i) for i in range(len(function.params)))
    table = fields + (f"static const vgpu_param P_{name}[] = {{\n    {descriptors}\n}};\n" if function.params else "")
    wait = function.wait_param if function.wait_param is not None else -1
    text = (
        f"{table}const vgpu_function {prefix}_fn_{name} = "
        f'{{"{name}", 0x{function.op:04x}, {len(function.params)}, {wait}, {int(function.published)}, '
        f'{int(function.immutable)}, {int(function.synchronizing)}, {int(function.asynchronous)}, '
        f"{f'P_{name}' if function.params else 'NULL'}}};\n"
    )
    if function.local:
        return text + _per_thread_forward(api, function)
    chunked = api.annotations.get("chunked", {}).get(name)
    if chunked:
        return text + _chunked_stub(api, function, prefix, params_c, chunked)
    return text + (
        f"VGPU_EXPORT {c_decl(function.returns, name)}({params_c}) {{\n"
        + (f"    void *const vgpu_args[] = {{{args}}};\n" if function.params else "    void *const *vgpu_args = NULL;\n")
        + f"    return ({c_decl(function.returns)}){prefix}_dispatch(&{prefix}_fn_{name}, vgpu_args);\n}}\n"
    )


def _per_thread_forward(api: Api, function: Function) -> str:
    """A per-thread-default-stream name (_ptds, _ptsz) of a function the shim defines: the same
    work (the simulator keeps one default stream per process and device), so it forwards."""
    base = per_thread_base(function.name)
    if base == function.name or base not in api._by_name or not api.function(base).local:
        return ""
    if [p.type for p in api.function(base).params] != [p.type for p in function.params]:
        return ""
    params_c = ", ".join(c_decl(p.type, p.name) for p in function.params) or "void"
    args = ", ".join(p.name for p in function.params)
    return f"VGPU_EXPORT {c_decl(function.returns, function.name)}({params_c}) {{ return {base}({args}); }}\n"


def _chunked_stub(api: Api, function: Function, prefix: str, params_c: str, chunked: dict[str, Any]) -> str:
    """An export that sends a large transfer as pieces of VGPU_BULK_CHUNK bytes, advancing
    its addresses (integers or pointers) piece by piece; the first failure ends it."""
    lines = [f"VGPU_EXPORT {c_decl(function.returns, function.name)}({params_c}) {{"]
    mine = api.annotations.get("client_copies", {}).get(function.name)
    if mine:  # the library may copy it itself, through its mapping of the device memory
        whole = ", ".join(f"(void *)&{p.name}" for p in function.params)
        lines += [f"    void *const vgpu_whole[] = {{{whole}}};",
                  f"    int vgpu_mine = {prefix}_client_copy(&{prefix}_fn_{function.name}, vgpu_whole, {mine['device']}, "
                  f"(void *){mine['host']}, {chunked['count']}, {int(mine['to_device'])}, {int(mine['pageable_only'])});",
                  f"    if (vgpu_mine >= 0) return ({c_decl(function.returns)})vgpu_mine;"]
    lines += [f"    size_t vgpu_total = {chunked['count']}, vgpu_done = 0;",
             "    for (;;) {",
             "        size_t vgpu_step = vgpu_total - vgpu_done < VGPU_BULK_CHUNK ? vgpu_total - vgpu_done : VGPU_BULK_CHUNK;"]
    names = []
    for param in function.params:
        piece = f"{param.name}_piece"
        names.append(f"(void *)&{piece}")
        if param.name == chunked["count"]:
            value = "vgpu_step"
        elif param.name in chunked["advance"]:
            pointer = api.resolve(param.type)["kind"] == "ptr"
            value = (f"({c_decl(param.type)})((const char *){param.name} + vgpu_done)" if pointer
                     else f"{param.name} + vgpu_done")
        else:
            value = param.name
        lines.append(f"        {c_decl(param.type, piece)} = {value};")
    lines += [f"        void *const vgpu_args[] = {{{', '.join(names)}}};",
              f"        int vgpu_rc = {prefix}_dispatch_piece(&{prefix}_fn_{function.name}, vgpu_args, "
              "vgpu_done + vgpu_step >= vgpu_total);",
              "        vgpu_done += vgpu_step;",
              f"        if (vgpu_rc != 0 || vgpu_done >= vgpu_total) return ({c_decl(function.returns)})vgpu_rc;",
              "    }", "}", ""]
    return "\n".join(lines)


def _switch(function: str, cases: dict[int, str], default: str) -> str:
    body = "\n".join(f'    case {code}: return "{text}";' for code, text in cases.items())
    fallback = f'"{default}"' if default else "NULL"
    return f"const char *{function}(int code) {{\n    switch (code) {{\n{body}\n    default: return {fallback};\n    }}\n}}\n"


def api_source(api: Api, prelude: str, prefix: str, error_enum: str, unknown_text: str) -> str:
    """One API's generated C: digest and op range, nvmlErrorString-style texts, every stub."""
    codes = api.enum(error_enum)
    texts = {codes[name]: text for name, text in api.annotations["error_strings"].items()}
    stubs = "\n".join(_stub(api, f, prefix) for f in api.functions)
    handles = "\n".join(f"const unsigned {prefix}_handle_{name} = {index};" for name, index in api.handle_index.items())
    return f"""/* Generated from vgpu/api/{api.name}.json by vgpu.api.gen_c; do not edit. */
{prelude}
#include <stddef.h>
#include "marshal.h"
#include "vgpu_wire.h"
#include "{api.name}_shim.h"

const char {prefix}_digest[] = "{api.digest}";
{handles}
const unsigned {prefix}_op_base = 0x{api.functions[0].op:04x};
const unsigned {prefix}_op_count = {len(api.functions)};

{_switch(f"{prefix}_error_text", texts, unknown_text)}
{stubs}"""


def cuda_extras(api: Api) -> str:
    """cuGetErrorName's names and cuGetProcAddress's table (name, version, symbols)."""
    names: dict[int, str] = {}
    for name, code in sorted(api.enum("cudaError_enum").items(), key=lambda item: item[1]):
        names.setdefault(code, name)
    rows = []
    for name, versions in sorted(api.raw["proc_address"].items()):
        for version, symbol, per_thread, per_thread_version in versions:
            thread_symbol = f"(void *){per_thread}" if per_thread else "NULL"
            rows.append(f'    {{"{name}", {version}, (void *){symbol}, {thread_symbol}, {per_thread_version}}},')
    return f"""
{_switch("vgpu_cuda_error_name", names, "")}
const vgpu_proc_entry vgpu_cuda_procs[] = {{
{chr(10).join(rows)}
}};
const unsigned vgpu_cuda_proc_count = {len(rows)};
"""


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "vgpu_wire.h").write_text(protocol.c_header())
    (out / "nvml_generated.c").write_text(api_source(
        load("nvml"), "#define NVML_NO_UNVERSIONED_FUNC_DEFS\n#include <nvml.h>", "vgpu_nvml",
        "nvmlReturn_enum", "Unknown Error"))
    cuda = load("cuda")
    (out / "cuda_generated.c").write_text(api_source(
        cuda, "#define __CUDA_API_VERSION_INTERNAL\n#include <cuda.h>", "vgpu_cuda", "cudaError_enum", "")
        + cuda_extras(cuda))
    return 0


if __name__ == "__main__":
    sys.exit(main())
