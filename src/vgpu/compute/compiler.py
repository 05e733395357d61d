"""LLVM IR to host machine code with llvmlite: one optimised relocatable object per kernel."""

from __future__ import annotations

import ctypes
import functools
import threading

import llvmlite
import llvmlite.binding as llvm
from llvmlite import ir

#: part of every cache key: code from another code generator is not reused
COMPILER_ID = f"llvmlite-{llvmlite.__version__}-llvm-{'.'.join(map(str, llvm.llvm_version_info))}"


_per_thread = threading.local()


def target_machine() -> llvm.TargetMachine:
    """The compiler's target: this host's CPU, one per thread (vgpud compiles kernels on several
    threads at once, and LLVM does not promise that one target machine serves two at a time; an
    engine gets one of its own)."""
    machine = getattr(_per_thread, "machine", None)
    if machine is None:
        machine = _per_thread.machine = new_target_machine()
    return machine


def new_target_machine() -> llvm.TargetMachine:
    """A target machine of its own: an execution engine owns (and frees) the one it is given."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
                                        opt=3, reloc="pic", codemodel="default")


def host_id() -> str:
    """What the object code depends on besides its source: compiler and CPU."""
    return f"{COMPILER_ID}-{llvm.get_host_cpu_name()}-{llvm.get_host_cpu_features().flatten()}"


#: the optimisation passes, in order.  The lowering's IR is vector code already (a warp's lanes
#: are vector lanes), so the loop and SLP vectorisers and unrolling of -O3 only cost time: this
#: list compiles the benchmark's kernels 2.4 times faster than -O3's pipeline, and the code runs
#: as fast or faster (docs/benchmarks.md).  Registers become SSA values (sroa), the warp
#: function is inlined into the CTA loop, constants and redundant loads fold away.
PASSES = ("always_inliner", "sroa", "instruction_combine", "simplify_cfg", "sccp", "new_gvn",
          "dead_store_elimination", "instruction_combine", "simplify_cfg", "aggressive_dce")


def optimise(module: ir.Module) -> llvm.ModuleRef:
    machine = target_machine()
    parsed = llvm.parse_assembly(str(module))
    parsed.triple = machine.triple
    parsed.data_layout = str(machine.target_data)
    parsed.verify()
    builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=2))
    passes = llvm.create_new_module_pass_manager()
    for name in PASSES:
        getattr(passes, f"add_{name}_pass")()
    passes.run(parsed, builder)
    return parsed


def compile_object(module: ir.Module) -> bytes:
    """Optimised machine code for this host, as an ELF relocatable object."""
    return target_machine().emit_object(optimise(module))


#: C library functions compiled kernels call (scratch memory, %globaltimer)
RUNTIME_SYMBOLS = ("malloc", "free", "clock_gettime")


@functools.cache
def load_engine_symbols() -> None:
    """Make the C library functions kernels call known to the JIT's linker."""
    libc = ctypes.CDLL(None)
    for name in RUNTIME_SYMBOLS:
        llvm.add_symbol(name, ctypes.cast(getattr(libc, name), ctypes.c_void_p).value)


def load_object(object_code: bytes, entry: str) -> tuple[llvm.ExecutionEngine, int]:
    """Load an object into an engine of its own: the engine (keep it alive) and the entry's address."""
    load_engine_symbols()
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), new_target_machine())
    engine.add_object_file(llvm.ObjectFileRef.from_data(object_code))
    engine.finalize_object()
    return engine, engine.get_function_address(entry)
