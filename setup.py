"""Build the native libraries with the package: generate their C from the API
manifests (vgpu.api.gen_c), then compile it with the system C compiler.

The libraries are declared as setuptools Extensions so that regular and editable
installs both place them in src/vgpu/_native/; they are plain shared libraries,
not Python modules, hence the custom file names and link flags.
"""

import os
import sys
import tomllib
from glob import glob
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
GENERATED = ROOT / "build" / "generated"
NATIVE_FILES = {"vgpu._native.libvgpu-nvml": "libvgpu-nvml.so", "vgpu._native.libvgpu-cuda": "libvgpu-cuda.so",
                "vgpu._native.libvgpu-audit": "libvgpu-audit.so"}
_BY_LAST_PART = {name.rsplit(".", 1)[1]: file for name, file in NATIVE_FILES.items()}


def include_dir(header: str) -> str:
    """The folder of an NVIDIA header from the build requirements' wheels."""
    import nvidia  # nvidia-nvml-dev and nvidia-cuda-runtime, build requirements

    for root in nvidia.__path__:
        for found in sorted(Path(root).glob(f"*/include/{header}")):
            return str(found.parent)
    raise RuntimeError(f"{header} not found: the build needs NVIDIA's wheels (see pyproject.toml)")


class BuildNative(build_ext):
    def run(self):
        sys.path.insert(0, str(ROOT / "src"))
        from vgpu.api import gen_c

        gen_c.main([str(GENERATED)])
        for ext in self.extensions:
            if ext.name.endswith("audit"):
                continue
            ext.include_dirs.extend(include_dir(h) for h in ("nvml.h", "cuda.h"))
        super().run()

    def get_ext_filename(self, fullname):
        # setuptools asks with the full dotted name and, when placing the file, the last part alone
        parts = fullname.split(".")
        if parts[-1] in _BY_LAST_PART:
            return os.path.join(*parts[:-1], _BY_LAST_PART[parts[-1]])
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext):
        return []  # not a Python module: no PyInit_ symbol


def shim(api: str, soname: str) -> Extension:
    """One driver library: the shared transport, the API's core, its generated stubs."""
    generated = str(GENERATED.relative_to(ROOT))
    return Extension(
        f"vgpu._native.libvgpu-{api}",
        sources=["native/common/transport.c", "native/common/marshal.c", *sorted(glob(f"native/{api}/*.c")),
                 f"{generated}/{api}_generated.c"],
        include_dirs=["native/common", f"native/{api}", generated],
        extra_compile_args=["-O2", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        define_macros=[("VGPU_PACKAGE_VERSION", f'"{VERSION}"')],
        # nodelete: clients such as Ollama dlclose the library after each query; thread-exit
        # destructors and published-answer mappings must outlive that.
        extra_link_args=[f"-Wl,-soname,{soname}", "-Wl,-z,defs", "-Wl,-z,nodelete", "-lpthread"],
    )


def audit() -> Extension:
    """The loader-audit library of `vgpu trace` (LD_AUDIT): libc only, no NVIDIA headers."""
    return Extension(
        "vgpu._native.libvgpu-audit",
        sources=["native/audit/audit.c"],
        extra_compile_args=["-O2", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        extra_link_args=["-Wl,-soname,libvgpu-audit.so", "-Wl,-z,defs"],
    )


setup(ext_modules=[shim("nvml", "libnvidia-ml.so.1"), shim("cuda", "libcuda.so.1"), audit()],
      cmdclass={"build_ext": BuildNative})
