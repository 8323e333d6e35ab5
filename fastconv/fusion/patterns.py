"""Conv epilogue patterns on torch.fx graphs: what follows a convolution and can run inside its call.

Both whole-network rewrites use this module: fastconv.optimize (a torch.fx symbolic trace, where modules
are call_module nodes) and the torch.compile backend (dynamo's graph, where modules are inlined into
torch functions). A GraphView says which node is a convolution, a foldable BatchNorm, an activation;
match_chain walks forward from a convolution:

    conv -> [BatchNorm, folded] -> [act] -> [+ residual]      residual after the activation
    conv -> [BatchNorm, folded] -> [+ residual] -> [act]      residual before it (ResNet: add, then ReLU;
                                                              MobileNetV2: add and no activation)

Each step is taken only when the value so far has that node as its only user (so nothing else reads
the intermediate the fused call no longer produces), and an add only when its other operand is a
tensor of the output's own shape and dtype (no broadcast). The fused call replaces the chain at the
position of its last node: it reads the conv's input there, not where the conv stood, so a step is
also refused when a node in between may write into a tensor other than a graph input (an in-place op
on the input or on the residual would change what the fused call reads).

fold_bn is the BatchNorm folding both rewrites use: with s = gamma / sqrt(running_var + eps),
    conv(x, W) * s + (b - running_mean) * s + beta  =  conv(x, W * s) + ((b - running_mean) * s + beta).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import Node

# --------------------------------------------------------------------------------------------------
# Activations: module types, functions and tensor methods, each with the name conv2d_epilogue uses.

ACTIVATION_MODULES: Dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid", nn.GELU: "gelu", nn.Sigmoid: "sigmoid",
}
_ACTIVATION_FUNCTIONS: Dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu", F.relu6: "relu6",
    F.silu: "silu", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", F.gelu: "gelu",
    torch.sigmoid: "sigmoid", torch.sigmoid_: "sigmoid", F.sigmoid: "sigmoid",
    torch._C._nn.gelu: "gelu", torch._C._nn.silu: "silu", torch._C._nn.hardswish: "hardswish",
    torch._C._nn.hardsigmoid: "hardsigmoid",
}
_ACTIVATION_METHODS: Dict[str, str] = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid",
                                       "sigmoid_": "sigmoid"}
_HARDTANH = (F.hardtanh, F.hardtanh_, torch._C._nn.hardtanh, torch._C._nn.hardtanh_)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                      operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor,
                      operator.ilshift, operator.irshift, operator.imatmul}


def arg(node: Node, index: int, name: str, default: Any = None) -> Any:
    """A call node's argument by position or keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def activation_of_module(module: nn.Module) -> Optional[str]:
    """The conv2d_epilogue activation a module computes (torch's definition exactly), or None."""
    name = ACTIVATION_MODULES.get(type(module))
    if name == "gelu" and module.approximate != "none":
        return None
    if name is None and type(module) is nn.Hardtanh and (module.min_val, module.max_val) == (0.0, 6.0):
        return "relu6"
    return name


def activation_of_call(node: Node) -> Optional[str]:
    """The activation a call_function / call_method node computes on its first argument, or None."""
    if node.op == "call_function":
        if node.target in _HARDTANH:
            lo, hi = arg(node, 1, "min_val", -1.0), arg(node, 2, "max_val", 1.0)
            return "relu6" if (lo, hi) == (0.0, 6.0) or (lo, hi) == (0, 6) else None
        name = _ACTIVATION_FUNCTIONS.get(node.target)
        if name == "gelu" and arg(node, 1, "approximate", "none") != "none":
            return None
        return name
    if node.op == "call_method":
        return _ACTIVATION_METHODS.get(node.target)
    return None


def add_operands(node: Node) -> Optional[Tuple[Any, Any, bool]]:
    """(a, b, in_place) when node computes a + b (alpha 1); None otherwise."""
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        if node.target is torch.add and (arg(node, 2, "alpha", 1) != 1 or node.kwargs.get("out") is not None):
            return None
        if len(node.args) < 2 and "other" not in node.kwargs:
            return None
        return arg(node, 0, "input"), arg(node, 1, "other"), node.target is operator.iadd
    if node.op == "call_method" and node.target in ("add", "add_"):
        if arg(node, 2, "alpha", 1) != 1 or len(node.args) < 2 and "other" not in node.kwargs:
            return None
        return node.args[0], arg(node, 1, "other"), node.target == "add_"
    return None


