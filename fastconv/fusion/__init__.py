"""Whole-network fusion: fastconv.optimize(model, example_inputs) and the torch.compile backend "fastconv".

    optimized = fastconv.optimize(model.eval(), example)          # torch.fx rewrite, eager inference
    compiled = torch.compile(model, backend="fastconv")           # dynamo graph rewrite + Inductor

Both fold eval-mode BatchNorm into the preceding convolution and fuse the activation and residual add
that follow into one fastconv conv2d_epilogue call (patterns.py); docs/fusion.md describes them.
compile_backend is imported on first use (it imports torch._dynamo); importing it registers the
backend name, which the package's "torch_dynamo_backends" entry point also does for an installed
fastconv.
"""
from __future__ import annotations

from .modules import FUSED_CONTAINER, FusedConv2d, OptimizedModule
from .optimize import FusedConv, FusionTracer, OptimizeError, OptimizeReport, optimize

__all__ = ["optimize", "OptimizeError", "OptimizeReport", "FusedConv", "FusedConv2d", "OptimizedModule",
           "FusionTracer", "FUSED_CONTAINER", "fastconv_backend"]


def __getattr__(name):
    if name == "fastconv_backend":
        from .compile_backend import fastconv_backend

        return fastconv_backend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
