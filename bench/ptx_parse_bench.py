"""Robustness and speed of the PTX parser over the PTX that real binaries ship.

Finds fat binaries in shared libraries (``.nv_fatbin`` sections: cuBLAS, cuBLASLt, cuDNN,
ggml-cuda builds...) or takes ``.ptx`` files, extracts every PTX entry with the project's
fat-binary reader, parses each one fully (every body) and reports failures and speed:

    python bench/ptx_parse_bench.py                       # the libraries of the CI stacks
    python bench/ptx_parse_bench.py libggml-cuda.so x.ptx --limit-mb 50 --check

Not a test: the inputs may be absent on a machine.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from typing import Iterator

from elftools.elf.elffile import ELFFile

from vgpu.compute.lower.layout import param_layout
from vgpu.compute.ptx.parser import PtxSyntaxError, parse
from vgpu.compute.ptx.syntax import Function, Instruction, Label, RegisterDecl, Symbol, Variable, registers_in
from vgpu.images.ptx import read_ptx
from vgpu.images.fatbin import ENTRY, FLAG_COMPRESSED_LZ4, FLAG_COMPRESSED_ZSTD, HEADER, KIND_PTX, _payload, \
    is_fatbin

DEFAULT_GLOBS = [os.path.expanduser("~/.cache/vgpu-ci/stacks/*/lib/python3*/site-packages/nvidia/*/lib/lib*.so*"),
                 os.path.expanduser("~/.cache/vgpu-ci/stacks/*/lib/python3*/site-packages/nvidia/cudnn/lib/lib*.so*")]


def fatbin_ptx(data: bytes) -> Iterator[tuple[int, str]]:
    """(architecture, PTX text) of every PTX entry of the fat binaries packed in ``data``."""
    at = 0
    while at + HEADER.size <= len(data):
        if not is_fatbin(data[at:at + HEADER.size]):
            at = data.find(b"\x50\xed\x55\xba", at + 1)
            if at < 0:
                return
            continue
        _magic, _version, header_size, size = HEADER.unpack_from(data, at)
        entry, end = at + header_size, at + header_size + size
        while entry + ENTRY.size <= end:
            (kind, _v, entry_header, payload_size, compressed_size, _a, _b, _c, arch, _n, _s, flags, _d,
             uncompressed) = ENTRY.unpack_from(data, entry)
            raw = data[entry + entry_header:entry + entry_header + payload_size]
            if flags & (FLAG_COMPRESSED_LZ4 | FLAG_COMPRESSED_ZSTD) and 0 < compressed_size <= payload_size:
                raw = raw[:compressed_size]
            if kind == KIND_PTX:
                text = _payload(raw, flags, uncompressed)
                yield arch, text.split(b"\0", 1)[0].decode("utf-8", errors="replace")
            entry += entry_header + payload_size
        at = max(end, at + 1)


SPECIAL = ("%tid", "%ntid", "%ctaid", "%nctaid", "%laneid", "%warpid", "%nwarpid", "%smid", "%nsmid", "%lanemask",
           "%clock", "%globaltimer", "%envreg", "%dynamic_smem_size", "%total_smem_size", "%gridid", "%pm",
           "%cluster", "%is_explicit_cluster", "%aggr_smem_size", "%reserved_smem", "%current_graph_exec", "WARP_SZ")




def unresolved(function: Function) -> str | None:
    """The first name in a parsed body that does not resolve (a sign of a misparse), or None."""
    body = function.body or []
    registers = {n for s in body if isinstance(s, RegisterDecl) for n in s.names}
    registers |= {p.name for p in function.params + function.returns if p.space == "reg"}
    labels = {s.name for s in body if isinstance(s, Label)}
    params = {s.name for s in body if isinstance(s, Variable) and s.space == "param"}
    for ins in (s for s in body if isinstance(s, Instruction)):
        uses = [r for op in ins.operands for r in registers_in(op)] + ([ins.guard.register] if ins.guard else [])
        for register in uses:
            if register.name not in registers and register.name.split(".")[0] not in registers \
                    and not register.name.startswith(SPECIAL):
                return f"line {ins.line}: undeclared register {register.name}"
        if ins.opcode == "bra" and not (isinstance(ins.operands[0], Symbol) and ins.operands[0].name in labels):
            return f"line {ins.line}: branch to an unknown label {ins.operands[0]}"
        if ins.opcode == "call":
            targets = ins.operands[0]
            for name in targets.returns + targets.arguments:
                if isinstance(name, Symbol) and name.name not in params:
                    return f"line {ins.line}: call operand {name.name} is not a .param variable"
    return None


def layout_mismatches(module, text: str) -> list[str]:
    """Kernels whose parameter layout differs from what the image reader (vgpu.images.ptx) says."""
    code = read_ptx(text.encode())
    found = []
    for function in (f for f in module.functions if f.is_kernel):
        offsets, _ = param_layout(function.params)
        mine = [(offsets[p.name], p.size) for p in function.params]
        reader = code.kernels.get(function.name)
        theirs = None if reader is None else [(p.offset, p.size) for p in reader.params]
        if mine != theirs:
            found.append(f"{function.name}: parameters {mine} here, {theirs} from read_ptx")
    return found


def images(path: str) -> Iterator[tuple[str, str]]:
    """(label, PTX text) for a .ptx file, or each PTX entry of a library's fat binaries."""
    if path.endswith(".ptx"):
        with open(path, encoding="utf-8", errors="replace") as f:
            yield path, f.read()
        return
    with open(path, "rb") as f:
        elf = ELFFile(f)
        section = elf.get_section_by_name(".nv_fatbin")
        if section is None:
            return
        data = section.data()
    for index, (arch, text) in enumerate(fatbin_ptx(data)):
        yield f"{os.path.basename(path)}#{index}(compute_{arch})", text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="libraries with .nv_fatbin sections, or .ptx files")
    parser.add_argument("--check", action="store_true",
                        help="also check that every register, label and call operand of each body resolves, "
                             "and that kernels' parameter layouts agree with vgpu.images.ptx.read_ptx")
    parser.add_argument("--limit-mb", type=float, default=0, help="stop after this much PTX per library")
    args = parser.parse_args()
    paths = args.paths or sorted({p for pattern in DEFAULT_GLOBS for p in glob.glob(pattern)
                                  if not os.path.islink(p)}, key=os.path.basename)
    seen: set[str] = set()
    total_bytes = total_lines = total_functions = total_instructions = 0
    split_seconds = body_seconds = 0.0
    failures: list[str] = []
    for path in paths:
        name = os.path.basename(path)
        if name in seen:  # the same library in several stacks
            continue
        seen.add(name)
        library_bytes = 0
        for label, text in images(path):
            if args.limit_mb and library_bytes > args.limit_mb * 1e6:
                break
            library_bytes += len(text)
            started = time.perf_counter()
            try:
                module = parse(text)
                split = time.perf_counter()
                for function in module.functions:
                    body = function.body
                    total_instructions += len(body) if body else 0
                total_functions += len(module.functions)
                if args.check:
                    for problem in layout_mismatches(module, text):
                        failures.append(f"{label} {problem}")
                        print(f"FAIL {label} {problem}", file=sys.stderr)
                    for function in module.functions:
                        problem = unresolved(function)
                        if problem:
                            failures.append(f"{label} {function.name}: {problem}")
                            print(f"FAIL {label} {function.name}: {problem}", file=sys.stderr)
            except PtxSyntaxError as error:
                split = time.perf_counter()
                failures.append(f"{label}: {error}")
                print(f"FAIL {label}: {error}", file=sys.stderr)
            done = time.perf_counter()
            split_seconds += split - started
            body_seconds += done - split
            total_bytes += len(text)
            total_lines += text.count("\n")
        if library_bytes:
            print(f"{name}: {library_bytes / 1e6:.1f} MB of PTX", file=sys.stderr)
    seconds = split_seconds + body_seconds
    print(f"{total_bytes / 1e6:.1f} MB, {total_lines} lines, {total_functions} functions, "
          f"{total_instructions} body statements, {len(failures)} failures")
    if seconds:
        print(f"full parse: {seconds:.1f} s = {total_bytes / 1e6 / seconds:.2f} MB/s, "
              f"{total_lines / seconds:,.0f} lines/s; module split alone (lazy parse): "
              f"{total_bytes / 1e6 / max(split_seconds, 1e-9):.1f} MB/s")
    for failure in failures[:50]:
        print("  " + failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
