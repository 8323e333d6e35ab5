"""The modules fastconv.optimize builds: FusedConv2d (one conv call with its epilogue) and OptimizedModule
(the rewritten fx graph over the original module tree).

State dict. An optimized model keeps the original module tree, unchanged in names and order, with every
parameter and buffer where it was: `layer1.0.conv1.weight`, `layer1.0.bn1.running_mean`, ... The graph
calls the fused modules, kept in one container, `fastconv_fused`, whose only tensors are the folded
weight and bias as non-persistent buffers. So `optimized.state_dict()` has exactly the original model's
keys and values, `optimized.load_state_dict(sd)` takes the original's state dict, and modules of the
tree that the graph no longer calls (a folded BatchNorm, a fused ReLU) still compute what they did if
called directly.

Folding. A FusedConv2d reads its conv's and BatchNorm's tensors through references (not submodules,
so they appear once in the state dict) and folds them when first called, again whenever one of them
has been replaced, moved or written in place (load_state_dict, an optimizer step, .to()): each call
compares the sources' identities, versions and data pointers with those of the last fold, a few
microseconds. Under autograd (grad enabled and a source requiring grad) nothing is cached: the call
passes the conv's own weight and the BatchNorm as a per-channel scale and shift computed in the call
(conv2d_epilogue's scale), so gradients reach the original parameters; under a tracer (torch.jit.trace,
torch.export) the same, so the traced graph computes the fold from the parameters it holds; with the
BatchNorm in training mode (optimized.train()) the call runs conv, BatchNorm and the epilogue unfused,
with torch's semantics.
"""
from __future__ import annotations

import copy
from typing import Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as FC
from ..ops.conv2d_fused import ACTIVATIONS
from .patterns import fold_bn, sources_key

FUSED_CONTAINER = "fastconv_fused"


