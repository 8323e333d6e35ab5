"""fastconv.optimize(model, example_inputs): an eval-mode model rewritten for inference with fused convolutions.

    optimized = fastconv.optimize(model.eval(), torch.randn(1, 3, 224, 224))
    optimized.fastconv_report          # what was fused, what was not and why

Steps: trace the model with torch.fx (FusionTracer: torch.nn and fastconv.nn layers are leaves); run the
trace once on the example inputs to learn every value's shape; for each convolution module, match the
longest chain patterns.match_chain accepts (BatchNorm folded, activation, residual add) and replace it by
one FusedConv2d call; switch the remaining torch Conv2d / MaxPool2d / AvgPool2d modules to fastconv's, as
fastconv.convert() does; leave every other node as it is. With check=True the result is run on the
example inputs next to the original, and a difference beyond float tolerance raises OptimizeError
naming the first fused node that differs on its own inputs: the caller never gets a model that
computes something else.

A model that torch.fx cannot trace (Python control flow on tensor values, ...) is optimized per child
module: each child the example run calls is traced with the inputs it received, recursively where it
does not trace either, and a warning names the modules left as they are and why. When no part traces,
OptimizeError says so. State dict: see modules.py (the original's keys and tensors, unchanged).
"""
from __future__ import annotations

import collections
import copy
import inspect
import logging
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx import Node
from torch.utils import _pytree as pytree

from .. import nn as fnn
from ..convert import MEMORY_FORMATS, set_layout
from ..models.imagenet.blocks import stochastic_depth
from ..models.layers import GlobalAvgPool2d, TorchConv2dReLU
from .modules import FUSED_CONTAINER, FusedConv2d, OptimizedModule
from .patterns import GraphView, activation_of_call, activation_of_module, arg, graph_order, match_chain, may_mutate

log = logging.getLogger("fastconv")

# What optimize() switches to fastconv's kernels when it does not fuse it (fastconv.convert's table, and
# the models' torch Conv2d+ReLU module).
_REPLACEMENTS = {nn.Conv2d: fnn.Conv2d, nn.MaxPool2d: fnn.MaxPool2d, nn.AvgPool2d: fnn.AvgPool2d,
                 TorchConv2dReLU: fnn.Conv2dReLU}
_CONVS = (nn.Conv2d, fnn.Conv2d)  # exact types a chain starts from (others may override forward)
_BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)
_LEAVES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, GlobalAvgPool2d)
# modules whose output is a new tensor (never a view of their input): aliasing in patterns.match_chain
_FRESH_MODULES = (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                  nn.Linear, nn.LayerNorm, GlobalAvgPool2d, FusedConv2d)

# check=True: |optimized - original| <= ATOL * max|original| + RTOL * |original|, per output tensor.
# Folding BatchNorm and fastconv's kernels change the rounding only; a wrong fusion is off by O(1).
RTOL = 1e-3
ATOL = 1e-4


class OptimizeError(RuntimeError):
    """fastconv.optimize could not produce a model that computes what the original does."""


