"""The PTX front end: real nvcc output (compute_75, 90, 120) and hand-written PTX of the
forms nvcc does not emit (LLVM NVPTX / numba style), parsed into the syntax tree the
lowering reads; malformed input gives PtxSyntaxError with its line."""

from __future__ import annotations

import os
import pickle
import random
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from vgpu.compute.initializers import initial_bytes
from vgpu.compute.lower.layout import param_layout
from vgpu.compute.ptx.parser import PtxSyntaxError, parse
from vgpu.compute.ptx.syntax import (Address, BracketList, BranchTargets, CallPrototype, CallTargets, Function,
                                     Guard, Immediate, Instruction, Label, Module, Negated, Pragma, PredicatePair,
                                     Register, RegisterDecl, Symbol, Variable, VectorOperand, registers_in)
from vgpu.images.ptx import read_ptx

NVCC = "/usr/local/cuda-13.0/bin/nvcc"
SOURCES = Path(__file__).parent / "parser_sources"
ARCHES = (75, 90, 120)
SPECIAL_PREFIXES = ("%tid", "%ntid", "%ctaid", "%nctaid", "%laneid", "%warpid", "%nwarpid", "%smid", "%nsmid",
                    "%lanemask", "%clock", "%globaltimer", "%envreg", "%dynamic_smem_size", "%total_smem_size",
                    "%gridid", "%pm", "%cluster", "%is_explicit_cluster", "%aggr_smem_size", "%reserved_smem",
                    "WARP_SZ")


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """PTX text for (source stem, architecture), compiled once per session by nvcc 13."""
    if not os.access(NVCC, os.X_OK):
        pytest.skip("nvcc 13 is not installed")
    folder = tmp_path_factory.mktemp("ptx")
    texts: dict[tuple[str, int], str] = {}

    def get(stem: str, arch: int) -> str:
        if (stem, arch) not in texts:
            out = folder / f"{stem}_{arch}.ptx"
            subprocess.run([NVCC, "-ptx", f"-arch=compute_{arch}", str(SOURCES / f"{stem}.cu"), "-o", str(out)],
                           check=True, capture_output=True, timeout=300)
            texts[stem, arch] = out.read_text()
        return texts[stem, arch]

    return get


def instructions(function: Function, opcode: str | None = None) -> list[Instruction]:
    return [s for s in function.body if isinstance(s, Instruction) and (opcode is None or s.opcode == opcode)]


def symbols_of(operand: object) -> list[str]:
    if isinstance(operand, Symbol):
        return [operand.name]
    if isinstance(operand, Address) and isinstance(operand.base, Symbol):
        return [operand.base.name]
    if isinstance(operand, (VectorOperand, BracketList)):
        return [s for e in operand.elements if e is not None for s in symbols_of(e)]
    return []


def check_consistent(module: Module) -> None:
    """Every name a body uses resolves in its function or module: registers to declarations
    (scoped ones renamed), branch targets to labels, memory symbols to variables, call
    operands to .param variables and callees to functions."""
    module_names = {v.name for v in module.variables} | {f.name for f in module.functions}
    for function in module.functions:
        if not function.defined:
            continue
        body = function.body
        declared = {n for s in body if isinstance(s, RegisterDecl) for n in s.names}
        declared |= {p.name for p in function.params + function.returns if p.space == "reg"}
        labels = {s.name for s in body if isinstance(s, Label)}
        variables = {s.name for s in body if isinstance(s, Variable)} | {p.name for p in function.params}
        variables |= {p.name for p in function.returns}
        tables = {s.name for s in body if isinstance(s, (BranchTargets, CallPrototype))}
        assert len(labels) == len([s for s in body if isinstance(s, Label)]), "labels must be unique"
        for table in (s for s in body if isinstance(s, BranchTargets)):
            assert set(table.labels) <= labels
        for ins in instructions(function):
            assert ins.line > 0 and ins.opcode.isidentifier()
            uses = [r for op in ins.operands for r in registers_in(op)]
            if ins.guard is not None:
                assert isinstance(ins.guard, Guard)
                uses.append(ins.guard.register)
            for register in uses:
                assert register.name in declared or register.name.split(".")[0] in declared or \
                    register.name.startswith(SPECIAL_PREFIXES), f"{function.name}: {register} line {ins.line}"
            if ins.opcode == "bra":
                assert ins.operands[0].name in labels
            elif ins.opcode == "brx":
                assert ins.operands[1].name in tables
            elif ins.opcode == "call":
                (targets,) = ins.operands
                assert isinstance(targets, CallTargets)
                for name in targets.returns + targets.arguments:
                    assert not isinstance(name, Symbol) or name.name in variables
                if isinstance(targets.callee, Symbol):
                    assert targets.callee.name in module_names
                if targets.prototype is not None:
                    assert targets.prototype in tables
            else:
                for name in (n for op in ins.operands for n in symbols_of(op)):
                    assert name in variables or name in module_names or name in labels or name == "_", \
                        f"{function.name}: {name} line {ins.line}"


