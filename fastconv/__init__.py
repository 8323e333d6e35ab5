"""fastconv: hand-written convolution, pooling and fused conv+bias+ReLU kernels for PyTorch.

    import fastconv
    y = fastconv.functional.conv2d(x, w, b, padding="same")      # like F.conv2d
    layer = fastconv.nn.Conv2dReLU(64, 64, 3, padding=1)          # like nn.Conv2d + nn.ReLU, fused
    fastconv.convert(model)                                       # switch an existing model, in place
    fastconv.optimize(model.eval(), example)                      # fold BatchNorm, fuse epilogues (fx)
    torch.compile(model, backend="fastconv")                      # the same on dynamo's graph + Inductor
    fastconv.info()                                               # what is built and available
    fastconv.explain.explain(model, x, "gradcam")                 # heatmaps: Grad-CAM, saliency, SmoothGrad
    fastconv.export.to_onnx(model, (x,), "model.onnx")            # standard ONNX ops (docs/deployment.md)
"""
from . import backends, functional, nn, ops  # noqa: F401
from .backends import get_backend, set_backend, use_backend
from .convert import convert
from .errors import ArgumentError, ArgumentTypeError
from .info import info
from .version import __version__

__all__ = [
    "functional", "nn", "ops", "backends", "convert", "optimize", "OptimizeError", "info", "set_backend",
    "get_backend", "use_backend", "ArgumentError", "ArgumentTypeError", "__version__", "export", "explain",
]


def __getattr__(name):
    # fastconv.fusion (torch.fx rewrites, the model zoo's layer types) loads on first use: `import fastconv`
    # stays as fast as the kernels' own modules.
    if name in ("optimize", "OptimizeError", "fusion"):
        import importlib

        fusion = importlib.import_module(f"{__name__}.fusion")
        return fusion if name == "fusion" else getattr(fusion, name)
    if name == "explain":  # Grad-CAM / saliency (fastconv/explain.py), also loaded on first use
        import importlib

        return importlib.import_module(f"{__name__}.explain")
    if name == "export":  # ONNX translations (imports torch.onnx): on first use too
        import importlib

        return importlib.import_module(f"{__name__}.export")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
