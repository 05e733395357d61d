"""Evidence about how applications find their GPU libraries: what a library file is, which
processes have which GPU libraries mapped."""
