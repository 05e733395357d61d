"""Kernels compute: the PTX applications ship is parsed (``ptx``), lowered to LLVM IR and
compiled for the host CPU (``lower``), and run as a grid of CTAs whose threads execute as
warps of 32 lanes (``runtime``)."""