def check_params_match_reader(module: Module, text: str) -> None:
    """The regex-based image reader and the parser agree on every kernel's parameter layout."""
    code = read_ptx(text.encode())
    kernels = {f.name: f for f in module.functions if f.is_kernel}
    assert set(kernels) == set(code.kernels)
    for name, function in kernels.items():
        offsets, _ = param_layout(function.params)
        layout = [(offsets[p.name], p.size) for p in function.params]
        assert layout == [(p.offset, p.size) for p in code.kernels[name].params], name


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("stem", ["basics", "warp", "coop"])
def test_nvcc_output_parses_and_resolves(compiled, stem, arch):
    text = compiled(stem, arch)
    module = parse(text, lazy=False)
    assert module.version >= (8, 0)
    assert module.target == [f"sm_{arch}"] and module.address_size == 64
    check_consistent(module)
    check_params_match_reader(module, text)
    lazy = parse(text)
    assert [f.name for f in lazy.functions] == [f.name for f in module.functions]
    for eager, later in zip(module.functions, lazy.functions):
        assert eager.body == later.body


@pytest.mark.parametrize("arch", ARCHES)
def test_basics_variables_functions_and_calls(compiled, arch):
    module = parse(compiled("basics", arch))
    variables = {v.name: v for v in module.variables}
    counter = variables["counter"]
    assert (counter.space, counter.type, counter.align, counter.dims, counter.initializer) == \
        ("global", "u32", 4, [], None)
    table = variables["table"]
    assert table.size == 16 and table.initializer == [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4]
    # a struct holding a pointer: the address is kept as (Symbol, offset)
    assert variables["entry"].initializer == [7, (Symbol("table"), 8), struct.unpack("<I", struct.pack("<f", 1.5))[0]]
    assert variables["pointers"].initializer == [(Symbol("counter"), 0), (Symbol("table"), 4)]
    coefficients = variables["coefficients"]
    assert coefficients.space == "const"
    assert bytes(coefficients.initializer) == struct.pack("<3f", 1.0, -2.5, 3e-5)
    ratio = variables["ratio"]
    assert ratio.type == "f64" and ratio.initializer == [struct.unpack("<Q", struct.pack("<d", 3.14))[0]]
    dynamic = variables["dynamic"]
    assert (dynamic.space, dynamic.linkage, dynamic.dims, dynamic.size, dynamic.align) == \
        ("shared", "extern", [None], 0, 16)
    strings = [bytes(v.initializer).rstrip(b"\0") for v in module.variables if v.name.startswith("$str")]
    assert b"n=%d ratio=%f first=%f\n" in strings

    by_name = {f.name: f for f in module.functions}
    assert not by_name["vprintf"].defined and by_name["vprintf"].linkage == "extern"
    assert [p.type for p in by_name["vprintf"].params] == ["b64", "b64"]
    assert [r.name for r in by_name["vprintf"].returns] == ["func_retval0"]
    assert not by_name["__assertfail"].defined and len(by_name["__assertfail"].params) == 5

    fib = by_name["_Z3fibi"]
    assert fib.kind == "func" and fib.defined and [r.type for r in fib.returns] == ["b32"]
    assert "_Z3fibi" in [i.operands[0].callee.name for i in instructions(fib, "call")]  # recursion

    kernel = module.function("_Z6basicsPfPKfi")
    assert kernel.is_kernel and kernel.linkage == "visible"
    assert kernel.directives == {"maxntid": (256, 1, 1), "minnctapersm": (2,)}
    assert [(p.space, p.type, p.size) for p in kernel.params] == [("param", "u64", 8)] * 2 + [("param", "u32", 4)]
    body = kernel.body
    shared = [s for s in body if isinstance(s, Variable) and s.space == "shared"]
    assert [(s.name, s.size, s.align) for s in shared] == [("_ZZ6basicsPfPKfiE4tile", 1024, 4)]
    local = [s for s in body if isinstance(s, Variable) and s.space == "local"]
    assert len(local) == 1 and local[0].name.startswith("__local_depot") and local[0].size >= 32
    callees = [i.operands[0].callee.name for i in instructions(kernel, "call")]
    assert {"_Z3fibi", "_Z6scaledfi", "vprintf", "__assertfail"} <= set(callees)
    printf_call = next(i.operands[0] for i in instructions(kernel, "call") if i.operands[0].callee.name == "vprintf")
    assert len(printf_call.arguments) == 2 and len(printf_call.returns) == 1
    # call argument variables live in the call's own { } block: renamed, declared before the call
    params = {s.name: s for s in body if isinstance(s, Variable) and s.space == "param"}
    assert all("$" in a.name and a.name in params for a in printf_call.arguments + printf_call.returns)
    assert len({a.name for i in instructions(kernel, "call") for a in i.operands[0].arguments}) == \
        sum(len(i.operands[0].arguments) for i in instructions(kernel, "call"))
    assert instructions(kernel, "trap") and instructions(kernel, "nanosleep")
    assert any(i.opcode == "bar" and i.modifiers == ("sync",) and i.operands == [Immediate(0)]
               for i in instructions(kernel))
    assert any(i.opcode in ("atom", "red") and "global" in i.modifiers and "add" in i.modifiers and
               isinstance(i.operands[-2 if i.opcode == "atom" else 0], Address) for i in instructions(kernel))
    guarded = [i for i in instructions(kernel) if i.guard is not None]
    assert guarded and all(i.guard.register.name.startswith("%p") for i in guarded)


