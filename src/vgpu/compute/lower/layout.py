"""Where a module's variables live when its kernels run.

- ``.global`` and ``.const`` variables are device memory: their addresses come from the
  launch's symbol table (``Launch.symbols[i]``), in ``globals_`` order.
- ``.shared`` variables get offsets in a CTA's shared block, in declaration order with their
  alignment; unsized ``extern .shared`` arrays all start where the static ones end (16-byte
  aligned): that is the dynamic shared memory.
- ``.local`` variables of a function get offsets in its frame on each lane's stack.
- a kernel's ``.param`` list is packed with natural (or declared) alignment, as the driver
  packs ``kernelParams``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vgpu.compute.ptx.syntax import Function, Module, Variable


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def _alignment(variable: Variable) -> int:
    return variable.align or variable.element_size


@dataclass
class ModuleLayout:
    #: .global/.const variables with storage, in symbol-table order
    globals_: list[Variable] = field(default_factory=list)
    #: name -> index into the launch's symbol table
    symbol_index: dict[str, int] = field(default_factory=dict)
    #: name -> offset in the CTA's shared block
    shared_offset: dict[str, int] = field(default_factory=dict)
    static_shared: int = 0
    #: where dynamic shared memory starts
    dynamic_shared_offset: int = 0

    @classmethod
    def of(cls, module: Module, kernel: Function | None = None) -> ModuleLayout:
        """The layout for running ``kernel``: the module's variables, and the shared variables
        declared in the kernel's own body (other functions' bodies are not read)."""
        layout = cls()
        for variable in module.variables:
            if variable.space in ("global", "const"):
                layout.symbol_index[variable.name] = len(layout.globals_)
                layout.globals_.append(variable)
        at = 0
        dynamic = []
        shared = [v for v in module.variables if v.space == "shared"]
        if kernel is not None:
            shared += [s for s in kernel.body or [] if isinstance(s, Variable) and s.space == "shared"]
        for variable in shared:
            if variable.size == 0 and variable.dims and variable.dims[0] is None:
                dynamic.append(variable)
                continue
            at = align_up(at, _alignment(variable))
            layout.shared_offset[variable.name] = at
            at += variable.size
        layout.static_shared = at
        layout.dynamic_shared_offset = align_up(at, 16)
        for variable in dynamic:
            layout.shared_offset[variable.name] = layout.dynamic_shared_offset
        return layout


#: the least stack a device function's activation takes (a GPU keeps the return address there
#: too): runaway recursion exhausts the stack and fails the launch instead of the host's stack
MIN_FRAME = 16


def local_frame(function: Function) -> tuple[dict[str, int], int]:
    """Offsets of a function's ``.local`` variables in its frame, and the frame's size (at
    least MIN_FRAME for a device function)."""
    offsets, at = {}, 0
    for statement in function.body or []:
        if isinstance(statement, Variable) and statement.space == "local":
            at = align_up(at, _alignment(statement))
            offsets[statement.name] = at
            at += max(statement.size, 1)
    return offsets, max(align_up(at, 16), 0 if function.is_kernel else MIN_FRAME)


def param_layout(params: list[Variable]) -> tuple[dict[str, int], int]:
    """Offsets of parameters in a packed parameter buffer, and its size."""
    offsets, at = {}, 0
    for param in params:
        at = align_up(at, _alignment(param))
        offsets[param.name] = at
        at += param.size
    return offsets, at


def function_ids(module: Module) -> dict[str, int]:
    """The number each device function's address is (what ``mov.u64 %rd, func`` gives and an
    indirect call compares): its place among the module's defined device functions, from 1."""
    defined = [f for f in module.functions if f.defined and not f.is_kernel]
    return {function.name: index + 1 for index, function in enumerate(defined)}
