"""torch.compile(model, backend="fastconv"): dynamo's graph with fused fastconv convolutions, the rest to Inductor.

    compiled = torch.compile(model, backend="fastconv")

Dynamo hands the backend an FX graph of torch functions (nn modules inlined; parameters and buffers are
graph inputs). fastconv_backend rewrites every torch.conv2d in it into a fastconv custom op, with the
chain that patterns.match_chain accepts fused into the call:

- inference (grad disabled, F.batch_norm with training=False): BatchNorm folded, then the activation
  and the residual add: torch.ops.fastconv.conv2d_fused (or ::conv2d / ::conv2d_relu where that is
  all there is);
- training (or eval-mode BatchNorm with grad enabled): a BatchNorm in training mode stays torch's, so
  only an activation / residual add fed directly by the conv is fused; eval-mode BatchNorm under
  autograd becomes the op's per-channel scale and shift, computed in the graph (vectors only), so
  gradients reach its parameters. The ops' registered autograd gives AOTAutograd their backward (our
  dgrad / wgrad kernels, the epilogue's derivative).

and hands the graph to Inductor (torch._inductor.compile_fx.compile_fx), which compiles everything else
as usual and calls the fastconv ops as extern kernels.

Folding at inference needs the parameter values, which are graph inputs. FOLD = "cached" (default)
folds outside the graph: the folded weight and bias become extra graph inputs, computed when first
needed and again only when a source tensor has been replaced, moved or written in place (checked on
every call from identities, version counters and data pointers: 1.5 us per folded conv). FOLD =
"graph" computes W * s in the graph on every call instead (Inductor's freezing, when enabled,
constant-folds it): one more pass over every folded weight per call, 6-8 ms for resnet50's 53 folds
with torch's ops on 2 threads, 12% of its batch-1 forward (docs/fusion.md).

The backend registers as "fastconv" when this module is imported; an installed fastconv also declares
it in the "torch_dynamo_backends" entry point group, so torch.compile finds it without an import.
fastconv.fusion.compile_backend.stats counts the fused patterns (and torch._dynamo.utils.counters
["fastconv"] does too).
"""
from __future__ import annotations

import collections
import logging
import operator
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor
from torch.fx import Node

from .. import ops  # noqa: F401  (registers torch.ops.fastconv.*)
from ..ops.conv2d_fused import mask_backward_ok
from .patterns import GraphView, arg, fold_bn, graph_order, match_chain, sources_key

log = logging.getLogger("fastconv")

FOLD = "cached"  # or "graph" (see the module docstring)
stats: collections.Counter = collections.Counter()

_CONV_FUNCTIONS = (torch.conv2d,)  # F.conv2d is torch.conv2d
_BN_FUNCTIONS = (F.batch_norm,)
_DEVICES = ("cpu", "cuda")


def _example(node: Any) -> Any:
    return node.meta.get("example_value") if isinstance(node, Node) else None