class FusionTracer(torch.fx.Tracer):
    """torch.fx's tracer, with every Conv2d / pool module (torch's, fastconv's, subclasses) and the
    fastconv.nn layers as leaves: fastconv's functional layer checks that its inputs are tensors, which
    fx proxies are not, and a conv module must stay one call_module node for the rewrite to see it."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _LEAVES) or type(m).__module__ == fnn.__name__:
            return True
        return super().is_leaf_module(m, module_qualified_name)


# --------------------------------------------------------------------------------------------------
# Report


@dataclass
class FusedConv:
    conv: str            # the conv's path in the model
    bn: Optional[str]    # the folded BatchNorm's path
    pattern: str         # 'conv+bn+add+relu', ...
    node: str            # the FusedConv2d's name in fastconv_fused


@dataclass
class OptimizeReport:
    """What optimize() did: fused convs, convs left unfused (and why), modules switched to fastconv's,
    submodules optimized one by one and those left as they are (and why)."""

    fused: List[FusedConv] = field(default_factory=list)
    unfused: Dict[str, str] = field(default_factory=dict)
    converted: collections.Counter = field(default_factory=collections.Counter)
    removed: collections.Counter = field(default_factory=collections.Counter)
    submodules: List[str] = field(default_factory=list)
    untraced: Dict[str, str] = field(default_factory=dict)

    @property
    def patterns(self) -> collections.Counter:
        return collections.Counter(f.pattern for f in self.fused)

    @property
    def folded_bn(self) -> int:
        return sum(f.bn is not None for f in self.fused)

    def summary(self) -> str:
        lines = [f"fastconv.optimize: {len(self.fused)} convs fused ({self.folded_bn} BatchNorms folded), "
                 f"{len(self.unfused)} left unfused"]
        for pattern, n in sorted(self.patterns.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {n:4d}  {pattern}")
        reasons = collections.Counter(self.unfused.values())
        for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {n:4d}  conv unfused: {reason}")
        if self.converted:
            lines.append("  switched to fastconv: " + ", ".join(f"{n} {t}" for t, n in sorted(self.converted.items())))
        if self.removed:
            lines.append("  removed (the identity in eval mode): " +
                         ", ".join(f"{n} {t}" for t, n in sorted(self.removed.items())))
        if self.submodules:
            lines.append(f"  traced per submodule: {', '.join(self.submodules)}")
        for name, reason in self.untraced.items():
            lines.append(f"  left as it is: {name or '<model>'} ({reason})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# --------------------------------------------------------------------------------------------------
# The graph view of a traced module


class ModuleView(GraphView):
    """match_chain on a torch.fx symbolic trace: modules are call_module nodes, shapes from a run."""

    def __init__(self, modules: Dict[str, nn.Module]):
        self.modules = modules

    def is_conv(self, node: Node) -> bool:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            return False
        m = self.modules[node.target]
        return type(m) in _CONVS and m.weight.is_floating_point()

    def batch_norm(self, node: Node) -> Tuple[bool, str]:
        if node.op != "call_module" or type(self.modules[node.target]) not in _BATCH_NORMS:
            return False, ""
        bn = self.modules[node.target]
        if bn.training:
            return False, f"{node.target}: BatchNorm in training mode"
        if bn.running_mean is None or bn.running_var is None:
            return False, f"{node.target}: BatchNorm without running statistics (track_running_stats=False)"
        return True, ""

    def activation(self, node: Node) -> Optional[str]:
        if node.op == "call_module":
            return activation_of_module(self.modules[node.target])
        return activation_of_call(node)

    def meta(self, node: Any):
        return node.meta.get("fusion_meta") if isinstance(node, Node) else None

    def mutated(self, node: Node):
        return may_mutate(node, self.modules)

    def fresh(self, node: Node) -> bool:
        if node.op == "call_module":
            m = self.modules.get(node.target)
            return isinstance(m, _FRESH_MODULES) and not getattr(m, "inplace", False) or \
                activation_of_module(m) is not None and not getattr(m, "inplace", False)
        return super().fresh(node)

    def describe(self, node: Node) -> str:
        if node.op == "call_module":
            return f"{type(self.modules[node.target]).__name__} {node.target}"
        return super().describe(node)


_DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)


def _stochastic_depth_functions() -> tuple:
    fns = [stochastic_depth]
    tv = sys.modules.get("torchvision.ops.stochastic_depth")
    if tv is not None and hasattr(tv, "stochastic_depth"):
        fns.append(tv.stochastic_depth)
    return tuple(fns)


def _drop_eval_identities(graph: torch.fx.Graph, modules: Dict[str, nn.Module], report: OptimizeReport) -> None:
    """Removes the nodes that return their input unchanged in eval mode (nn.Identity, dropout, stochastic
    depth), so that a chain such as conv -> BatchNorm -> StochasticDepth -> add fuses."""
    depth = _stochastic_depth_functions()
    for n in list(graph.nodes):
        kind = None
        if n.op == "call_module" and len(n.args) == 1 and not n.kwargs:
            m = modules[n.target]
            if type(m) is nn.Identity or (isinstance(m, nn.modules.dropout._DropoutNd) and not m.training):
                kind = type(m).__name__
        elif n.op == "call_function" and n.target in _DROPOUT_FUNCTIONS and arg(n, 2, "training", True) is False:
            kind = n.target.__name__
        elif n.op == "call_function" and n.target in depth and arg(n, 3, "training", True) is False:
            kind = "stochastic_depth"
        if kind is not None and isinstance(n.args[0], Node):
            n.replace_all_uses_with(n.args[0])
            graph.erase_node(n)
            report.removed[kind] += 1


class _Recorder(torch.fx.Interpreter):
    """Runs a traced module, recording each node's (shape, dtype); keeps every value when asked."""

    def __init__(self, module: torch.fx.GraphModule, keep: bool = False):
        super().__init__(module, garbage_collect_values=not keep)
        self.meta: Dict[str, Tuple[Tuple, torch.dtype]] = {}

    def run_node(self, n: Node) -> Any:
        value = super().run_node(n)
        if isinstance(value, Tensor):
            self.meta[n.name] = (tuple(value.shape), value.dtype)
        return value