@pytest.mark.parametrize("arch", ARCHES)
def test_warp_collectives_atomics_half_and_inline_asm(compiled, arch):
    module = parse(compiled("warp", arch))
    kernel = next(f for f in module.functions if f.is_kernel)
    body = kernel.body
    shuffles = instructions(kernel, "shfl")
    assert shuffles and all(i.modifiers[0] == "sync" and i.modifiers[-1] == "b32" for i in shuffles)
    assert {"bfly", "up"} <= {i.modifiers[1] for i in shuffles}
    assert all(isinstance(i.operands[0], PredicatePair) for i in shuffles)
    votes = instructions(kernel, "vote")
    assert {("sync", "ballot", "b32"), ("sync", "all", "pred")} <= {i.modifiers for i in votes}
    assert [i.modifiers for i in instructions(kernel, "match")] == [("any", "sync", "b32")]
    assert len(instructions(kernel, "redux")) == (0 if arch < 80 else 1)
    atomics = [set(i.modifiers) for i in instructions(kernel, "atom")]
    for expected in ({"global", "add", "f32"}, {"global", "cas", "b32"}, {"global", "exch", "b32"}):
        assert any(expected <= found for found in atomics)
    float_add = next(i for i in instructions(kernel, "atom") if i.modifiers == ("global", "add", "f32"))
    assert float_add.operands[2] == Immediate(1.5, 0x3FC00000)
    assert any(i.modifiers == ("rn", "f16", "f32") for i in instructions(kernel, "cvt"))

    # the inline assembly's { } blocks: their registers and label are renamed per block
    loops = [s for s in body if isinstance(s, Label) and s.name.startswith("LOOP$")]
    assert len(loops) == 2 and loops[0].name != loops[1].name
    branches = [i for i in instructions(kernel, "bra") if i.operands[0].name in {l.name for l in loops}]
    assert [b.operands[0].name for b in branches] == [l.name for l in loops]
    for branch, loop in zip(branches, loops):
        assert branch.line > loop.line and branch.guard.register.name.startswith("p$")
    scoped = [n for s in body if isinstance(s, RegisterDecl) for n in s.names if "$" in n]
    assert {b.guard.register.name for b in branches} <= set(scoped)
    assert len(scoped) == len(set(scoped))
    declared_plain = {n.split("$")[0] for n in scoped}
    assert {"p", "t"} <= declared_plain
    for ins in instructions(kernel):  # no use of an unrenamed block-local name survives
        for register in (r for op in ins.operands for r in registers_in(op)):
            assert register.name not in declared_plain


