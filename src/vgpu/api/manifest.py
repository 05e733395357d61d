"""The API manifest as objects: functions with classified parameters, op ids, ctypes layouts.

Both the C generator and vgpud's dispatch read the manifest through this module,
so the native stubs and the Python side agree on every op id and encoding.

>>> api = load("nvml")
>>> api.function("nvmlDeviceGetName").params[1].kind
<Kind.BUFFER: 7>
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from functools import cache, cached_property, lru_cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent

#: First op id of each API; ids below 0x1000 are the protocol's own control ops.
OP_BASE = {"nvml": 0x1000, "cuda": 0x4000}

_SCALARS: dict[str, type] = {
    "char": ctypes.c_char, "signed char": ctypes.c_byte, "unsigned char": ctypes.c_ubyte,
    "short": ctypes.c_short, "unsigned short": ctypes.c_ushort,
    "int": ctypes.c_int, "unsigned": ctypes.c_uint, "unsigned int": ctypes.c_uint,
    "long": ctypes.c_long, "unsigned long": ctypes.c_ulong,
    "long long": ctypes.c_longlong, "signed long long": ctypes.c_longlong,
    "unsigned long long": ctypes.c_ulonglong,
    "float": ctypes.c_float, "double": ctypes.c_double,
    "void": ctypes.c_ubyte,  # only as the element of a byte array (Kind.ARRAY_IN, ARRAY_OUT)
}


class Kind(enum.IntEnum):
    """How a parameter travels on the wire (mirrored in the generated C header)."""

    VALUE = 1       #: a scalar or struct passed by value
    HANDLE = 2      #: an opaque handle, sent as its 64-bit id
    CSTRING = 3     #: const char *, NUL-terminated input
    IN = 4          #: const T *, one object sent
    INOUT = 5       #: T *, one object sent and returned (versioned structs carry their version in)
    HANDLE_OUT = 6  #: handle *, an id returned
    BUFFER = 7      #: char * output with a capacity
    ARRAY = 8       #: T * with an element count held by another parameter
    OPAQUE = 9      #: cannot be marshalled; the function answers "not supported"
    ARRAY_IN = 10   #: const T * (or const void *, bytes) with a count: sent, not returned
    ARRAY_OUT = 11  #: T * (or void *, bytes) with a count: returned, not sent
    HANDLE_ARRAY = 12  #: const handle * with a count: each element sent as its 64-bit id
    HANDLE_ARRAY_OUT = 13  #: handle * with a capacity: ids returned, made handles by the shim


#: parameter kinds a published function may have (its cache key is built from them)
PUBLISHABLE = frozenset({Kind.VALUE, Kind.HANDLE, Kind.IN, Kind.INOUT, Kind.HANDLE_OUT, Kind.BUFFER})
#: kinds that carry a count of elements held by another parameter
COUNTED = frozenset({Kind.ARRAY, Kind.ARRAY_IN, Kind.ARRAY_OUT})
#: CUDA's per-thread-default-stream variants of a function's name
PER_THREAD_SUFFIXES = ("_ptds", "_ptsz")


def per_thread_base(name: str) -> str:
    """The function a per-thread-default-stream name (_ptds, _ptsz) varies; other names as
    they are. vgpud keeps one default stream per process and device, so both do the same."""
    return name[:-5] if name.endswith(PER_THREAD_SUFFIXES) else name


@dataclass(frozen=True)
class Param:
    name: str
    type: dict[str, Any]
    kind: Kind
    #: index of the parameter holding the capacity or count (BUFFER, ARRAY)
    count: int | None = None
    #: fixed capacity in bytes of a BUFFER that has no count parameter
    fixed: int | None = None
    #: handle type name for HANDLE and HANDLE_OUT
    handle: str | None = None
    #: an output the caller may leave NULL (annotation "optional")
    optional: bool = False
    #: a device ordinal (annotations "ordinal_types" and "ordinals"), or an output counting
    #: devices ("device_counts"): what a relay joining GPU hosts renumbers (vgpu.remote.join)
    ordinal: bool = False
    device_count: bool = False


@dataclass(frozen=True)
class Function:
    name: str
    op: int
    returns: dict[str, Any]
    params: tuple[Param, ...]
    local: bool
    #: index of the parameter giving a wait in milliseconds, for calls that may block
    wait_param: int | None = None
    #: vgpud publishes its answers in shared memory (see vgpu.server.published)
    published: bool = False
    #: answers never change for a process: the shim keeps the first successful one
    immutable: bool = False
    #: waits for queued work, host functions included: the shim lets those finish first, and
    #: vgpud answers it with the first error of the work sent without waiting
    synchronizing: bool = False
    #: queues work: the shim sends it without waiting when nothing comes back to the caller
    asynchronous: bool = False

    @property
    def encodable(self) -> bool:
        """Every parameter can travel (vgpud may serve it, for a generated stub or the shim's own code)."""
        return all(p.kind is not Kind.OPAQUE for p in self.params)

    @property
    def marshallable(self) -> bool:
        """A generated stub sends it to vgpud."""
        return not self.local and self.encodable


@dataclass
class Api:
    name: str
    raw: dict[str, Any]
    annotations: dict[str, Any]
    functions: list[Function] = field(default_factory=list)

    def function(self, name: str) -> Function:
        return self._by_name[name]

    def by_op(self, op: int) -> Function | None:
        index = op - OP_BASE[self.name]
        return self.functions[index] if 0 <= index < len(self.functions) else None

    @cached_property
    def _by_name(self) -> dict[str, Function]:
        return {f.name: f for f in self.functions}

    @cached_property
    def digest(self) -> str:
        """Fingerprint of everything both ends must agree on; exchanged in the handshake."""
        payload = json.dumps([self.raw["header_sha256"], self.annotations], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    @cached_property
    def handle_types(self) -> list[str]:
        """Typedef names that are pointers to opaque structs (nvmlDevice_t, nvmlEventSet_t, ...)."""
        found = []
        for name, ref in self.raw["typedefs"].items():
            if ref["kind"] == "ptr" and ref["to"]["kind"] == "record" and ref["to"]["name"] not in self.raw["records"]:
                found.append(name)
        return sorted(found)

    @cached_property
    def handle_index(self) -> dict[str, int]:
        """Each handle type's slot type in the shim's handle table; types the annotations alias
        (a CUkernel may be passed where a CUfunction is expected) share their target's."""
        index = {name: i for i, name in enumerate(self.handle_types)}
        for alias, target in self.annotations.get("handle_aliases", {}).items():
            index[alias] = index[target]
        return index

    @cached_property
    def constants(self) -> dict[str, int]:
        """Every enumerator and integer #define, by name."""
        merged: dict[str, int] = dict(self.raw["defines"])
        for values in self.raw["enums"].values():
            merged.update(values)
        return merged

    def enum(self, name: str) -> dict[str, int]:
        return self.raw["enums"][name]

    def resolve(self, ref: dict[str, Any]) -> dict[str, Any]:
        """Follow typedefs until a pointer, array, record or basic type."""
        while ref["kind"] == "name" and ref["name"] in self.raw["typedefs"]:
            const = ref.get("const", False)
            ref = dict(self.raw["typedefs"][ref["name"]])
            if const:
                ref["const"] = True
        return ref

    def ctype(self, ref: dict[str, Any]) -> type:
        """The ctypes type laid out exactly as the C compiler lays out ``ref``."""
        if ref["kind"] == "name" and ref["name"] in self.raw["typedefs"]:
            return self.ctype_named(ref["name"])
        if ref["kind"] == "name":
            return _SCALARS[ref["name"]]
        if ref["kind"] == "ptr":
            return ctypes.c_void_p
        if ref["kind"] == "array":
            return self.ctype(ref["of"]) * ref["len"]
        if ref["kind"] == "record":
            return self.record(ref["name"])
        raise TypeError(f"no ctypes layout for {ref}")

    def ctype_named(self, name: str) -> type:
        return self.ctype(self.raw["typedefs"][name])

    def record(self, name: str) -> type:
        cache_ = self.__dict__.setdefault("_records", {})
        if name not in cache_:
            spec = self.raw["records"][name]
            base = ctypes.Union if spec["union"] else ctypes.Structure
            cls = type(name, (base,), {})
            cache_[name] = cls
            fields = [(f["name"] or f"_anonymous{i}", self.ctype(f["type"])) for i, f in enumerate(spec["fields"])]
            cls._anonymous_ = [name for (name, _), f in zip(fields, spec["fields"]) if not f["name"]]
            cls._fields_ = fields
        return cache_[name]


def _is_char(ref: dict[str, Any]) -> bool:
    return ref["kind"] == "name" and ref["name"] == "char"


def _classify(api: Api, fname: str, params: list[dict[str, Any]]) -> tuple[Param, ...]:
    notes = api.annotations
    names = [p["name"] for p in params]
    opaque = set(notes.get("opaque", {}).get("params", []))
    out: list[Param] = []
    retype = notes.get("retype", {})
    for p in params:
        key = f"{fname}.{p['name']}"
        ref = {"kind": "ptr", "to": {"kind": "name", "name": retype[key]}} if key in retype else p["type"]
        resolved = api.resolve(ref)
        typedef = ref["name"] if ref["kind"] == "name" else None
        if key in opaque:
            out.append(Param(p["name"], ref, Kind.OPAQUE))
        elif key in notes.get("as_value", []):  # a pointer that is only an address (void *addr)
            out.append(Param(p["name"], ref, Kind.VALUE))
        elif typedef in api.handle_types:
            out.append(Param(p["name"], ref, Kind.HANDLE, handle=typedef))
        elif resolved["kind"] != "ptr":
            out.append(Param(p["name"], ref, Kind.VALUE))
        elif key in notes.get("buffers", {}):
            capacity = notes["buffers"][key]
            if isinstance(capacity, int):
                out.append(Param(p["name"], ref, Kind.BUFFER, fixed=capacity))
            else:
                out.append(Param(p["name"], ref, Kind.BUFFER, count=names.index(capacity)))
        elif key in notes.get("handle_arrays", {}):
            pointee = resolved["to"]
            inputs = pointee.get("const") or key in notes.get("handle_arrays_in", [])
            kind = Kind.HANDLE_ARRAY if inputs else Kind.HANDLE_ARRAY_OUT
            out.append(Param(p["name"], ref, kind, count=names.index(notes["handle_arrays"][key]),
                             handle=pointee["name"]))
        elif key in notes.get("arrays", {}):
            kind = Kind.ARRAY_IN if resolved["to"].get("const") else Kind.ARRAY
            out.append(Param(p["name"], ref, kind, count=names.index(notes["arrays"][key])))
        elif key in notes.get("arrays_out", {}):
            out.append(Param(p["name"], ref, Kind.ARRAY_OUT, count=names.index(notes["arrays_out"][key])))
        else:
            pointee = resolved["to"]
            pointee_typedef = pointee["name"] if pointee["kind"] == "name" else None
            target = api.resolve(pointee)
            if pointee_typedef in api.handle_types:
                out.append(Param(p["name"], ref, Kind.HANDLE_OUT, handle=pointee_typedef))
            elif _is_char(target) and pointee.get("const"):
                out.append(Param(p["name"], ref, Kind.CSTRING))
            elif target["kind"] in ("ptr", "func") or (target["kind"] == "name" and target["name"] in ("void", "char")):
                out.append(Param(p["name"], ref, Kind.OPAQUE))
            elif pointee.get("const"):
                out.append(Param(p["name"], ref, Kind.IN))
            else:
                out.append(Param(p["name"], ref, Kind.INOUT))
    optional = set(notes.get("optional", []))
    ordinals = set(notes.get("ordinals", []))
    ordinal_types = set(notes.get("ordinal_types", []))
    counts = set(notes.get("device_counts", []))

    def named(param: Param) -> str | None:
        ref = param.type["to"] if param.type["kind"] == "ptr" else param.type
        return ref.get("name")

    return tuple(dataclasses.replace(
        param, optional=f"{fname}.{param.name}" in optional,
        ordinal=f"{fname}.{param.name}" in ordinals or (param.kind in (Kind.VALUE, Kind.INOUT)
                                                         and named(param) in ordinal_types),
        device_count=f"{fname}.{param.name}" in counts) for param in out)


def _check_annotations(api: str, notes: dict[str, Any], functions: dict[str, dict[str, Any]]) -> None:
    """Every function and parameter the annotations name exists in the header (headers change)."""
    unknown = []
    for table in ("local", "published", "immutable", "synchronizing", "asynchronous"):
        unknown += [f"{table}: {n}" for n in notes.get(table, []) if n not in functions]
    unknown += [f"blocking: {n}" for n in notes.get("blocking", {}) if n not in functions]
    unknown += [f"chunked: {n}" for n in notes.get("chunked", {}) if n not in functions]
    unknown += [f"client_copies: {n}" for n in notes.get("client_copies", {}) if n not in notes.get("chunked", {})]
    unknown += [f"refused_by_real_drivers: {n}" for group in notes.get("refused_by_real_drivers", [])
                for n in group["functions"] if n not in functions]
    for table in ("buffers", "arrays", "arrays_out", "retype", "optional", "as_value", "handle_arrays",
                  "handle_arrays_in", "ordinals",
                  "device_counts"):
        for key in notes.get(table, {}):
            function, _, param = key.partition(".")
            if function not in functions or param not in {p["name"] for p in functions[function]["params"]}:
                unknown.append(f"{table}: {key}")
    if unknown:
        raise ValueError(f"{api}_annotations.toml names what {api}'s header does not declare: {', '.join(unknown)}")


@cache
def load(name: str) -> Api:
    """Load the manifest and annotations of one API ("nvml")."""
    raw = json.loads((HERE / f"{name}.json").read_text())
    annotations = tomllib.loads((HERE / f"{name}_annotations.toml").read_text())
    _check_annotations(name, annotations, {f["name"]: f for f in raw["functions"]})
    api = Api(name, raw, annotations)
    local = set(annotations.get("local", []))
    published = set(annotations.get("published", []))
    immutable = set(annotations.get("immutable", []))
    synchronizing = set(annotations.get("synchronizing", []))
    asynchronous = set(annotations.get("asynchronous", []))
    blocking = annotations.get("blocking", {})
    for index, spec in enumerate(raw["functions"]):
        param_names = [p["name"] for p in spec["params"]]
        wait = blocking.get(spec["name"])
        api.functions.append(Function(
            name=spec["name"],
            op=OP_BASE[name] + index,
            returns=spec["returns"],
            params=_classify(api, spec["name"], spec["params"]),
            local=spec["name"] in local,
            wait_param=param_names.index(wait) if wait else None,
            published=spec["name"] in published,
            immutable=spec["name"] in immutable,
            synchronizing=spec["name"] in synchronizing,
            asynchronous=spec["name"] in asynchronous,
        ))
    for function in api.functions:
        if (function.published or function.immutable) and any(p.kind not in PUBLISHABLE for p in function.params):
            raise ValueError(f"{function.name} cannot be kept: its parameters are not all fixed-size")
    return api


_RESULT_ENUM = {"cuda": "cudaError_enum", "nvml": "nvmlReturn_enum"}


@lru_cache(maxsize=None)
def result_name(api: str, code: int) -> str:
    """An API's name for a return code: ("cuda", 100) -> CUDA_ERROR_NO_DEVICE."""
    names = {value: name for name, value in load(api).raw["enums"][_RESULT_ENUM[api]].items()}
    return names.get(code, str(code))