class FusedConv2d(nn.Module):
    """act(conv(x) folded with its BatchNorm [+ residual]) [+ residual], one fastconv conv2d_epilogue call.

    conv: the nn.Conv2d (torch's or fastconv's) whose weight and bias are used; bn: the eval-mode
    BatchNorm2d folded into them, or None; activation: a conv2d_epilogue activation name; residual:
    'none', 'before' (added before the activation) or 'after'. forward(x) or forward(x, residual).
    conv_name / bn_name: their paths in the model, for repr and the report.
    """

    def __init__(self, conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d], activation: str = "none",
                 residual: str = "none", conv_name: str = "", bn_name: str = ""):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"FusedConv2d: activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
        if residual not in ("none", "before", "after"):
            raise ValueError(f"FusedConv2d: residual must be 'none', 'before' or 'after', got {residual!r}")
        # References, not submodules: the tensors stay where the model has them (one state_dict entry each).
        self.__dict__["conv"] = conv
        self.__dict__["bn"] = bn
        self.activation = activation
        self.residual = residual
        self.conv_name = conv_name
        self.bn_name = bn_name
        self.register_buffer("weight", None, persistent=False)
        self.register_buffer("bias", None, persistent=False)
        self._folded_from: Optional[Tuple] = None
        self._folded: Tuple = (None, None, None)  # the buffers, outside nn.Module's attribute lookup

    def _sources(self):
        """(conv weight, conv bias, running_mean, running_var, bn weight, bn bias), read straight from the
        modules' dicts (this runs on every call) unless they are not there (a parametrized weight)."""
        try:
            cp, bp, bb = self.conv._parameters, self.bn._parameters, self.bn._buffers
            return cp["weight"], cp["bias"], bb["running_mean"], bb["running_var"], bp["weight"], bp["bias"]
        except KeyError:
            conv, bn = self.conv, self.bn
            return conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias

    def folded(self) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """(weight, bias, scale) the convolution runs with: the BatchNorm folded into weight and bias
        (cached), or, under autograd, the conv's own weight with the BatchNorm as a per-channel scale and
        shift computed in the call (differentiable, and no folded copy of the weight per call)."""
        conv, bn = self.conv, self.bn
        if bn is None:
            return conv.weight, conv.bias, None
        sources = self._sources()
        # Under a tracer (torch.jit.trace, torch.export / torch.compile) the in-call form too: the cached
        # fold is a first-call path (the first call folds, later ones read the cache), so a traced graph
        # would depend on the call count and on the grad mode (jit.trace's check, a retrace under no_grad,
        # found two different graphs), and the cache key reads data pointers, which fake tensors lack.
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or (
                torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in sources)):
            weight, bias, mean, var, gamma, beta = sources
            scale = torch.rsqrt(var + bn.eps)
            if gamma is not None:
                scale = scale * gamma
            shift = (-mean if bias is None else bias - mean) * scale
            if beta is not None:
                shift = shift + beta
            return weight, shift, scale
        key = sources_key(sources)
        if key != self._folded_from:
            with torch.no_grad():
                self.weight, self.bias = fold_bn(*sources, eps=bn.eps)
            self._folded_from = key
            self._folded = (self.weight, self.bias, None)
        return self._folded

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        conv, bn = self.conv, self.bn
        if bn is not None and bn.training:
            return self._unfused(input, residual)
        weight, bias, scale = self.folded()
        padding = conv.padding
        if conv.padding_mode != "zeros":
            input = F.pad(input, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
            padding = 0
        return FC.conv2d_epilogue(input, weight, bias, conv.stride, padding, conv.dilation, conv.groups,
                                  scale=scale, activation=self.activation, residual=residual,
                                  residual_after_activation=self.residual == "after")

    def _unfused(self, input: Tensor, residual: Optional[Tensor]) -> Tensor:
        """conv, BatchNorm (training mode: batch statistics, running stats updated), epilogue: torch's
        semantics for a model put back in training mode."""
        conv = self.conv
        if conv.padding_mode != "zeros":
            input = F.pad(input, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
            y = FC.conv2d(input, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
        else:
            y = FC.conv2d(input, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        y = self.bn(y)
        if residual is not None and self.residual == "before":
            y = y + residual
        y = ACTIVATIONS[self.activation][0](y)
        if residual is not None and self.residual == "after":
            y = y + residual
        return y

    def extra_repr(self) -> str:
        parts = [f"conv={self.conv_name or type(self.conv).__name__}"]
        if self.bn is not None:
            parts.append(f"bn={self.bn_name or 'BatchNorm2d'} (folded)")
        if self.activation != "none":
            parts.append(f"activation={self.activation}")
        if self.residual != "none":
            parts.append(f"residual={self.residual}")
        return ", ".join(parts)


class OptimizedModule(torch.fx.GraphModule):
    """A GraphModule whose submodules are the original model's whole tree (plus `fastconv_fused`).

    torch.fx.GraphModule keeps only the submodules its graph calls, and its deepcopy and pickling
    rebuild it that way; this subclass keeps every module (so the state dict stays the original's)
    through both. `fastconv_report` is the optimize() report.
    """

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("fastconv.optimize made this model for inference (BatchNorm folded, dropout removed); "
                               "train the original model, or compile it with torch.compile(model, "
                               "backend='fastconv'), which keeps BatchNorm in training mode")
        return super().train(False)

    def __deepcopy__(self, memo):
        res = type(self).__new__(type(self))
        memo[id(self)] = res
        state = copy.deepcopy(self.__dict__, memo)
        res.__dict__.update(state)
        res.recompile()
        return res

    def __reduce__(self):
        # GraphModule pickles its code and re-traces it on load, keeping only the modules the code calls;
        # here the whole tree is restored around the re-traced graph.
        rebuild, (body, import_block) = super().__reduce__()
        return (_rebuild_optimized_module, (rebuild, body, import_block))


def _rebuild_optimized_module(rebuild, body, import_block):
    traced = rebuild(dict(body), import_block)
    obj = OptimizedModule.__new__(OptimizedModule)
    obj.__dict__.update(body)
    obj.graph = traced.graph  # sets the owning module and recompiles
    return obj