class _Untraceable(Exception):
    pass


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# --------------------------------------------------------------------------------------------------
# Rewrite of one traced module


@dataclass
class _Traced:
    module: OptimizedModule
    original: torch.fx.GraphModule          # the trace before the rewrite, for locating a mismatch
    renamed: Dict[str, str]                 # fused node name -> the original chain's last node
    fused_nodes: List[str]


def _trace(root: nn.Module, args: Sequence[Any]) -> Tuple[torch.fx.GraphModule, Dict]:
    """root's fx trace and each node's (shape, dtype), from a run on fake tensors (shapes only, no
    arithmetic) or, where fake tensors do not get through (data-dependent code), on the real inputs."""
    tracer = FusionTracer()
    try:
        graph = tracer.trace(root)
        traced = torch.fx.GraphModule(tracer.root, graph, type(root).__name__)
    except Exception as exc:  # whatever stops fx: TraceError, TypeError or AttributeError on a proxy, ...
        raise _Untraceable(_reason(exc)) from exc
    recorder = _Recorder(traced)
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True) as mode:
            recorder.run(*[mode.from_tensor(a) if isinstance(a, Tensor) else a for a in args])
    except Exception:
        recorder = _Recorder(traced)
        try:
            with torch.no_grad():
                recorder.run(*args)
        except Exception as exc:
            raise _Untraceable(f"the traced graph does not run: {_reason(exc)}") from exc
    return traced, recorder.meta


