"""The custom-op layer (torch.library): importing this package registers every fastconv op.

Layers, as design.md describes: backends (raw launchers, no autograd) -> these ops (autograd, fake
implementations for torch.compile) -> fastconv.functional (torch-compatible argument handling) ->
fastconv.nn (modules).
"""
from . import conv2d, conv2d_fused, pool2d  # noqa: F401  (registration side effects)
from . import pool_adaptive  # noqa: F401  (adaptive pooling, issue #30)
