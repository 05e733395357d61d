/* The NVML shim's hand-written core, shared with the generated stubs. */
#pragma once
#include "marshal.h"

#define VGPU_EXPORT __attribute__((visibility("default")))

extern const char vgpu_nvml_digest[];
extern const unsigned vgpu_nvml_op_base;
extern const unsigned vgpu_nvml_op_count;

const char *vgpu_nvml_error_text(int code);
/* Run one generated stub's call through vgpud, with NVML's answers for every failure. */
int vgpu_nvml_dispatch(const vgpu_function *fn, void *const *args);