def _optimize_traced(root: nn.Module, args: Sequence[Any], report: OptimizeReport, prefix: str) -> _Traced:
    traced, meta = _trace(root, args)
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(traced.graph, {}))
    for n in graph.nodes:
        n.meta["fusion_meta"] = meta.get(n.name)
        if isinstance(n.type, str):  # a postponed annotation ('Tensor'): GraphModule cannot pickle its code
            n.type = None
    modules = dict(root.named_modules())
    _drop_eval_identities(graph, modules, report)
    view = ModuleView(modules)
    order, position = graph_order(graph)

    container = nn.Module()
    renamed: Dict[str, str] = {}
    fused_nodes: List[str] = []
    fused_report: List[FusedConv] = []
    unfused_report: List[Tuple[str, str]] = []
    # Last conv first: where a residual add joins two conv branches (a ResNet block with a downsample
    # projection), the later conv - the block's main branch - takes the add.
    for node in reversed(order):
        if getattr(node, "_erased", False) or not view.is_conv(node):
            continue
        m = match_chain(view, node, position, order)
        conv_path = prefix + node.target
        if not m.fused:
            unfused_report.append((conv_path, m.stop or "nothing to fuse"))
            continue
        key = node.target.replace(".", "_")
        while key in container._modules:
            key += "_"
        bn = modules[m.bn.target] if m.bn is not None else None
        residual = "none" if m.residual is None else ("after" if m.residual_after else "before")
        fused = FusedConv2d(modules[node.target], bn, m.activation, residual, conv_name=conv_path,
                            bn_name=(prefix + m.bn.target) if m.bn is not None else "")
        container.add_module(key, fused)
        modules[f"{FUSED_CONTAINER}.{key}"] = fused
        call_args = (node.args[0],) if m.residual is None else (node.args[0], m.residual)
        with graph.inserting_before(m.last):
            new = graph.call_module(f"{FUSED_CONTAINER}.{key}", call_args)
        new.meta = dict(m.last.meta)
        m.last.replace_all_uses_with(new)
        for n in reversed(m.nodes):
            graph.erase_node(n)
        renamed[new.name] = m.last.name
        fused_nodes.append(new.name)
        fused_report.append(FusedConv(conv_path, (prefix + m.bn.target) if m.bn is not None else None,
                                      m.pattern, f"{FUSED_CONTAINER}.{key}"))
    graph.lint()
    fused_nodes.reverse()
    report.fused.extend(reversed(fused_report))
    report.unfused.update(reversed(unfused_report))

    # Kernels: the remaining torch conv / pool modules become fastconv's (class switch, same tensors).
    called = {n.target for n in graph.nodes if n.op == "call_module"}
    for name, module in modules.items():
        target = _REPLACEMENTS.get(type(module))
        if target is not None:
            module.__class__ = target
            if name in called:
                report.converted[target.__name__] += 1

    return _Traced(_graph_module(root, graph, container), traced, renamed, fused_nodes)


def _graph_module(root: nn.Module, graph: torch.fx.Graph, container: nn.Module) -> OptimizedModule:
    """An OptimizedModule running `graph` whose submodules are root's whole tree, in root's order, then
    the fused modules; root's own parameters, buffers and plain attributes are kept."""
    def resolve(target: str):
        obj = container if target.startswith(FUSED_CONTAINER + ".") else root
        for part in (target.split(".")[1:] if obj is container else target.split(".")):
            obj = getattr(obj, part)
        return obj

    targets = {n.target: resolve(n.target) for n in graph.nodes if n.op in ("call_module", "get_attr")}
    gm = OptimizedModule(targets, graph, type(root).__name__)
    gm._modules = collections.OrderedDict(root._modules)
    if container._modules:
        gm._modules[FUSED_CONTAINER] = container
    gm._parameters = collections.OrderedDict(root._parameters)
    gm._buffers = collections.OrderedDict(root._buffers)
    gm._non_persistent_buffers_set = set(root._non_persistent_buffers_set)
    for name, value in vars(root).items():  # plain attributes (num_classes, a tensor constant, ...)
        if not name.startswith("_") and name != "training" and not hasattr(gm, name):
            gm.__dict__[name] = value
    gm.training = root.training
    return gm


# --------------------------------------------------------------------------------------------------
# Per-submodule fallback


@dataclass
class _Fallback:
    traced: int = 0
    untraced: Dict[str, str] = field(default_factory=dict)
    leaves: List[Tuple[nn.Module, type]] = field(default_factory=list)


def _child_inputs(module: nn.Module, args: Sequence[Any]) -> Dict[str, Tuple]:
    """The positional inputs each direct child received first when module ran on args."""
    seen: Dict[str, Tuple] = {}

    def hook(name, child, a, kw):
        if name not in seen:
            try:
                bound = inspect.signature(child.forward).bind(*a, **kw)
                bound.apply_defaults()
                seen[name] = tuple(bound.arguments.values())
            except (TypeError, ValueError):
                seen[name] = None
        return None

    handles = [child.register_forward_pre_hook(lambda c, a, kw, name=name: hook(name, c, a, kw), with_kwargs=True)
               for name, child in module.named_children()]
    try:
        with torch.no_grad():
            module(*args)
    finally:
        for h in handles:
            h.remove()
    return seen