@pytest.mark.parametrize("arch", ARCHES)
def test_cooperative_grid_sync_and_wmma(compiled, arch):
    module = parse(compiled("coop", arch))
    grid_sum = module.function("_Z8grid_sumPiS_")
    moves = [i.operands[1].name for i in instructions(grid_sum, "mov") if isinstance(i.operands[1], Register)]
    assert "%envreg1" in moves and "%envreg2" in moves and "%ctaid.z" in moves
    assert any(i.opcode == "barrier" or (i.opcode == "bar" and "sync" in i.modifiers)
               for i in instructions(grid_sum))
    assert any(i.modifiers[:2] == ("add", "release") for i in instructions(grid_sum, "atom"))
    wmma = module.function("_Z9wmma_tilePK6__halfS1_Pf")
    ops = {(i.modifiers[0], i.modifiers[1]) for i in instructions(wmma, "wmma")}
    assert {("load", "a"), ("load", "b"), ("mma", "sync"), ("store", "d")} <= ops
    mma = next(i for i in instructions(wmma, "wmma") if i.modifiers[0] == "mma")
    assert "m16n16k16" in mma.modifiers
    assert [len(op.elements) for op in mma.operands] == [8, 8, 8, 8]


HAND_WRITTEN = r"""
//
// Generated by LLVM NVPTX Back-End
//

.version 8.4
.target sm_80, debug
.address_size 64

	/* a block comment
	   over lines */
.file	1 "/tmp//kernels.py"
.extern .func  (.param .b32 func_retval0) vprintf(.param .b64 vprintf_param_0, .param .b64 vprintf_param_1);
.global .align 4 .b32 data[4] = {1, 2, 3, 4};
.global .align 8 .u64 table_of_ptrs[3] = {generic(data), generic(data)+8, 0};
.global .align 1 .b8 bytes_of_ptr[4] = {0xFF(generic(data)), 0xFF00(generic(data+4)), 0xFF(1000 + 546), 0xFF00(4660)};
.global .align 8 .u64 fn_and_offsets[3] = {add_one, data-4, generic(data+12)};
.global .align 4 .f32 floats[3] = {0f3F800000, 1.5, -0F40000000};
.global .align 8 .f64 dv = 0d400921FB54442D18;
.global .align 8 .f64 widened[2] = {0f3F800000, -0d4000000000000000};
.global .align 4 .u32 grid[2][3] = {{1, 2, 3}, {4, 5, 6}};
.global .align 1 .b8 unsized[] = {1, 2, 3};
.const .align 4 .u32 numbers[6] = {0x10, 010, 0b11, 42U, -7, 1};
.extern .shared .align 16 .b8 dyn[];
.weak .global .align 4 .u32 weak_var;
.common .global .align 4 .u32 common_var;
.global .attribute(.managed) .align 4 .u32 managed_var;
.shared .align 8 .v2 .f32 pair;
.global .texref tex;

.func (.param .b32 func_retval0) add_one(
	.param .b32 add_one_param_0
)
.noreturn
{
	.reg .b32 	%r<3>;

	ld.param.u32 	%r1, [add_one_param_0];
	add.s32 	%r2, %r1, 1;
	st.param.b32 	[func_retval0+0], %r2;
	ret;
}

.func old_style(.reg .b32 %a, .reg .b32 %b)
{
	ret;
}

.section	.debug_abbrev
{
.b8 1
.b8 17
.b8 0
}

.visible .entry kern(
	.param .u64 .ptr .global .align 16 kern_param_0,
	.param .align 8 .b8 kern_param_1[24],
	.param .u32 kern_param_2
)
.reqntid 128, 1, 1
.maxnreg 64
{
	.reg .pred 	%p<4>;
	.reg .b16 	%rs<3>;
	.reg .b32 	%r<30>;
	.reg .b64 	%rd<10>;
	.reg .f32 	%f<4>;
	.reg .f64 	%fd<2>;
	.pragma "nounroll";

	.loc	1 10 0
$L__func_begin0:
	ld.param.u64 	%rd1, [kern_param_0];
	ld.param.u32 	%r1, [kern_param_1+16];
	mov.u32 	%r2, %tid.x;
	mov.u32 	%r3, %ctaid.y;
	mov.u32 	%r4, %laneid;
	mov.u32 	%r5, %lanemask_lt;
	mov.u64 	%rd2, %clock64;
	mov.u64 	%rd3, %globaltimer;
	mov.u32 	%r6, %envreg3;
	mov.u32 	%r7, %smid;
	mov.u32 	%r8, %nsmid;
	mov.u32 	%r9, %dynamic_smem_size;
	mov.u32 	%r10, %total_smem_size;
	mov.u32 	%r11, WARP_SZ;
	ld.global.nc.L1::no_allocate.L2::128B.v4.f32 	{%f0, %f1, _, %f3}, [%rd1+-4];
	ld.global.u32 	%r12, [data+8];
	ld.u32 	%r13, [0x100];
	ld.shared.v2.f32 	{%f0, %f1}, [pair];
	mov.f64 	%fd1, 0d3FF0000000000000;
	mov.f32 	%f2, 0F3F800000;
	add.u32 	%r14, %r13, 0x10;
	add.u32 	%r15, %r14, 0b101;
	add.u32 	%r16, %r15, 017;
	add.u32 	%r17, %r16, 42U;
	add.s32 	%r18, %r17, -7;
	setp.lt.s32 	%p1|%p2, %r1, %r2;
	setp.eq.and.s32 	%p3, %r1, 0, !%p1;
	@!%p1 bra 	$L__BB0_3;
	cp.async.cg.shared.global.L2::128B 	[%r2], [%rd1], 16;
	cvt.rn.ftz.sat.f16.f32 	%rs1, %f1;
	atom.global.add.noftz.f16 	%rs2, [%rd1], %rs1;
	mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 	{%f0, %f1, %f2, %f3}, {%r1, %r2, %r3, %r4}, {%r5, %r6}, {%f0, %f1, %f2, %f3};
	fence.proxy.async::generic.acquire.sync_restrict::shared::cluster;
	tex.2d.v4.f32.f32 	{%f0, %f1, %f2, %f3}, [tex, {%f1, %f2}];
	brx.idx 	%r2, $L_brx_0;
$L_brx_0: .branchtargets
	$L__BB0_1,
	$L__BB0_2,
	$L__BB0_3;
$L__BB0_1:
	{ // callseq 0, 0
	.reg .b32 temp_param_reg;
	.param .b32 param0;
	st.param.b32 	[param0+0], %r2;
	.param .b32 retval0;
	call.uni (retval0),
	add_one,
	(
	param0
	);
	ld.param.b32 	%r19, [retval0+0];
	}
$L__BB0_2:
	{
	.reg .b64 %tmp;
	.param .b32 param0;
	.param .b32 retval0;
	prototype_1 : .callprototype (.param .b32 _) _ (.param .b32 _);
	mov.u64 	%tmp, add_one;
	call (retval0), %tmp, (param0), prototype_1;
	{
	.reg .b64 %tmp;
	mov.u64 	%tmp, 1;
	}
	add.u64 	%rd4, %tmp, 1;
	}
$L__BB0_3:
	mbarrier.arrive.expect_tx.shared::cta.b64 	_, [%r2], 16;
	@%p3 ret;
	exit;
}
"""


