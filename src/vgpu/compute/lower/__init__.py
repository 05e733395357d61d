"""PTX syntax to LLVM IR: a warp's 32 lanes are LLVM vectors (``lanes``); what each lane-wise
instruction computes is registered per opcode (``registry``, filled by ``ops``)."""