def _conv_params(node: Node) -> Optional[Tuple[list, list, list, int]]:
    """(stride, padding, dilation, groups) normalized for the fastconv ops (symmetric padding), or None
    when the call is one the ops do not take as it is (asymmetric 'same' padding, symbolic values)."""
    weight = _example(arg(node, 1, "weight"))
    stride, padding = arg(node, 3, "stride", 1), arg(node, 4, "padding", 0)
    dilation, groups = arg(node, 5, "dilation", 1), arg(node, 6, "groups", 1)

    def pair(v):
        v = [v, v] if isinstance(v, int) else list(v)
        v = v * 2 if len(v) == 1 else v
        return v if len(v) == 2 and all(type(e) is int for e in v) else None

    stride, dilation = pair(stride), pair(dilation)
    if stride is None or dilation is None or type(groups) is not int:
        return None
    if padding == "valid":
        padding = [0, 0]
    elif padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
        if any(t % 2 for t in total) or stride != [1, 1]:
            return None
        padding = [t // 2 for t in total]
    else:
        padding = pair(padding)
        if padding is None:
            return None
    return stride, padding, dilation, groups


class DynamoView(GraphView):
    """match_chain on a dynamo graph: torch functions, values' fake tensors in node.meta['example_value']."""

    def is_conv(self, node: Node) -> bool:
        if node.op != "call_function" or node.target not in _CONV_FUNCTIONS:
            return False
        x, w = _example(node.args[0]) if node.args else None, _example(arg(node, 1, "weight"))
        if not isinstance(x, Tensor) or not isinstance(w, Tensor) or x.dim() != 4 or w.dim() != 4:
            return False
        if not x.is_floating_point() or w.dtype != x.dtype or x.device.type not in _DEVICES:
            return False
        bias = arg(node, 2, "bias")
        if bias is not None and not isinstance(bias, Node):
            return False
        return _conv_params(node) is not None

    def batch_norm(self, node: Node) -> Tuple[bool, str]:
        if node.op != "call_function" or node.target not in _BN_FUNCTIONS:
            return False, ""
        training = arg(node, 5, "training", False)
        if training is not False:
            return False, "BatchNorm in training mode"
        if not isinstance(arg(node, 1, "running_mean"), Node) or not isinstance(arg(node, 2, "running_var"), Node):
            return False, "BatchNorm without running statistics"
        return True, ""

    def meta(self, node: Any):
        value = _example(node)
        return (tuple(value.shape), value.dtype) if isinstance(value, Tensor) else None

    def same_shape(self, a, b) -> bool:
        from torch.fx.experimental.symbolic_shapes import statically_known_true

        return len(a) == len(b) and all(statically_known_true(x == y) for x, y in zip(a, b))


# --------------------------------------------------------------------------------------------------
# Folding


def _bn_scale_shift(bias, running_mean, running_var, gamma, beta, eps: float):
    """The eval BatchNorm after a conv as a per-channel scale and shift (traced into the graph)."""
    scale = torch.rsqrt(running_var + eps)
    if gamma is not None:
        scale = scale * gamma
    shift = (-running_mean if bias is None else bias - running_mean) * scale
    if beta is not None:
        shift = shift + beta
    return scale, shift


def _fold_in_graph(weight, bias, running_mean, running_var, gamma, beta, eps: float):
    return fold_bn(weight, bias, running_mean, running_var, gamma, beta, eps, exact=False)


class _Fold:
    """One BatchNorm folded outside the graph: where its sources are among the compiled function's
    arguments (graph inputs) or attributes of the graph module."""

    def __init__(self, getters: List[Callable[[Sequence[Any]], Optional[Tensor]]], eps: float):
        self.getters = getters
        self.eps = eps
        self.key: Optional[Tuple] = None
        self.value: Tuple[Tensor, Tensor] = ()

    def __call__(self, args: Sequence[Any]) -> Tuple[Tensor, Tensor]:
        sources = [g(args) for g in self.getters]
        key = sources_key(sources)
        if key != self.key:
            with torch.no_grad():
                value = fold_bn(*sources, eps=self.eps)
                if not (self.value and all(_same_layout(a, b) and not a.is_inference()
                                           for a, b in zip(self.value, value))):
                    self.value = value
                else:
                    for old, new in zip(self.value, value):  # a refold keeps the inputs' addresses
                        old.copy_(new)
            self.key = key
        return self.value


def _same_layout(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and a.stride() == b.stride()


def _getter(gm: torch.fx.GraphModule, node: Any, placeholders: dict):
    """A function of the call's arguments that returns node's value, or None when node is computed in the
    graph (then the fold cannot happen outside it)."""
    if node is None:
        return lambda args: None
    if not isinstance(node, Node):
        return None
    if node.op == "placeholder":
        index = placeholders[node]
        return lambda args: args[index]
    if node.op == "get_attr":
        target = node.target
        return lambda args: _attr(gm, target)
    return None


def _attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------------------------------
# Rewrite


def rewrite(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Tuple[List[_Fold], List[Tensor]]:
    """Rewrites gm's convolutions in place; returns the outside folds (each adds two trailing graph
    inputs: folded weight, folded bias) and their values for example_inputs."""
    graph = gm.graph
    inference = not torch.is_grad_enabled()
    view = DynamoView()
    order, position = graph_order(graph)
    placeholders = {n: i for i, n in enumerate(n for n in order if n.op == "placeholder")}
    last_input = [n for n in order if n.op == "placeholder"][-1] if placeholders else None
    folds: List[_Fold] = []
    examples: List[Tensor] = []
    # last conv first, as optimize() does: the main branch of a residual block takes the add
    for conv in reversed(order):
        if getattr(conv, "_erased", False) or not view.is_conv(conv):
            continue
        m = match_chain(view, conv, position, order)
        x, weight, bias = conv.args[0], arg(conv, 1, "weight"), arg(conv, 2, "bias")
        stride, padding, dilation, groups = _conv_params(conv)
        scale = None
        with graph.inserting_before(m.last):
            if m.bn is not None:
                bn = m.bn
                sources = [weight, bias, arg(bn, 1, "running_mean"), arg(bn, 2, "running_var"),
                           arg(bn, 3, "weight"), arg(bn, 4, "bias")]
                eps = float(arg(bn, 7, "eps", 1e-5))
                getters = [_getter(gm, s, placeholders) for s in sources]
                if not inference:
                    ss = graph.call_function(_bn_scale_shift, (*sources[1:], eps))
                    scale = graph.call_function(operator.getitem, (ss, 0))
                    bias = graph.call_function(operator.getitem, (ss, 1))
                elif FOLD == "cached" and all(g is not None for g in getters):
                    fold = _Fold(getters, eps)
                    folds.append(fold)
                    examples.extend(fold(example_inputs))
                    with graph.inserting_after(last_input):
                        weight = graph.placeholder(f"fastconv_folded_weight_{len(folds) - 1}")
                    with graph.inserting_after(weight):
                        bias = graph.placeholder(f"fastconv_folded_bias_{len(folds) - 1}")
                    for ph, value in ((weight, examples[-2]), (bias, examples[-1])):
                        # what AOTAutograd expects of a dynamo graph input: a source (none: not from
                        # user code) and, as for parameters, a static input (a fixed address between calls)
                        ph._dynamo_source = None
                        ph.meta["example_value"] = _fake(value)
                        ph.meta["tensor_dict"] = {"_dynamo_static_input_type": "unguarded"}
                    last_input = bias
                else:
                    folded = graph.call_function(_fold_in_graph, (*sources, eps))
                    weight = graph.call_function(operator.getitem, (folded, 0))
                    bias = graph.call_function(operator.getitem, (folded, 1))
            fused = _emit(graph, m, x, weight, bias, scale, stride, padding, dilation, groups, inference)
        fused.meta.update({k: v for k, v in m.last.meta.items() if k != "example_value"})
        fused.meta["example_value"] = m.last.meta.get("example_value")
        m.last.replace_all_uses_with(fused)
        for n in reversed(m.nodes):
            graph.erase_node(n)
        stats[m.pattern] += 1
        _dynamo_counters()[m.pattern] += 1
    graph.lint()
    gm.recompile()
    return folds, examples


def _emit(graph: torch.fx.Graph, m, x, weight, bias, scale, stride, padding, dilation, groups,
          inference: bool) -> Node:
    act = m.activation
    if scale is None and m.residual is None and act in ("none", "relu"):
        op = torch.ops.fastconv.conv2d_relu.default if act == "relu" else torch.ops.fastconv.conv2d.default
        return graph.call_function(op, (x, weight, bias, stride, padding, dilation, groups))
    return_conv = not inference and not mask_backward_ok(act, scale is not None, m.residual_after)
    out = graph.call_function(torch.ops.fastconv.conv2d_fused.default,
                              (x, weight, bias, scale, m.residual, stride, padding, dilation, groups, act,
                               m.residual_after, return_conv))
    return graph.call_function(operator.getitem, (out, 0))


def _fake(t: Tensor):
    mode = torch._guards.detect_fake_mode()
    return mode.from_tensor(t, static_shapes=True) if mode is not None else t


def _dynamo_counters():
    from torch._dynamo.utils import counters

    return counters["fastconv"]


# --------------------------------------------------------------------------------------------------
# The backend


def fastconv_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], **kwargs: Any):
    """A torch.compile backend: fastconv's fused convolutions in dynamo's graph, Inductor for the rest."""
    from torch._inductor.compile_fx import compile_fx

    gm = _copy(gm)  # dynamo reads its own graph's placeholders after the backend returns: leave it intact
    folds, extra = rewrite(gm, example_inputs)
    log.debug("fastconv compile backend: rewritten graph\n%s", gm.code)
    if not folds:
        return compile_fx(gm, example_inputs, **kwargs)
    compiled = compile_fx(gm, list(example_inputs) + extra, **kwargs)

    # compile_fx's result takes positional arguments, as dynamo calls it (its _boxed_call attribute is
    # copied from the inner function and does not describe it)
    def run(*args):
        full = list(args)
        for fold in folds:
            full.extend(fold(args))
        return compiled(*full)

    return run


def _copy(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """gm with a copy of its graph: the same submodules, attributes and meta, placeholders that keep
    dynamo's `_dynamo_source` (AOTAutograd reads it)."""
    graph = torch.fx.Graph(tracer_cls=gm.graph._tracer_cls)
    graph.set_codegen(gm.graph._codegen)
    copies: dict = {}
    graph.output(graph.graph_copy(gm.graph, copies))
    for old, new in copies.items():
        if hasattr(old, "_dynamo_source"):
            new._dynamo_source = old._dynamo_source
    out = torch.fx.GraphModule(gm, graph, gm.__class__.__name__)
    for key, value in gm.__dict__.items():
        if key not in out.__dict__:
            out.__dict__[key] = value
    out.meta.update(gm.meta)
    return out


def register() -> None:
    """Registers fastconv_backend as torch.compile's backend "fastconv" (once)."""
    from torch._dynamo.backends import registry

    if "fastconv" not in registry._COMPILER_FNS:
        registry.register_backend(fastconv_backend, name="fastconv")


register()
