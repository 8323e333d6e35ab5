"""The network benchmark behind `fastconv bench --models` (front-end: fastconv.cli.bench) and
bench/test_networks.py: whole networks, inference and one training step, torch eager against
torch.compile and fastconv, NCHW and channels_last; and a per-layer breakdown of one network.

Networks: torchvision's architectures as fastconv.models.imagenet builds them with backend='torch'
(torch.nn layers), 1000 classes, seeded; GoogLeNet without its auxiliary heads. Each network is built
once per run and its batch-norm statistics calibrated (calibrate_batch_norm): torchvision's
initialization alone shrinks the eval-mode activations layer by layer (MobileNetV2's logits at 64 px
were ~1e-9), which would time the kernels on near-zero data and make the check's tolerance meaningless.

Variants (VARIANTS), each a deep copy of that model, in the layout being measured:
  torch         eager torch (oneDNN convolutions): the baseline of every ratio
  compile       torch.compile(model, dynamic=False), compiled with torch._inductor.config.freezing =
                True (folds eval BatchNorm into the conv weights, fuses post-ops into oneDNN
                convolutions); inference only, under torch.no_grad; the first call at each batch
                compiles: its time is the row's compile_s, excluded from the timing
  fastconv      fastconv.convert(model): fastconv's conv and pooling modules, everything else torch's
  fastconv-opt  fastconv.optimize(model, (x,)): eval BatchNorm folded, activation and residual add
                fused into the conv (docs/fusion.md); inference only, like compile
Modes: infer - eval mode, torch.inference_mode for the eager variants (fastconv's ops run under it),
torch.no_grad for compile - at each batch size; train - one step: forward in train mode (batch norm
on batch statistics, dropout), cross-entropy against fixed labels, backward, torch.optim.SGD with
momentum - at the train batch size. A training step changes the weights, so the timed steps run on
weights that move; the check runs before, from identical weights.

Before timing, each variant's result is compared with torch eager's on the same input: infer, the
logits (check_infer); train, the loss and four gradients of one forward/backward from identical
weights and the same dropout masks, against a float64 run of the torch model, within 10x torch's own
float32 error (check_train). A variant that fails gets a row with a note and no
time. Then torch and the variants run in alternating rounds (runner.time_interleaved), and each
variant's row is a BenchRecord: op "network", mode "infer" / "train", shape "<net>@b<batch>",
backend = the variant, ratio = torch_ms / variant_ms, work = the convolutions' and linear layers'
FLOPs (x3 for a training step).

breakdown(): where a network's time goes. One forward with hooks on every nn.Conv2d gives each conv
layer's geometry (input size, filter, stride, padding, groups, bias, whether its input needs a
gradient); each distinct geometry is timed as F.conv2d against fastconv.functional.conv2d, forward
and forward+backward, interleaved, checked first, as BenchRecords (op conv2d, mode fwd / fwdbwd) with
count = the layers sharing it and path = the cpu backend's algorithm per pass; and torch.profiler's
self time per op category (conv, batch_norm, activation, ...) of one eager step of the network, for
torch and fastconv, says how much of the network the convolutions are.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import runner as R
from .records import BASELINE, COMPILE, NETWORK_OP, BenchRecord, Timing
from .tables import ConvShape

# The default list: torchvision's ResNet-18 (fastconv.models' name tv_resnet18) and the other
# architectures of fastconv.models.imagenet.
DEFAULT_NETWORKS = ("tv_resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
                    "regnet_y_400mf", "densenet121", "convnext_tiny", "shufflenet_v2_x1_0", "googlenet", "vgg11")
OPTIMIZED = "fastconv-opt"
VARIANTS = (BASELINE, COMPILE, "fastconv", OPTIMIZED)
INFER_ONLY = (COMPILE, OPTIMIZED)  # optimize() folds eval BatchNorm; compile is timed with freezing
NET_MODES = ("infer", "train")
DEFAULT_BATCHES = (1, 8, 32)
DEFAULT_TRAIN_BATCH = 8
DEFAULT_IMAGE_SIZE = 224
NUM_CLASSES = 1000
TABLE = "networks"

# The check's tolerances. infer: the logits elementwise, rtol and atol x max|logit| (float32 through
# 20-120 layers; fastconv's Winograd layers differ from oneDNN by ~1e-6 per op). Measured at 64 px,
# batch 2, every network of DEFAULT_NETWORKS against a float64 run: max |error| / max |logit| <= 1.0e-4
# for fastconv (resnet50 channels_last), 4.8e-5 for torch. A conv that adds 1.0 to its output gives
# errors of order 1.
INFER_RTOL, INFER_ATOL = 1e-3, 1e-3
# train: the loss and each compared gradient against a float64 run of the torch model, norm-wise
# relative: at most 10x torch's own float32 error, and never less than a floor. Through batch norm in
# train mode the gradients are chaotic in the last bits - a pre-activation that rounds across 0 flips a
# ReLU mask and changes the gradient by a whole dy value there, then the batch statistics spread it
# (bench/test_train_step.py) - so torch's own float32 first-conv gradient is 1.2e-1 from float64 in
# shufflenet_v2 (NCHW, 64 px, batch 2), 2.5e-2 in resnet50 and regnet_y_400mf; fastconv's worst there
# was 5.1e-2 (resnet50 channels_last; torch's 2.5e-2) and 1.1e-2 where torch's was 5e-5 (densenet121
# channels_last: one flip more). The loss: <= 2e-5 for both. A wrong kernel gives errors of order 1.
TRAIN_LOSS_FLOOR, TRAIN_GRAD_FLOOR, TRAIN_VS_TORCH = 1e-3, 5e-2, 10.0
LR, MOMENTUM = 1e-3, 0.9

Log = Optional[Callable[[str], None]]


@dataclasses.dataclass(frozen=True)
class NetShape:
    """One network at one batch size: the `shape` of a network row ('<net>@b<batch>')."""
    network: str
    batch: int
    image_size: int = DEFAULT_IMAGE_SIZE
    name: str = ""

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", f"{self.network}@b{self.batch}")


def network_names(spec: Sequence[str]) -> List[str]:
    """The networks of a --models list ('all': DEFAULT_NETWORKS); ValueError naming an unknown one."""
    from ..models import imagenet

    names: List[str] = []
    for n in spec:
        key = n.strip().lower().replace("-", "_")
        for name in (DEFAULT_NETWORKS if key == "all" else (key,)):
            if name not in imagenet.SPECS:
                raise ValueError(f"unknown network {n!r}; expected 'all' or some of {list(imagenet.SPECS)}")
            if name not in names:
                names.append(name)
    return names


def mode_variants(variants, mode: str) -> Tuple[str, ...]:
    """The variants of `variants` that are timed in `mode` (a training step has no INFER_ONLY ones)."""
    return tuple(v for v in variants if mode == "infer" or v not in INFER_ONLY)


def _fmt(layout: str):
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def make_input(batch: int, image_size: int, layout: str, device: str = "cpu", seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=g)
    return x.to(device).contiguous(memory_format=_fmt(layout))


def make_labels(batch: int, device: str = "cpu", seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device)


def calibrate_batch_norm(model: nn.Module, image_size: int, batch: int = 4, seed: int = 3) -> nn.Module:
    """Sets every batch norm's running statistics to those of one forward pass on a seeded random batch
    (cumulative average, then the modules' momentum restored), so that eval mode sees activations of
    the scale a trained network has. Leaves the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            model(make_input(batch, image_size, "nchw", next(model.parameters()).device.type, seed))
        for m, mom in zip(bns, momenta):
            m.momentum = mom
    return model.eval()


def build_network(name: str, image_size: int = DEFAULT_IMAGE_SIZE, device: str = "cpu", seed: int = 0) -> nn.Module:
    """The torch model of a network (fastconv.models, backend='torch'), seeded, batch norm calibrated,
    in eval mode."""
    from ..models import build_model

    torch.manual_seed(seed)
    kwargs = {"aux_logits": False} if name == "googlenet" else {}
    model = build_model(name, NUM_CLASSES, 3, image_size, backend="torch", **kwargs).to(device)
    return calibrate_batch_norm(model, image_size)


def forward_flops(model: nn.Module, image_size: int) -> float:
    """FLOPs of one image's forward through the convolutions (2·K·P·Q·(C/groups)·R·S each) and the
    linear layers (2·in·out); batch norm, activations and pooling are not counted."""
    total = [0.0]

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            total[0] += 2.0 * out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        else:
            total[0] += 2.0 * out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(make_input(1, image_size, "nchw", next(model.parameters()).device.type))
    finally:
        for h in handles:
            h.remove()
    return total[0]


# ----------------------------------------------------------------------------------------------------
# Variants and steps


def variant_model(variant: str, base: nn.Module, mode: str, layout: str, x: torch.Tensor) -> nn.Module:
    """A deep copy of `base` in `layout`, in eval (infer) or train mode, made into `variant`. The
    compile variant is the torch.compile wrapper, not compiled yet (compile_first_call does that)."""
    import fastconv

    model = copy.deepcopy(base).to(memory_format=_fmt(layout))
    model.train(mode == "train")
    if variant == BASELINE:
        return model
    if variant == "fastconv":
        return fastconv.convert(model)
    if variant not in mode_variants(VARIANTS, mode):
        raise ValueError(f"the {variant} variant is timed for inference only")
    if variant == OPTIMIZED:
        return fastconv.optimize(model, (x,))
    if variant == COMPILE:
        import torch._dynamo

        torch._dynamo.reset()  # a fresh cache per model: no recompile limit across networks and layouts
        return torch.compile(model, dynamic=False)
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def infer_step(variant: str, model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    ctx = torch.no_grad if variant == COMPILE else torch.inference_mode

    def step():
        with ctx():
            return model(x)

    return step


def compile_first_call(model: nn.Module, x: torch.Tensor) -> Tuple[float, torch.Tensor]:
    """Compiles (the first call, with Inductor's freezing on) and returns (seconds it took, output)."""
    import torch._inductor.config as inductor_config

    t0 = time.perf_counter()
    with inductor_config.patch(freezing=True), torch.no_grad():
        out = model(x)
    return time.perf_counter() - t0, out


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One training step: forward, cross-entropy, backward, SGD with momentum (its own optimizer)."""
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def check_infer(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Raises AssertionError when the logits differ beyond INFER_RTOL / INFER_ATOL x max|ref|."""
    scale = max(1e-30, ref.abs().max().item())
    torch.testing.assert_close(out.float(), ref.float(), rtol=INFER_RTOL, atol=INFER_ATOL * scale,
                               msg=lambda m: f"logits: {m}")


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return float((a.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def train_values(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 5
                 ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The loss and four gradients (the first, middle and last conv weight, the classifier's weight)
    of one forward/backward, dropout seeded; the model's gradients are cleared afterwards."""
    torch.manual_seed(seed)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    params = [(k, p) for k, p in model.named_parameters() if p.grad is not None]
    convs = [(k, p) for k, p in params if p.dim() == 4]
    last = [(k, p) for k, p in params if p.dim() == 2][-1:]
    picked = OrderedDict()
    for k, p in [convs[0], convs[len(convs) // 2], convs[-1]] + last if convs else last:
        picked[k] = p.grad.detach().clone()
    model.zero_grad(set_to_none=True)
    return loss.detach(), picked


TrainValues = Tuple[torch.Tensor, Dict[str, torch.Tensor]]


def train_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Tuple[TrainValues, TrainValues]:
    """train_values of the torch model in float32 and of a float64 copy of it (same weights, input and
    dropout masks): what check_train measures a variant against."""
    ref32 = train_values(model, x, y)
    ref64 = train_values(copy.deepcopy(model).double(), x.double(), y)
    return ref32, ref64


def check_train(ours: TrainValues, ref: Tuple[TrainValues, TrainValues]) -> None:
    """Raises AssertionError when the loss or a gradient of train_values is further from the float64
    reference than TRAIN_VS_TORCH x torch's float32 error and the floor (TRAIN_LOSS_FLOOR,
    TRAIN_GRAD_FLOOR)."""
    ref32, ref64 = ref
    pairs = [("loss", ours[0], ref32[0], ref64[0], TRAIN_LOSS_FLOOR)] + [
        (f"gradient of {k}", ours[1][k], ref32[1][k], g, TRAIN_GRAD_FLOOR) for k, g in ref64[1].items()]
    for what, mine, theirs, exact, floor in pairs:
        err, torch_err = _rel(mine, exact), _rel(theirs, exact)
        assert err <= max(TRAIN_VS_TORCH * torch_err, floor), (
            f"{what}: relative error {err:.2e} vs float64 (torch float32: {torch_err:.2e})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else ""


def _failure(variant: str, exc: BaseException) -> str:
    if isinstance(exc, AssertionError):
        return f"MISMATCH vs torch: {_first_line(exc)}"
    return f"{variant}: {type(exc).__name__}: {_first_line(exc)}"


# ----------------------------------------------------------------------------------------------------
# One network: every layout, mode and batch


@dataclasses.dataclass
class NetConfig:
    batches: Sequence[int] = DEFAULT_BATCHES
    modes: Sequence[str] = NET_MODES
    variants: Sequence[str] = (BASELINE, "fastconv")
    layouts: Sequence[str] = R.LAYOUTS
    image_size: int = DEFAULT_IMAGE_SIZE
    train_batch: int = DEFAULT_TRAIN_BATCH
    check: bool = True
    device: str = "cpu"


def bench_network(name: str, cfg: NetConfig, timing: R.TimingConfig, peak: Dict[str, Any],
                  log: Log = None) -> List[BenchRecord]:
    """The rows of one network: per layout, infer at each batch and train at the train batch, one row
    per variant other than torch (compile: infer only)."""
    base = build_network(name, cfg.image_size, cfg.device)
    flops = forward_flops(base, cfg.image_size)
    out: List[BenchRecord] = []
    for layout in cfg.layouts:
        for mode in cfg.modes:
            for batch in (cfg.batches if mode == "infer" else (cfg.train_batch,)):
                out += _bench_one(name, base, flops, mode, batch, layout, cfg, timing, peak, log)
    return out


def _bench_one(name, base, flops, mode, batch, layout, cfg: NetConfig, timing, peak, log) -> List[BenchRecord]:
    variants = [v for v in mode_variants(cfg.variants, mode) if v != BASELINE]
    x = make_input(batch, cfg.image_size, layout, cfg.device)
    y = make_labels(batch, cfg.device)
    ref_model = variant_model(BASELINE, base, mode, layout, x)
    if mode == "infer":
        ref = infer_step(BASELINE, ref_model, x)()
    else:
        ref = train_reference(ref_model, x, y) if cfg.check and variants else None
    steps = {BASELINE: infer_step(BASELINE, ref_model, x) if mode == "infer" else train_step(ref_model, x, y)}
    notes: Dict[str, str] = {}
    compile_s: Dict[str, float] = {}
    for v in variants:
        try:
            model = variant_model(v, base, mode, layout, x)
            if mode == "infer":
                step = infer_step(v, model, x)
                if v == COMPILE:
                    compile_s[v], got = compile_first_call(model, x)
                else:
                    got = step()
                if cfg.check:
                    check_infer(got, ref)
            else:
                if cfg.check:
                    check_train(train_values(model, x, y), ref)
                step = train_step(model, x, y)
            steps[v] = step
        except Exception as exc:  # noqa: BLE001  (a mismatch, or a variant that cannot run this network)
            notes[v] = _failure(v, exc)
    times, busy = R.time_interleaved(steps, timing, cfg.device)
    base_t = Timing.of(times[BASELINE], busy)
    shape = NetShape(name, batch, cfg.image_size)
    work = flops * batch * (3 if mode == "train" else 1)
    rows = [BenchRecord.measured(NETWORK_OP, mode, shape, layout,
                                 ours=Timing.of(times[v], busy) if v in times else None, base=base_t, work=work,
                                 unit="GFLOP/s", peak=peak, backend=v, device=cfg.device, table=TABLE,
                                 note=notes.get(v), compile_s=compile_s.get(v))
            for v in variants]
    if log:
        parts = [f"torch {base_t.median * 1e3:.2f} ms"] + [
            f"{r.backend} " + (f"{r.ours_ms:.2f} ms ({r.ratio:.2f}x)" if r.ours_ms else f"n/a ({r.note})")
            for r in rows]
        log(f"{shape.name} {layout} {mode}: " + ", ".join(parts))
    return rows


def run_networks(names: Sequence[str], cfg: NetConfig, quick: bool = False, breakdown_net: Optional[str] = None,
                 breakdown_batch: int = DEFAULT_TRAIN_BATCH, log: Log = None) -> Dict[str, Any]:
    """`fastconv bench --models ... [--breakdown NET]`: the report (kind "fastconv-bench") of every
    network's rows, and of the breakdown of `breakdown_net` when given."""
    from .report import make_report

    R.prepare_device(cfg.device)
    timing = R.TimingConfig.quick() if quick else R.TimingConfig()
    busy_run = R.BusyMeter()
    peak = R.measure_peak(cfg.device, "float32")
    records: List[BenchRecord] = []
    for name in names:
        records += bench_network(name, cfg, timing, peak, log)
    extra: Dict[str, Any] = {}
    if breakdown_net:
        rows, info = breakdown(breakdown_net, breakdown_batch, cfg, timing, peak, log)
        records += rows
        extra["breakdown"] = info
    config = {"networks": list(names), "batches": list(cfg.batches), "train_batch": cfg.train_batch,
              "modes": list(cfg.modes), "variants": list(cfg.variants), "layouts": list(cfg.layouts),
              "image_size": cfg.image_size, "check": cfg.check, "breakdown": breakdown_net,
              "breakdown_batch": breakdown_batch if breakdown_net else None,
              "backends": [_fastconv_backend(cfg.device)],
              "dtypes": ["float32"], "threads": torch.get_num_threads(), "quick": quick,
              "infer_grad_mode": "torch.inference_mode (compile: torch.no_grad)",
              "optimizer": f"SGD lr={LR} momentum={MOMENTUM}", "warmup_s": timing.warmup_s,
              "target_s": timing.target_s, "min_rounds": timing.min_rounds, "max_rounds": timing.max_rounds}
    return make_report("fastconv-bench", records, cfg.device, config, peak, others_cpu_share=busy_run.others(),
                       extra=extra)


def _fastconv_backend(device: str) -> str:
    from .. import backends as B

    return B.resolve(torch.device(device)).name


# ----------------------------------------------------------------------------------------------------
# Per-layer breakdown


@dataclasses.dataclass(frozen=True)
class ConvLayer(ConvShape):
    """A network's conv layer: ConvShape's geometry, whether it has a bias, and whether its input needs
    a gradient in training (not the stem's: the image)."""
    bias: bool = True
    input_grad: bool = True

    @property
    def fwdbwd_flops(self) -> int:
        return self.flops * (3 if self.input_grad else 2)


def _layer_name(C, H, W, K, R, S, stride, pad, groups) -> str:
    g = "dw" if groups == C == K and groups > 1 else (f"g{groups}" if groups > 1 else "")
    return (f"c{C}k{K}-{H}x{W}-{R}x{S}{f's{stride}' if stride > 1 else ''}{g}"
            f"{f'p{pad}' if pad != (R - 1) // 2 else ''}")


def _pad_of(m: nn.Conv2d) -> int:
    if isinstance(m.padding, str):
        return 0 if m.padding == "valid" else m.dilation[0] * (m.kernel_size[0] - 1) // 2
    return m.padding[0]


def conv_layers(model: nn.Module, x: torch.Tensor) -> "OrderedDict[ConvLayer, int]":
    """Every distinct conv geometry of one forward of `model` on `x`, in order of first use, with the
    number of layers that have it. Only square filters with equal strides and paddings and dilation 1
    (every network of DEFAULT_NETWORKS); ValueError for another."""
    seen: "OrderedDict[tuple, int]" = OrderedDict()
    bad: List[str] = []

    def hook(m, inp, out):
        t = inp[0]
        pad = _pad_of(m)
        square = (m.kernel_size[0] == m.kernel_size[1] and m.stride[0] == m.stride[1] and m.dilation == (1, 1)
                  and (isinstance(m.padding, str) or m.padding[0] == m.padding[1]) and m.padding_mode == "zeros")
        if not square:
            bad.append(repr(m))
        key = (t.shape[0], t.shape[1], t.shape[2], t.shape[3], m.out_channels, m.kernel_size[0], m.kernel_size[1],
               m.stride[0], pad, m.groups, m.bias is not None, bool(t.requires_grad))
        seen[key] = seen.get(key, 0) + 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.enable_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if bad:
        raise ValueError(f"breakdown: conv layers other than square, dilation 1, zero padding: {bad[:2]}")
    names: Dict[str, int] = {}
    for key in seen:
        n = _layer_name(*key[1:10])
        names[n] = names.get(n, 0) + 1
    out: "OrderedDict[ConvLayer, int]" = OrderedDict()
    for key, count in seen.items():
        N, C, H, W, K, Rk, S, stride, pad, groups, bias, dx = key
        name = _layer_name(C, H, W, K, Rk, S, stride, pad, groups)
        if names[name] > 1:  # same geometry with and without bias / input gradient
            name += f"{'' if bias else '-nobias'}{'' if dx else '-nodx'}"
        out[ConvLayer(N, C, H, W, K, Rk, S, stride, pad, groups, name=name, bias=bias, input_grad=dx)] = count
    return out


def layer_step(impl: str, pass_: str, s: ConvLayer, layout: str, device: str = "cpu") -> Callable[[], Any]:
    """F.conv2d (torch) or fastconv.functional.conv2d (fastconv) on seeded inputs of layer s: 'fwd' the
    output under torch.no_grad; 'fwdbwd' forward then the gradients of the input (when the layer's
    input needs one), weight and bias."""
    import fastconv.functional as FC

    g = torch.Generator().manual_seed(1234)
    fan_in = (s.C // s.groups) * s.R * s.S
    x = torch.randn(s.input_shape, generator=g).to(device).contiguous(memory_format=_fmt(layout))
    w = (torch.randn(s.weight_shape, generator=g) / fan_in ** 0.5).to(device).contiguous(memory_format=_fmt(layout))
    b = (torch.randn(s.K, generator=g) * 0.1).to(device) if s.bias else None
    dy = torch.randn(s.output_shape, generator=g).to(device).contiguous(memory_format=_fmt(layout))
    conv = FC.conv2d if impl == "fastconv" else F.conv2d

    def f():
        return conv(x, w, b, s.stride, s.pad, 1, s.groups)

    if pass_ == "fwd":
        def fwd():
            with torch.no_grad():
                return (f(),)
        return fwd
    inputs = [t for t in (x if s.input_grad else None, w, b) if t is not None]
    for t in inputs:
        t.requires_grad_(True)
    return lambda: torch.autograd.grad(f(), inputs, dy)


def _result_names(s: ConvLayer, pass_: str) -> Tuple[str, ...]:
    if pass_ == "fwd":
        return ("output",)
    return tuple(n for n, on in (("grad_input", s.input_grad), ("grad_weight", True), ("grad_bias", s.bias)) if on)


def layer_path(s: ConvLayer, layout: str, pass_: str) -> Optional[str]:
    """The cpu backend's algorithm for the pass ('fwd'; 'fwdbwd': fwd, dgrad and wgrad), or None."""
    try:
        from ..backends import cpu as cpu_backend

        x = torch.empty(s.input_shape, device="meta").contiguous(memory_format=_fmt(layout))
        w = torch.empty(s.weight_shape, device="meta").contiguous(memory_format=_fmt(layout))

        def one(p):
            return cpu_backend.conv2d_path(x, w, s.stride, s.pad, 1, s.groups, pass_=p)

        if pass_ == "fwd":
            return one("fwd")
        passes = ("fwd", "dgrad", "wgrad") if s.input_grad else ("fwd", "wgrad")
        return "; ".join(f"{p} {one(p)}" for p in passes)
    except Exception:  # noqa: BLE001  (no fastconv._C)
        return None


# Op categories of the profile, matched in order on the lower-cased op name after its namespace.
_CATEGORIES = (
    ("conv", ("conv",)),
    ("batch_norm", ("batch_norm",)),
    ("layer_norm", ("layer_norm",)),
    ("pool", ("pool",)),
    ("activation", ("relu", "hardtanh", "hardswish", "hardsigmoid", "silu", "sigmoid", "gelu", "threshold", "clamp")),
    ("linear", ("addmm", "linear", "matmul", "mm")),
    ("loss", ("cross_entropy", "nll_loss", "log_softmax")),
    ("optimizer", ("optimizer", "sgd", "_foreach")),
    ("elementwise", ("add", "mul", "div", "sub", "cat", "mean", "sum", "dropout", "bernoulli")),
    ("copy/alloc", ("copy", "contiguous", "clone", "empty", "zeros", "fill", "to", "view", "reshape", "permute",
                    "transpose", "flatten", "t", "detach", "as_strided", "select", "slice", "chunk", "split")),
)


def op_category(name: str) -> str:
    tail = name.split("::")[-1].lower()
    # A custom op's autograd node, which runs its forward under autograd: named after the op, whose
    # namespace ("fastconv") must not make every one of them a "conv".
    for prefix in ("generatedbackwardfor_fastconv_", "fastconv_"):
        if tail.startswith(prefix):
            tail = tail[len(prefix):]
            break
    for cat, keys in _CATEGORIES:
        if any(k in tail for k in keys if len(k) > 2) or tail.lstrip("_").split("[")[0] in keys:
            return cat
    return "other"


def profile_categories(step: Callable[[], Any], steps: int = 2) -> Dict[str, float]:
    """torch.profiler's self CPU time per op category (op_category) of one call of `step`, in ms, the
    mean over `steps` calls after one warm-up call; fastconv's ops appear as their named ranges."""
    from torch.profiler import ProfilerActivity, profile

    from .. import profiling

    step()
    with profiling.enabled(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    cats: Dict[str, float] = {}
    for evt in prof.key_averages():
        cat = op_category(evt.key)
        cats[cat] = cats.get(cat, 0.0) + evt.self_cpu_time_total / 1e3 / steps
    return dict(sorted(cats.items(), key=lambda kv: -kv[1]))


def breakdown(name: str, batch: int, cfg: NetConfig, timing: R.TimingConfig, peak: Dict[str, Any],
              log: Log = None) -> Tuple[List[BenchRecord], Dict[str, Any]]:
    """The per-layer rows of network `name` at `batch` (each distinct conv geometry, per layout: 'fwd'
    when cfg.modes has infer, 'fwdbwd' when it has train; sorted by count x torch time, largest first)
    and the report's breakdown section (the layer counts, the profile per layout, mode and variant)."""
    from ..backends import use_backend

    base = build_network(name, cfg.image_size, cfg.device)
    backend = _fastconv_backend(cfg.device)
    passes = [p for m, p in (("infer", "fwd"), ("train", "fwdbwd")) if m in cfg.modes]
    table = f"breakdown:{name}@b{batch}"
    rows: List[BenchRecord] = []
    profile: Dict[str, Dict[str, Dict[str, Dict[str, float]]]] = {}
    notes: List[str] = []
    layers: "OrderedDict[ConvLayer, int]" = OrderedDict()
    for layout in cfg.layouts:
        x = make_input(batch, cfg.image_size, layout, cfg.device)
        layers = conv_layers(copy.deepcopy(base).to(memory_format=_fmt(layout)), x)
        for pass_ in passes:
            timed = []
            for layer, count in layers.items():
                note, ours = None, None
                steps = {BASELINE: layer_step("torch", pass_, layer, layout, cfg.device)}
                try:
                    with use_backend(backend):
                        mine = layer_step("fastconv", pass_, layer, layout, cfg.device)
                        if cfg.check:
                            R.assert_same(mine(), steps[BASELINE](), _result_names(layer, pass_))
                    steps["fastconv"] = mine
                except Exception as exc:  # noqa: BLE001
                    note = _failure("fastconv", exc)
                with use_backend(backend):
                    times, busy = R.time_interleaved(steps, timing, cfg.device)
                if "fastconv" in times:
                    ours = Timing.of(times["fastconv"], busy)
                work = layer.flops if pass_ == "fwd" else layer.fwdbwd_flops
                rec = BenchRecord.measured(
                    "conv2d", pass_, layer, layout, ours=ours, base=Timing.of(times[BASELINE], busy), work=work,
                    unit="GFLOP/s", peak=peak, backend=backend, device=cfg.device, table=table,
                    nbytes=R.conv_bytes(layer, pass_), note=note, count=count, path=layer_path(layer, layout, pass_))
                timed.append(rec)
            timed.sort(key=lambda r: -(r.count or 0) * (r.torch_ms or 0.0))
            rows += timed
            if log:
                t = sum(r.count * r.torch_ms for r in timed if r.torch_ms)
                o = sum(r.count * r.ours_ms for r in timed if r.ours_ms)
                log(f"breakdown {name}@b{batch} {layout} {pass_}: {len(timed)} geometries, "
                    f"torch {t:.1f} ms, ours {o:.1f} ms" + (f" ({t / o:.2f}x)" if o else ""))
        profile[layout] = {}
        y = make_labels(batch, cfg.device)
        for mode in cfg.modes:
            profile[layout][mode] = {}
            for v in (BASELINE, "fastconv"):
                try:
                    model = variant_model(v, base, mode, layout, x)
                    step = infer_step(v, model, x) if mode == "infer" else train_step(model, x, y)
                    profile[layout][mode][v] = profile_categories(step)
                except Exception as exc:  # noqa: BLE001  (e.g. batch norm in train mode on 1 value per channel)
                    notes.append(f"profile {mode} {layout} {v}: {type(exc).__name__}: {_first_line(exc)}")
    info = {"network": name, "batch": batch, "image_size": cfg.image_size, "layouts": list(cfg.layouts),
            "conv_layers": sum(layers.values()), "geometries": len(layers), "profile": profile, "notes": notes}
    return rows, info
