"""docs/coverage.md is current, and what it calls "not supported" is what clients get."""

from __future__ import annotations

import json

from tests.conftest import run_json
from vgpu.api import coverage
from vgpu.api.manifest import load


def test_coverage_page_is_current():
    assert coverage.PAGE.read_text() == coverage.render(), (
        "docs/coverage.md is stale: regenerate it with `python -m vgpu.api.coverage`")


def test_counts_add_up_and_every_function_is_listed():
    for entries, api in ((coverage.cuda_entries(), load("cuda")), (coverage.nvml_entries(), load("nvml"))):
        assert [e.name for e in entries] == sorted(f.name for f in api.functions)
        refused = [e for e in entries if e.refused_because]
        assert all(e.answered_by == coverage.NOT_SUPPORTED for e in refused)
    cuda = {e.name: e for e in coverage.cuda_entries()}
    assert cuda["cuInit"].answered_by == coverage.LIBRARY and cuda["cuMemAlloc_v2"].answered_by == coverage.SIMULATOR
    assert cuda["cuGraphicsMapResources"].refused_because and not cuda["cuIpcGetMemHandle"].refused_because


NOT_SUPPORTED_CALLS = """
import ctypes, json
from vgpu.api.manifest import load
from vgpu.launcher import library_path
names = json.loads(NAMES)
out = {}
for api_name, library, init in (("cuda", "libvgpu-cuda.so", "cuInit"), ("nvml", "libvgpu-nvml.so", "nvmlInit_v2")):
    api = load(api_name)
    lib = ctypes.CDLL(str(library_path(library)))
    assert (getattr(lib, init)(0) if api_name == "cuda" else getattr(lib, init)()) == 0
    def ctype(param):
        return ctypes.c_void_p if api.resolve(param.type)["kind"] == "ptr" else api.ctype(param.type)
    for name in names[api_name]:
        function = lib[name]
        function.restype = ctypes.c_int
        function.argtypes = [ctype(p) for p in api.function(name).params]
        out[name] = function(*[ctype(p)() for p in api.function(name).params])
print(json.dumps(out))
"""


def test_what_the_page_calls_not_supported_answers_not_supported(vgpud):
    """Each function the page lists as not supported, called through the library: the API's
    "not supported" code, whatever its arguments (the library answers before looking at them)."""
    names = {api: [e.name for e in entries if e.answered_by == coverage.NOT_SUPPORTED]
             for api, entries in (("cuda", coverage.cuda_entries()), ("nvml", coverage.nvml_entries()))}
    out = run_json(NOT_SUPPORTED_CALLS.replace("NAMES", repr(json.dumps(names))), vgpud.env, timeout=120)
    expected = {**{n: load("cuda").constants["CUDA_ERROR_NOT_SUPPORTED"] for n in names["cuda"]},
                **{n: load("nvml").constants["NVML_ERROR_NOT_SUPPORTED"] for n in names["nvml"]}}
    assert {n: code for n, code in out.items() if code != expected[n]} == {}
    assert len(out) == len(expected) > 300  # the floor falls as functions are served
