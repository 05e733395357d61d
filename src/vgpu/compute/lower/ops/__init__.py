"""Lane-wise PTX instruction semantics, one module per family; importing this package
registers every opcode in ``registry.SEMANTICS``."""

from vgpu.compute.lower.ops import bits, comparison, conversion, floating, integer

__all__ = ["bits", "comparison", "conversion", "floating", "integer"]