def may_mutate(node: Node, modules: Optional[Dict[str, nn.Module]] = None) -> Optional[Any]:
    """The argument a node may write into (its first argument), or None when it writes nothing."""
    if not node.args:
        return None
    if node.op == "call_method":
        written = node.target.endswith("_") and not node.target.startswith("_")
    elif node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        written = (node.target in _INPLACE_OPERATORS or node.kwargs.get("inplace") is True
                   or (name.endswith("_") and not name.startswith("_")) or node.kwargs.get("out") is not None
                   or (node.target in _INPLACE_POSITIONAL and len(node.args) > _INPLACE_POSITIONAL[node.target]
                       and node.args[_INPLACE_POSITIONAL[node.target]] is True))
    elif node.op == "call_module" and modules is not None:
        written = bool(getattr(modules.get(node.target), "inplace", False))
    else:
        written = False
    return node.args[0] if written else None


# functions whose `inplace` flag may come positionally: its index
_INPLACE_POSITIONAL = {F.relu: 1, F.relu6: 1, F.silu: 1, F.hardswish: 1, F.hardsigmoid: 1, F.hardtanh: 3,
                       F.dropout: 3, F.elu: 2, F.leaky_relu: 2}
# functions that always return a new tensor (not a view or their input)
_FRESH_FUNCTIONS = {torch.conv2d, F.conv2d, F.batch_norm, F.linear, torch.cat, torch.add, torch.mul, operator.add,
                    operator.mul, operator.sub, operator.truediv, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                    torch.matmul, F.layer_norm}


def fresh_call(node: Node) -> bool:
    """True when a call_function / call_method node returns a newly allocated tensor (not an alias)."""
    if node.op != "call_function" or may_mutate(node) is not None:
        return False
    return node.target in _FRESH_FUNCTIONS or (activation_of_call(node) is not None
                                               and not getattr(node.target, "__name__", "_").endswith("_"))


# --------------------------------------------------------------------------------------------------
# Matching


@dataclass
class Match:
    """A convolution and the epilogue nodes fused into it, in graph order (nodes[0] is the conv)."""

    conv: Node
    bn: Optional[Node] = None
    activation: str = "none"
    residual: Optional[Node] = None
    residual_after: bool = False
    nodes: List[Node] = field(default_factory=list)
    # why the chain stops where it does (for a conv with nothing fused, why nothing is)
    stop: str = ""

    @property
    def last(self) -> Node:
        return self.nodes[-1]

    @property
    def fused(self) -> bool:
        return len(self.nodes) > 1

    @property
    def pattern(self) -> str:
        """'conv+bn+add+relu' and so on, in graph order."""
        parts = ["conv"]
        if self.bn is not None:
            parts.append("bn")
        act = [] if self.activation == "none" else [self.activation]
        add = [] if self.residual is None else ["add"]
        return "+".join(parts + (act + add if self.residual_after else add + act))


class GraphView:
    """What match_chain needs to know about one kind of graph. Subclasses recognize their nodes."""

    def is_conv(self, node: Node) -> bool:
        raise NotImplementedError

    def conv_input(self, node: Node) -> Node:
        return node.args[0]

    def batch_norm(self, node: Node) -> Tuple[bool, str]:
        """(foldable, why not): is node an eval-mode BatchNorm of its first argument that folds into the
        conv before it. A node that is no BatchNorm at all gives (False, '')."""
        raise NotImplementedError

    def activation(self, node: Node) -> Optional[str]:
        return activation_of_call(node)

    def meta(self, node: Any) -> Optional[Tuple[Tuple, torch.dtype]]:
        """(shape, dtype) of a tensor node's value, or None when unknown or not a tensor."""
        raise NotImplementedError

    def same_shape(self, a: Sequence, b: Sequence) -> bool:
        return len(a) == len(b) and all(x == y for x, y in zip(a, b))

    def mutated(self, node: Node) -> Optional[Any]:
        return may_mutate(node)

    def fresh(self, node: Node) -> bool:
        """True when node's value is a newly allocated tensor: no alias of another node's value."""
        return fresh_call(node)

    def alias_root(self, value: Any) -> Any:
        """The node whose storage `value` may share: followed through every op not known to allocate
        (views, in-place ops, unknown calls) by its first tensor argument; over-approximates aliasing."""
        while isinstance(value, Node) and value.op not in ("placeholder", "get_attr") and not self.fresh(value):
            nxt = next((a for a in (*value.args, *value.kwargs.values()) if isinstance(a, Node)), None)
            if nxt is None:
                return value
            value = nxt
        return value

    def describe(self, node: Node) -> str:
        """A short name of what a node computes, for the report."""
        if node.op == "call_module":
            return node.target
        if node.op == "call_function":
            return getattr(node.target, "__name__", str(node.target))
        return f"{node.op} {node.target}"


def _sole_user(node: Node) -> Optional[Node]:
    return next(iter(node.users)) if len(node.users) == 1 else None


