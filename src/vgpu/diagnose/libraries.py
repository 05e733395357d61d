"""What a GPU library file really is, read from the file itself (pyelftools), not its name.

>>> identify(Path("/usr/lib/x86_64-linux-gnu/libc.so.6")).kind    # doctest: +SKIP
'other'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

#: the driver libraries vgpu stands in for
DRIVER_SONAMES = ("libcuda.so.1", "libnvidia-ml.so.1")
#: file names of GPU libraries worth showing: the drivers, and what loads them
GPU_LIBRARY = re.compile(r"lib(cuda|nvidia-ml|vgpu-cuda|vgpu-nvml|cudart|cublas|cublasLt|ggml-cuda)\b[^/]*\.so")


@dataclass(frozen=True)
class LibraryIdentity:
    path: str
    soname: str | None
    #: "vgpu" (one of ours), "driver" (a driver library that is not vgpu's: NVIDIA's, most
    #: likely), "runtime" (cudart, cuBLAS, ggml), "unreadable" or "other"
    kind: str
    #: vgpu's identity string ("vgpu libvgpu-cuda.so 0.1.0") for kind "vgpu"
    detail: str = ""


@lru_cache(maxsize=512)
def identify(path: Path) -> LibraryIdentity:
    """Read a library's SONAME and vgpu's identity section."""
    try:
        with open(path, "rb") as handle:
            elf = ELFFile(handle)
            soname = None
            for section in elf.iter_sections():
                if isinstance(section, DynamicSection):
                    soname = next((t.soname for t in section.iter_tags() if t.entry.d_tag == "DT_SONAME"), None)
            marker = elf.get_section_by_name(".vgpu")
            detail = marker.data().rstrip(b"\0").decode(errors="replace") if marker is not None else ""
    except (OSError, ELFError) as error:
        return LibraryIdentity(str(path), None, "unreadable", str(error))
    if detail.startswith("vgpu "):
        kind = "vgpu"
    elif soname in DRIVER_SONAMES or path.name.startswith(("libcuda.so", "libnvidia-ml.so")):
        kind = "driver"
    elif GPU_LIBRARY.search(path.name):
        kind = "runtime"
    else:
        kind = "other"
    return LibraryIdentity(str(path), soname, kind, detail)
