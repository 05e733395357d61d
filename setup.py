"""Build the native libraries with the package: generate their C from the API
manifests (vgpu.api.gen_c), then compile it with the system C compiler.

The libraries are declared as setuptools Extensions so that regular and editable
installs both place them in src/vgpu/_native/; they are plain shared libraries,
not Python modules, hence the custom file names and link flags.
"""

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent
GENERATED = ROOT / "build" / "generated"
NATIVE_FILES = {"vgpu._native.libvgpu-nvml": "libvgpu-nvml.so"}
_BY_LAST_PART = {name.rsplit(".", 1)[1]: file for name, file in NATIVE_FILES.items()}


def nvml_include_dir() -> str:
    import nvidia  # the nvidia-nvml-dev build requirement

    for root in nvidia.__path__:
        for header in sorted(Path(root).glob("*/include/nvml.h")):
            return str(header.parent)
    raise RuntimeError("nvml.h not found: the build needs nvidia-nvml-dev (see pyproject.toml)")


class BuildNative(build_ext):
    def run(self):
        sys.path.insert(0, str(ROOT / "src"))
        from vgpu.api import gen_c

        gen_c.main([str(GENERATED)])
        for ext in self.extensions:
            ext.include_dirs.append(nvml_include_dir())
        super().run()

    def get_ext_filename(self, fullname):
        # setuptools asks with the full dotted name and, when placing the file, the last part alone
        parts = fullname.split(".")
        if parts[-1] in _BY_LAST_PART:
            return os.path.join(*parts[:-1], _BY_LAST_PART[parts[-1]])
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext):
        return []  # not a Python module: no PyInit_ symbol


nvml = Extension(
    "vgpu._native.libvgpu-nvml",
    sources=[
        "native/common/transport.c",
        "native/common/marshal.c",
        "native/nvml/nvml_shim.c",
        str(GENERATED.relative_to(ROOT) / "nvml_generated.c"),
    ],
    include_dirs=["native/common", "native/nvml", str(GENERATED.relative_to(ROOT))],
    extra_compile_args=["-O2", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    # nodelete: clients such as Ollama dlclose the library after each query; thread-exit
    # destructors and published-answer mappings must outlive that.
    extra_link_args=["-Wl,-soname,libnvidia-ml.so.1", "-Wl,-z,defs", "-Wl,-z,nodelete", "-lpthread"],
)

setup(ext_modules=[nvml], cmdclass={"build_ext": BuildNative})