def _optimize_children(module: nn.Module, args: Sequence[Any], report: OptimizeReport, prefix: str,
                       state: _Fallback, check: bool) -> None:
    """Optimizes module's children in place of themselves (module itself is not traceable)."""
    inputs = _child_inputs(module, args)
    for name, child in list(module.named_children()):
        path = prefix + name
        child_args = inputs.get(name)
        if name not in inputs:
            state.untraced[path] = "not called with the example inputs"
            continue
        if child_args is None:
            state.untraced[path] = "its inputs do not bind to its forward's signature"
            continue
        if isinstance(child, _LEAVES) or type(child).__module__ == fnn.__name__ or \
                FusionTracer().is_leaf_module(child, path):
            target = _REPLACEMENTS.get(type(child))
            if target is not None:
                state.leaves.append((child, target))
            continue
        try:
            result = _optimize_traced(child, child_args, report, path + ".")
        except _Untraceable as exc:
            state.untraced[path] = exc.args[0]
            _optimize_children(child, child_args, report, path + ".", state, check)
            continue
        if check:
            _check(child, result, child_args, name=path)
        setattr(module, name, result.module)
        report.submodules.append(path)
        state.traced += 1


# --------------------------------------------------------------------------------------------------
# Check


def _mismatch(expected: Any, got: Any) -> Optional[str]:
    """None when got matches expected within the float tolerance, else what differs."""
    flat_e, spec_e = pytree.tree_flatten(expected)
    flat_g, spec_g = pytree.tree_flatten(got)
    if spec_e != spec_g:
        return f"output structure {spec_g} instead of {spec_e}"
    for i, (e, g) in enumerate(zip(flat_e, flat_g)):
        if isinstance(e, Tensor):
            if not isinstance(g, Tensor) or g.shape != e.shape or g.dtype != e.dtype:
                return f"output {i}: {type(g).__name__} {getattr(g, 'shape', '')} instead of a tensor {tuple(e.shape)}"
            if not e.is_floating_point():
                if not torch.equal(e, g):
                    return f"output {i}: values differ"
                continue
            scale = e.detach().abs().max().item() if e.numel() else 0.0
            atol = ATOL * max(scale, 1e-30)
            diff = (g.detach() - e.detach()).abs()
            bad = diff > atol + RTOL * e.detach().abs()
            if bad.any() or (torch.isnan(g) != torch.isnan(e)).any():
                return (f"output {i}: max |difference| {diff.max().item():.3g} where the tolerance is "
                        f"{atol:.3g} + {RTOL:g} * |value| (max |value| {scale:.3g})")
        elif e != g:
            return f"output {i}: {g!r} instead of {e!r}"
    return None


def _check(original: nn.Module, result: _Traced, args: Sequence[Any], name: str = "",
           expected: Any = None) -> None:
    with torch.no_grad():
        if expected is None:
            expected = original(*args)
        got = result.module(*args)
    problem = _mismatch(expected, got)
    if problem is None:
        return
    where = f" of {name}" if name else ""
    culprit = _first_differing_fused_node(result, args)
    if culprit is not None:
        raise OptimizeError(f"fastconv.optimize: the optimized model{where} does not compute what the original "
                            f"does ({problem}); the first fused node that differs on its own inputs is "
                            f"{culprit}. No model is returned; please report this.")
    raise OptimizeError(f"fastconv.optimize: the optimized model{where} does not compute what the original does "
                        f"({problem}), although every fused node matches the original on its own inputs. No "
                        f"model is returned; please report this.")


def _first_differing_fused_node(result: _Traced, args: Sequence[Any]) -> Optional[str]:
    """Runs the original trace keeping every value, then each fused module on the values its chain read
    there: the first one whose output differs from the chain's (a description), or None."""
    recorder = _Recorder(result.original, keep=True)
    with torch.no_grad():
        recorder.run(*args)
    values = {n.name: v for n, v in recorder.env.items()}
    gm = result.module
    nodes = {n.name: n for n in gm.graph.nodes}
    for name in result.fused_nodes:
        node = nodes[name]
        inputs = [values[result.renamed.get(a.name, a.name)] for a in node.args]
        expected = values[result.renamed[name]]
        fused = gm.get_submodule(node.target)
        with torch.no_grad():
            got = fused(*inputs)
        problem = _mismatch(expected, got)
        if problem is not None:
            return f"{node.target} ({fused.extra_repr()}; replaces node {result.renamed[name]!r}): {problem}"
    return None


