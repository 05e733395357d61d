"""GPU code images as the driver receives them: fat binaries, cubins and PTX.

``read_image`` turns the bytes a client hands to ``cuModuleLoadData`` or
``cuLibraryLoadData`` into a :class:`CodeImage` (every piece of code it holds),
and :meth:`CodeImage.module_for` picks what a device of a given architecture
would run, as the driver does: its own cubin, else a compatible older cubin,
else PTX it would compile.

>>> image = read_image(open("kernels.fatbin", "rb").read())
>>> module = image.module_for(90)
>>> module.kernels["_Z3addPfS_i"].params
[Param(offset=0, size=8), Param(offset=8, size=8), Param(offset=16, size=4)]
"""

from vgpu.images.model import CodeImage, Global, ImageError, Kernel, ModuleCode, NoBinaryForGpu, Param, PtxTooNew
from vgpu.images.reader import image_size, read_image

__all__ = ["CodeImage", "Global", "ImageError", "Kernel", "ModuleCode", "NoBinaryForGpu", "Param", "PtxTooNew",
           "image_size", "read_image"]
