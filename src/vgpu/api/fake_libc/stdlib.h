/* Just enough of libc for pycparser to read NVIDIA headers (vgpu.api.extract). */
typedef unsigned long size_t;
