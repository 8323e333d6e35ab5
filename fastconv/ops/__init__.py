"""The custom-op layer (torch.library): importing this package registers every fastconv op.

Layers, as design.md describes: backends (raw launchers, no autograd) -> these ops (autograd, fake
implementations for torch.compile) -> fastconv.functional (torch-compatible argument handling) ->
fastconv.nn (modules).
"""
from . import conv1d, conv2d, conv2d_fused, conv_transpose, pool2d  # noqa: F401  (registration side effects)