def test_lazy_module_survives_pickling_and_threads():
    module = pickle.loads(pickle.dumps(parse(HAND_WRITTEN)))  # what a worker process receives
    bodies: list = []
    threads = [threading.Thread(target=lambda: bodies.append(module.function("kern").body)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(bodies) == 4 and all(b is bodies[0] for b in bodies)
    assert bodies[0] == parse(HAND_WRITTEN, lazy=False).function("kern").body


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_hand_written_llvm_style_module(newline):
    module = parse(HAND_WRITTEN.replace("\n", newline), lazy=False)
    assert module.version == (8, 4) and module.target == ["sm_80", "debug"]
    check_consistent(module)
    check_params_match_reader(module, HAND_WRITTEN)
    v = {x.name: x for x in module.variables}
    assert v["table_of_ptrs"].initializer == [(Symbol("data"), 0), (Symbol("data"), 8), 0]
    assert v["bytes_of_ptr"].initializer == [(Symbol("data"), 0, 0xFF), (Symbol("data"), 4, 0xFF00), 0x0A, 0x12]
    assert initial_bytes(v["bytes_of_ptr"], {"data": 0x11223344}.__getitem__) == bytes([0x44, 0x33, 0x0A, 0x12])
    assert v["fn_and_offsets"].initializer == [(Symbol("add_one"), 0), (Symbol("data"), -4), (Symbol("data"), 12)]
    assert v["floats"].initializer == [0x3F800000, 1.5, 0xC0000000]
    assert initial_bytes(v["floats"], {}.__getitem__) == struct.pack("<3f", 1.0, 1.5, -2.0)
    assert v["dv"].initializer == [0x400921FB54442D18]
    assert v["widened"].initializer == [1.0, 0xC000000000000000]  # an f32 literal of an f64 is its value
    assert v["grid"].dims == [2, 3] and v["grid"].initializer == [1, 2, 3, 4, 5, 6] and v["grid"].size == 24
    assert v["unsized"].dims == [3] and v["unsized"].size == 3
    assert v["numbers"].initializer == [16, 8, 3, 42, -7, 1]
    assert (v["weak_var"].linkage, v["common_var"].linkage) == ("weak", "common")
    assert v["managed_var"].attributes == ("managed",)
    assert (v["pair"].vector, v["pair"].size) == (2, 8)
    assert v["tex"].type == "texref"

    add_one = module.function("add_one")
    assert add_one.directives == {"noreturn": ()}
    assert [(r.name, r.type) for r in add_one.returns] == [("func_retval0", "b32")]
    old_style = module.function("old_style")
    assert [(p.space, p.name) for p in old_style.params] == [("reg", "%a"), ("reg", "%b")]

    kern = module.function("kern")
    assert kern.directives == {"reqntid": (128, 1, 1), "maxnreg": (64,)}
    p0, p1, p2 = kern.params
    assert (p0.type, p0.ptr_space, p0.ptr_align, p0.align) == ("u64", "global", 16, None)
    assert (p1.type, p1.align, p1.dims, p1.size) == ("b8", 8, [24], 24)
    assert param_layout(kern.params) == ({"kern_param_0": 0, "kern_param_1": 8, "kern_param_2": 32}, 36)
    body = kern.body
    assert Pragma("nounroll") in body
    by_line = {i.line: i for i in instructions(kern)}
    first = HAND_WRITTEN.splitlines().index("\tld.param.u64 \t%rd1, [kern_param_0];") + 1
    assert by_line[first].operands == [Register("%rd1"), Address(Symbol("kern_param_0"))]

    def at(text: str) -> Instruction:
        return by_line[HAND_WRITTEN.splitlines().index(text) + 1]

    specials = [i.operands[1].name for i in instructions(kern, "mov")[1:12]]
    assert specials == ["%ctaid.y", "%laneid", "%lanemask_lt", "%clock64", "%globaltimer", "%envreg3", "%smid",
                        "%nsmid", "%dynamic_smem_size", "%total_smem_size", "WARP_SZ"]
    assert all(isinstance(i.operands[1], Register) for i in instructions(kern, "mov")[:12])
    load = at("\tld.global.nc.L1::no_allocate.L2::128B.v4.f32 \t{%f0, %f1, _, %f3}, [%rd1+-4];")
    assert load.modifiers == ("global", "nc", "L1::no_allocate", "L2::128B", "v4", "f32")
    assert load.operands == [VectorOperand((Register("%f0"), Register("%f1"), None, Register("%f3"))),
                             Address(Register("%rd1"), -4)]
    assert at("\tld.global.u32 \t%r12, [data+8];").operands[1] == Address(Symbol("data"), 8)
    assert at("\tld.u32 \t%r13, [0x100];").operands[1] == Address(None, 0x100)
    assert at("\tmov.f64 \t%fd1, 0d3FF0000000000000;").operands[1] == Immediate(1.0, 0x3FF0000000000000)
    assert at("\tmov.f32 \t%f2, 0F3F800000;").operands[1] == Immediate(1.0, 0x3F800000)
    immediates = [i.operands[2] for i in instructions(kern, "add")[:5]]
    assert immediates == [Immediate(16), Immediate(5), Immediate(15), Immediate(42), Immediate(-7)]
    setp = instructions(kern, "setp")
    assert setp[0].operands[0] == PredicatePair(Register("%p1"), Register("%p2"))
    assert setp[1].modifiers == ("eq", "and", "s32") and setp[1].operands[3] == Negated(Register("%p1"))
    branch = instructions(kern, "bra")[0]
    assert branch.guard == Guard(Register("%p1"), True) and branch.operands == [Symbol("$L__BB0_3")]
    assert instructions(kern, "cp")[0].modifiers == ("async", "cg", "shared", "global", "L2::128B")
    assert instructions(kern, "cvt")[0].modifiers == ("rn", "ftz", "sat", "f16", "f32")
    assert instructions(kern, "atom")[0].modifiers == ("global", "add", "noftz", "f16")
    mma = instructions(kern, "mma")[0]
    assert mma.modifiers == ("sync", "aligned", "m16n8k16", "row", "col", "f32", "f16", "f16", "f32")
    assert [len(o.elements) for o in mma.operands] == [4, 4, 2, 4]
    assert instructions(kern, "fence")[0].modifiers == ("proxy", "async::generic", "acquire",
                                                        "sync_restrict::shared::cluster")
    assert instructions(kern, "tex")[0].operands[1] == BracketList(
        (Symbol("tex"), VectorOperand((Register("%f1"), Register("%f2")))))
    brx = instructions(kern, "brx")[0]
    assert brx.operands == [Register("%r2"), Symbol("$L_brx_0")]
    tables = [s for s in body if isinstance(s, BranchTargets)]
    assert tables == [BranchTargets("$L_brx_0", ["$L__BB0_1", "$L__BB0_2", "$L__BB0_3"])]
    assert "$L_brx_0" not in [s.name for s in body if isinstance(s, Label)]

    direct, indirect = instructions(kern, "call")
    assert direct.modifiers == ("uni",)
    assert direct.operands == [CallTargets((Symbol("retval0$1"),), Symbol("add_one"), (Symbol("param0$1"),))]
    prototype = next(s for s in body if isinstance(s, CallPrototype))
    assert prototype.name == "prototype_1$2"
    assert [(p.type, p.name) for p in prototype.returns + prototype.params] == [("b32", "_"), ("b32", "_")]
    assert indirect.operands == [CallTargets((Symbol("retval0$2"),), Register("%tmp$2"), (Symbol("param0$2"),),
                                             "prototype_1$2")]
    # a block inside a block: the inner %tmp is another register, the outer one is seen again after it
    inner, after = at("\tmov.u64 \t%tmp, 1;"), at("\tadd.u64 \t%rd4, %tmp, 1;")
    assert inner.operands[0] == Register("%tmp$3") and after.operands[1] == Register("%tmp$2")
    assert at("\tmov.u64 \t%tmp, add_one;").operands == [Register("%tmp$2"), Symbol("add_one")]
    assert instructions(kern, "mbarrier")[0].operands == [Symbol("_"), Address(Register("%r2")), Immediate(16)]
    assert instructions(kern)[-2].guard == Guard(Register("%p3")) and instructions(kern)[-1].opcode == "exit"


def test_bodies_are_parsed_on_first_access():
    text = (".version 8.0\n.target sm_80\n.address_size 64\n"
            ".visible .entry bad()\n{\n\tret\n}\n"
            ".visible .entry good()\n{\n\tret;\n}\n")
    module = parse(text)
    assert [f.name for f in module.functions] == ["bad", "good"]
    assert module.functions[0].defined  # known without parsing the body
    assert module.function("good").body == [Instruction("ret", (), [], None, 10)]
    for _ in range(2):  # a body that does not parse stays a body: the error comes again
        with pytest.raises(PtxSyntaxError, match=r"line 6: expected ';'"):
            module.functions[0].body
    assert module.functions[0].defined
    with pytest.raises(PtxSyntaxError, match="line 6"):
        parse(text, lazy=False)


HEAD = ".version 8.0\n.target sm_80\n.address_size 64\n"


@pytest.mark.parametrize("text, line, expected", [
    ("", 1, "expected .version"),
    (".target sm_80\n", 1, "expected .version"),
    (HEAD + ".visible .entry k()\n{\n\tadd.s32 %r1, %r2, %r3\n}\n", 6, "expected ';'"),
    (HEAD + ".visible .entry k()\n{\n\tret;\n", 5, "expected '}'"),
    (HEAD + ".visible .entry k()\n{\n\t.reg .b33 %r<2>;\n}\n", 6, "expected .reg .type"),
    (HEAD + ".visible .entry k()\n{\n\t.reg .b32 %r<2>;\n\tmov.u32 %r1, 0x;\n}\n", 7, "expected a number"),
    (HEAD + ".visible .entry k()\n{\n\t.reg .b32 %r<2>;\n\tld.u32 %r1, [%r2;\n}\n", 7, "expected ']'"),
    (HEAD + ".visible .entry k()\n{\n\t{\n\tret;\n}\n", 5, "expected '}'"),
    (HEAD + ".visible .entry k()\n{\n\tret;\n\t}\n\t}\n}\n", 8, "found '}' without a matching"),
    (HEAD + ".global .align 4 .u32 x = {1, , 2};\n", 4, "expected an initialiser value"),
    (HEAD + ".global .align 4 x;\n", 4, "expected a state space and a type"),
    (HEAD + "\n\n.bogus 1;\n", 6, "expected a directive"),
    (HEAD + ".visible .entry k()\n.maxntid 1,1,1 .wrong\n{\n\tret;\n}\n", 4, "expected a performance directive"),
    (HEAD + ".visible .entry k()\n{\n\tmov.u32 %r1, @@;\n}\n", 6, "expected an operand"),
    (HEAD + ".visible .entry k()\n{\n\tcall.uni (a), f, (b), 1x;\n}\n", 6, "expected a call prototype"),
    (HEAD + ".visible .entry k()\n{\n\t.branchtargets $L1;\n}\n", 6, "expected a label before"),
])
def test_malformed_ptx_names_the_line(text, line, expected):
    with pytest.raises(PtxSyntaxError, match=f"line {line}: {expected}") as raised:
        parse(text, lazy=False)
    assert raised.value.line == line and "\n" not in str(raised.value)


def test_damaged_ptx_raises_only_syntax_errors():
    """Random deletions, insertions and repeats in valid PTX: each text parses or raises
    PtxSyntaxError with one line; no other exception escapes the parser."""
    rng = random.Random(13)
    for _ in range(1500):
        text = HAND_WRITTEN
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(text))
            change = rng.randrange(3)
            if change == 0:
                text = text[:at] + text[at + 1:]
            elif change == 1:
                text = text[:at] + rng.choice(";{}[]()%.,@!-0xf_|<>:= \n\"") + text[at:]
            else:
                text = text[:at] + text[at:at + rng.randint(1, 20)] + text[at:]
        try:
            parse(text, lazy=False)
        except PtxSyntaxError as error:
            assert "\n" not in str(error) and error.line >= 1