def match_chain(view: GraphView, conv: Node, position: Dict[Node, int], order: List[Node],
                fold_bn: bool = True) -> Match:
    """The longest fusable chain from `conv` (a node view.is_conv accepts). position/order: the graph's
    nodes and their indices. fold_bn False leaves a BatchNorm alone (training)."""
    m = Match(conv=conv, nodes=[conv])
    x = view.conv_input(conv)

    def clear_between(upto: Node, reads: Sequence[Any]) -> bool:
        # No node between the conv and `upto` (outside the chain) may write into what the fused call
        # reads there: the conv's input and the residual, or anything sharing their storage.
        chain = set(m.nodes)
        read_roots = {view.alias_root(r) for r in reads}
        for n in order[position[conv] + 1:position[upto]]:
            if n in chain or getattr(n, "_erased", False):
                continue
            target = view.mutated(n)
            if target is None:
                continue
            if view.alias_root(target) not in read_roots:
                continue
            m.stop = f"{view.describe(n)} may write in place between the conv and {view.describe(upto)}"
            return False
        return True

    def step_residual(add: Node, value: Node) -> Optional[Node]:
        ops = add_operands(add)
        if ops is None:
            return None
        a, b, in_place = ops
        if in_place:  # value += other only: other += value writes into other, which may be read later
            other = b if a is value and b is not value else None
        else:
            other = b if a is value and b is not value else (a if b is value and a is not value else None)
        if not isinstance(other, Node):
            m.stop = f"{view.describe(add)} with a non-tensor operand" if other is not None else \
                f"{view.describe(add)} does not add the conv's output once"
            return None
        mine, theirs = view.meta(value), view.meta(other)
        if mine is None or theirs is None or mine[1] != theirs[1] or not view.same_shape(mine[0], theirs[0]):
            m.stop = f"{view.describe(add)}: operands of different shapes or dtypes (broadcast)"
            return None
        return other

    value = conv
    user = _sole_user(value)
    if user is None:
        m.stop = "output used by several nodes" if conv.users else "output unused"
        return m
    foldable, why = view.batch_norm(user)
    if why or foldable:
        if not foldable or not fold_bn:
            m.stop = why or "BatchNorm in training mode"
            return m
        if user.args[0] is not value or not clear_between(user, (x,)):
            return m
        m.bn = user
        m.nodes.append(user)
        value = user
        user = _sole_user(value)
        if user is None:
            m.stop = "BatchNorm output used by several nodes"
            return m

    act = view.activation(user)
    if act is not None and user.args and user.args[0] is value:
        if not clear_between(user, (x,)):
            return m
        m.activation = act
        m.nodes.append(user)
        value = user
        user = _sole_user(value)
        if user is not None:
            other = step_residual(user, value)
            if other is not None and clear_between(user, (x, other)):
                m.residual, m.residual_after = other, True
                m.nodes.append(user)
        return m

    other = step_residual(user, value)
    if other is None:
        m.stop = m.stop or f"next op: {view.describe(user)}"
        return m
    if not clear_between(user, (x, other)):
        return m
    m.residual = other
    m.nodes.append(user)
    value = user
    user = _sole_user(value)
    if user is not None:
        act = view.activation(user)
        if act is not None and user.args and user.args[0] is value and clear_between(user, (x, other)):
            m.activation = act
            m.nodes.append(user)
    return m


def graph_order(graph: torch.fx.Graph) -> Tuple[List[Node], Dict[Node, int]]:
    order = list(graph.nodes)
    return order, {n: i for i, n in enumerate(order)}


# --------------------------------------------------------------------------------------------------
# BatchNorm folding


def fold_bn(weight: Tensor, bias: Optional[Tensor], running_mean: Tensor, running_var: Tensor,
            gamma: Optional[Tensor], beta: Optional[Tensor], eps: float,
            exact: bool = True) -> Tuple[Tensor, Tensor]:
    """(W * s, (b - mean) * s + beta) with s = gamma / sqrt(var + eps), per output channel.

    exact: compute in float64 (once per fold, outside autograd) and round once to the weight's dtype;
    otherwise in the weight's dtype, differentiable (a fold recomputed on every call under autograd).
    """
    dtype = weight.dtype
    if exact:
        weight, running_mean, running_var = weight.double(), running_mean.double(), running_var.double()
        bias = None if bias is None else bias.double()
        gamma = None if gamma is None else gamma.double()
        beta = None if beta is None else beta.double()
    scale = torch.rsqrt(running_var + eps)
    if gamma is not None:
        scale = scale * gamma
    w = weight * scale.reshape(-1, 1, 1, 1)
    b = (-running_mean if bias is None else bias - running_mean) * scale
    if beta is not None:
        b = b + beta
    if exact:
        w = w.to(dtype).contiguous(memory_format=_memory_format(weight))
        b = b.to(dtype)
    return w, b


def _memory_format(t: Tensor) -> torch.memory_format:
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def sources_key(tensors: Sequence[Optional[Tensor]]) -> Tuple:
    """Changes when any tensor is replaced, moved or written in place (a fold made from them is stale)."""
    return tuple(None if t is None else (id(t), _version(t), t.data_ptr()) for t in tensors)


def _version(t: Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor (created under torch.inference_mode) has no version counter
        return -1