# --------------------------------------------------------------------------------------------------
# Entry point


def _as_args(example_inputs: Any) -> Tuple:
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(f"fastconv.optimize: example_inputs must be a tensor or a tuple of the model's positional "
                    f"arguments, got {type(example_inputs).__name__}")


def optimize(model: nn.Module, example_inputs: Any, *, inplace: bool = False, check: bool = True,
             report: bool = False, memory_format: str = "auto"):
    """Returns `model` rewritten for inference: each Conv2d with the eval-mode BatchNorm, activation and
    residual add that follow it as one fastconv conv2d_epilogue call (docs/fusion.md).

    model: an nn.Module in eval mode (for training, use torch.compile(model, backend='fastconv')).
    example_inputs: a tensor or a tuple of positional arguments, as the model is called.
    inplace: reuse model's submodules and tensors instead of a deep copy (they are switched to fastconv's
        classes; model itself keeps computing what it did).
    check: run the example inputs through both models and raise OptimizeError on a difference beyond
        float tolerance (naming the first fused node that differs).
    report: also return the OptimizeReport (it is always the result's `fastconv_report` attribute).
    memory_format: 'auto', 'channels_last' or 'preserve', as fastconv.convert's: where the result keeps
        its activations when called with NCHW images (the check above runs before, as given).
    The state dict of the result has the original's keys and tensors; load_state_dict refolds.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastconv.optimize: model must be a torch.nn.Module, got {type(model).__name__}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"fastconv.optimize: memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
    if model.training:
        raise ValueError("fastconv.optimize: the model is in training mode; optimize() folds BatchNorm for "
                         "inference, so call model.eval() first (for training, use "
                         "torch.compile(model, backend='fastconv'))")
    args = _as_args(example_inputs)
    with torch.no_grad():
        expected = model(*args) if check else None
    root = model if inplace else copy.deepcopy(model)
    rep = OptimizeReport()
    try:
        result = _optimize_traced(root, args, rep, "")
    except _Untraceable as exc:
        state = _Fallback()
        # the children's outputs must be checked against the original: done in _optimize_children
        _optimize_children(root, args, rep, "", state, check)
        if state.traced == 0:
            raise OptimizeError(f"fastconv.optimize: torch.fx cannot trace {type(model).__name__} "
                                f"({exc.args[0]}), nor any of its submodules "
                                f"({'; '.join(f'{k}: {v}' for k, v in state.untraced.items()) or 'it has none'}). "
                                f"Use torch.compile(model, backend='fastconv'), which handles Python control "
                                f"flow, or fastconv.convert(model) for fastconv's kernels without fusion.") from None
        for module, target in state.leaves:
            rep.converted[target.__name__] += 1
            module.__class__ = target
        rep.untraced = {"": exc.args[0], **state.untraced}
        warnings.warn(f"fastconv.optimize: torch.fx cannot trace {type(model).__name__} as a whole "
                      f"({exc.args[0]}); optimized its submodules one by one instead: "
                      f"{', '.join(rep.submodules)}. Left as they are: "
                      + "; ".join(f"{k or type(model).__name__}: {v}" for k, v in rep.untraced.items()),
                      stacklevel=2)
        optimized = root
        if check:
            with torch.no_grad():
                problem = _mismatch(expected, optimized(*args))
            if problem is not None:
                raise OptimizeError(f"fastconv.optimize: the model optimized per submodule does not compute what "
                                    f"the original does ({problem}), although each optimized submodule matches "
                                    f"on its own inputs. No model is returned; please report this.")
    else:
        if check:
            _check(model, result, args, expected=expected)
        optimized = result.module
    optimized.fastconv_report = rep
    set_layout(optimized, memory_format)
    log.info("%s", rep.summary())
    return (optimized, rep) if report else optimized
