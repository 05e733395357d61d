"""The manifest is NVIDIA's header, the library exports all of it, and ctypes lays structs out as C does."""

from __future__ import annotations

import ctypes
import json
import subprocess

import pytest
from elftools.elf.elffile import ELFFile

from vgpu.api import extract
from vgpu.api.manifest import HERE, Kind, load
from vgpu.launcher import library_path

API = load("nvml")


def exported_symbols(path) -> set[str]:
    with open(path, "rb") as handle:
        symbols = ELFFile(handle).get_section_by_name(".dynsym")
        return {s.name for s in symbols.iter_symbols()
                if s["st_info"]["type"] == "STT_FUNC" and s["st_shndx"] != "SHN_UNDEF"}


def test_library_exports_every_header_function_and_nothing_else():
    exported = exported_symbols(library_path())
    declared = {f.name for f in API.functions}
    assert len(declared) > 400
    assert exported == declared


def test_library_identifies_as_libnvidia_ml():
    with open(library_path(), "rb") as handle:
        dynamic = ELFFile(handle).get_section_by_name(".dynamic")
        sonames = [t.soname for t in dynamic.iter_tags() if t.entry.d_tag == "DT_SONAME"]
        needed = [t.needed for t in dynamic.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
    assert sonames == ["libnvidia-ml.so.1"]
    assert set(needed) <= {"libc.so.6", "ld-linux-x86-64.so.2", "libpthread.so.0"}


@pytest.mark.parametrize("api", sorted(extract.SPECS))
def test_committed_manifests_match_the_headers(api):
    """The manifest is the header the build compiles against: the wheel version pyproject.toml's
    build-system requires (downloaded into a cache when the test extras install another)."""
    committed = json.loads((HERE / f"{api}.json").read_text())
    assert committed["source"] == extract.header_source(api), f"regenerate with `python -m vgpu.api.extract {api}`"
    fresh = extract.extract(api, extract.find_header(api), committed["source"])
    assert fresh == committed, f"regenerate with `python -m vgpu.api.extract {api}`"


def test_every_pointer_parameter_is_classified():
    for function in API.functions:
        for param in function.params:
            if param.kind in (Kind.ARRAY, Kind.BUFFER) and param.count is not None:
                counter = function.params[param.count]
                assert counter.kind in (Kind.VALUE, Kind.INOUT), f"{function.name}.{param.name}"
    unmarshallable = {f.name for f in API.functions if not f.marshallable and not f.local}
    assert len(unmarshallable) < 10, unmarshallable


def _records_in_use() -> list[str]:
    names = set()
    for function in API.functions:
        for param in function.params:
            if param.kind in (Kind.IN, Kind.INOUT, Kind.ARRAY):
                pointee = API.resolve(param.type)["to"]
                if pointee["kind"] == "name" and API.resolve(pointee)["kind"] == "record":
                    names.add(pointee["name"])
    return sorted(names)


def test_ctypes_layouts_match_the_c_compiler(tmp_path):
    records = _records_in_use()
    program = tmp_path / "sizes.c"
    lines = ["#define NVML_NO_UNVERSIONED_FUNC_DEFS", "#include <stdio.h>", "#include <stddef.h>", "#include <nvml.h>",
             "int main(void) {"]
    for name in records:
        lines.append(f'    printf("{name} %zu\\n", sizeof({name}));')
    lines.append("    return 0;\n}")
    program.write_text("\n".join(lines))
    binary = tmp_path / "sizes"
    subprocess.run(["cc", "-o", str(binary), str(program), f"-I{extract.find_header('nvml').parent}"], check=True)
    sizes = dict(line.split() for line in subprocess.run([str(binary)], capture_output=True, text=True).stdout.splitlines())
    assert len(sizes) == len(records) > 50
    for name in records:
        assert ctypes.sizeof(API.ctype_named(name)) == int(sizes[name]), name


@pytest.mark.parametrize("name,kinds", [
    ("nvmlDeviceGetName", [Kind.HANDLE, Kind.BUFFER, Kind.VALUE]),
    ("nvmlDeviceGetHandleByUUID", [Kind.CSTRING, Kind.HANDLE_OUT]),
    ("nvmlDeviceGetComputeRunningProcesses_v3", [Kind.HANDLE, Kind.INOUT, Kind.ARRAY]),
    ("nvmlDeviceGetFieldValues", [Kind.HANDLE, Kind.VALUE, Kind.ARRAY]),
    ("nvmlEventSetWait_v2", [Kind.HANDLE, Kind.INOUT, Kind.VALUE]),
])
def test_parameter_kinds(name, kinds):
    assert [p.kind for p in API.function(name).params] == kinds
