"""Named ranges around every fastconv op, for torch.profiler traces and Nsight (NVTX).

fastconv/ops/*.py wrap each backend call in `op_range(...)`. While profiling is off (the default)
that is one global read and a shared no-op context manager, nothing measurable next to a kernel.
While it is on (`with fastconv.profiling.enabled():`, or `enable()`), each call opens

    torch.profiler.record_function("fastconv::conv2d_relu[cpu,float32,3x3,s1]")

(and, on CUDA tensors, an NVTX range of the same name, so that `nsys` and `ncu --nvtx` see it).
The name says op, backend, dtype, filter/window size and stride.

Below that, the machinery of `fastconv profile` (front-end: fastconv.cli.profile): profile_model runs
training steps of a model under torch.profiler with the ranges on and writes a Chrome/Perfetto trace;
summary_lines reads the profiler's averages; ncu_command is the Nsight Compute command line that
profiles only fastconv's kernels.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch

_ENABLED = False


class _Null:
    __slots__ = ()

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NULL = _Null()


def is_enabled() -> bool:
    return _ENABLED


def enable(on: bool = True) -> None:
    global _ENABLED
    _ENABLED = bool(on)


@contextlib.contextmanager
def enabled(on: bool = True) -> Iterator[None]:
    """Named ranges on (or off) inside the block; restores the previous state."""
    global _ENABLED
    before = _ENABLED
    _ENABLED = bool(on)
    try:
        yield
    finally:
        _ENABLED = before


def _pair(v) -> str:
    if v is None:
        return "?"
    v = list(v) if isinstance(v, (list, tuple)) else [v, v]
    return str(v[0]) if len(v) == 2 and v[0] == v[1] else "x".join(map(str, v))


def range_name(op: str, backend: str, dtype: torch.dtype, window: Sequence[int], stride) -> str:
    """e.g. fastconv::conv2d_relu[cpu,float32,3x3,s1]"""
    kh, kw = (list(window) + [1, 1])[:2] if window is not None else ("?", "?")
    return f"fastconv::{op}[{backend},{str(dtype).replace('torch.', '')},{kh}x{kw},s{_pair(stride)}]"


class _Range:
    __slots__ = ("name", "cuda", "rf")

    def __init__(self, name: str, cuda: bool):
        self.name, self.cuda, self.rf = name, cuda, None

    def __enter__(self):
        if self.cuda:
            torch.cuda.nvtx.range_push(self.name)
        self.rf = torch.autograd.profiler.record_function(self.name)
        self.rf.__enter__()
        return self

    def __exit__(self, *exc):
        self.rf.__exit__(*exc)
        if self.cuda:
            torch.cuda.nvtx.range_pop()
        return False


def op_range(op: str, backend, x: torch.Tensor, window: Optional[Sequence[int]], stride):
    """Context manager for one op call: a no-op unless profiling is enabled. `backend` is the resolved
    Backend (its name goes into the range name); window is the filter's (R, S) or the pooling kernel."""
    if not _ENABLED:
        return _NULL
    return _Range(range_name(op, getattr(backend, "name", str(backend)), x.dtype, window, stride),
                  x.device.type == "cuda")


# ----------------------------------------------------------------------------------------------------
# Profiling a model's training steps (`fastconv profile`)

# model -> (in_channels, image_size, constructor kwargs, default batch): the `fastconv train` defaults
# (LeNet-5 at twice the standard width on 8x8 digits; the others on 32x32 RGB).
MODEL_INPUTS: Dict[str, Any] = {
    "lenet5": (1, 8, {"channels": (12, 32)}, 32),
    "vgg_small": (3, 32, {}, 32),
    "resnet18": (3, 32, {}, 32),
    "resnet18_cifar": (3, 32, {}, 32),
    "resnet18_imagenet": (3, 224, {}, 8),
    "mobilenet": (3, 32, {}, 32),
}

# Nsight Compute filter: the CUDA/Triton kernels are named fastconv_<op>_<dtype>_<tile> (e.g.
# fastconv_conv2d_relu_f32_128x64x8); matched on the demangled name, so a namespace fastconv:: matches too.
NCU_KERNEL_REGEX = "regex:fastconv"


def resolve_device(name: str) -> torch.device:
    """'auto': the GPU if torch sees one, else the CPU; any other name as torch.device reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def ncu_command(model: str = "lenet5", backend: str = "auto", batch: Optional[int] = None,
                channels_last: bool = False, trace_dir: str = ".") -> List[str]:
    """ncu on `fastconv profile` itself (one step, no warm-up, no torch.profiler, whose CUPTI use would
    clash with ncu's): only kernels whose demangled name matches NCU_KERNEL_REGEX; --nvtx records the
    fastconv op range (op, dtype, window, stride) each kernel ran in."""
    inner = [sys.executable, "-m", "fastconv", "profile", "--model", model, "--steps", "1", "--warmup", "0",
             "--device", "cuda", "--backend", backend, "--no-trace"]
    if batch:
        inner += ["--batch", str(batch)]
    if channels_last:
        inner.append("--channels-last")
    return ["ncu", "--nvtx", "--kernel-name-base", "demangled",
            "--kernel-name", NCU_KERNEL_REGEX, "--set", "full", "--target-processes", "all",
            "-o", os.path.join(trace_dir, "fastconv-ncu"), "-f", *inner]


def profile_model(model_name: str = "lenet5", steps: int = 3, warmup: int = 1, batch: Optional[int] = None,
                  backend: str = "auto", device: str = "auto", channels_last: bool = False,
                  out: Optional[str] = None, trace: bool = True):
    """Training steps of a model (forward, cross-entropy, backward, SGD update on a random batch of the
    model's input size) under torch.profiler with fastconv's named ranges on; writes the Chrome trace.
    Returns (profiler, trace path); with trace=False, runs the steps with the ranges only: (None, None)."""
    import datetime

    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from .backends import use_backend
    from .models import build_model

    dev = resolve_device(device)
    in_ch, size, kw, default_batch = MODEL_INPUTS[model_name]
    n = batch or default_batch
    torch.manual_seed(0)
    model = build_model(model_name, 10, in_ch, size, backend="fastconv", **kw).to(dev)
    x = torch.randn(n, in_ch, size, size, device=dev)
    y = torch.randint(0, 10, (n,), device=dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    path = Path(out) if out else Path(f"fastconv-trace-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
    with use_backend(backend):
        for _ in range(warmup):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if not trace:
            with enabled():
                for _ in range(steps):
                    step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return None, None
        with enabled(), profile(activities=activities, record_shapes=True) as prof:
            for i in range(steps):
                with torch.profiler.record_function(f"train_step#{i}"):
                    step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    return prof, path


def summary_lines(prof, device: torch.device, top: int = 15) -> List[str]:
    """The fastconv op ranges by total time (calls, CPU and device time over all steps), then
    torch.profiler's table of the top ranges and kernels by self time."""
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    ours = [e for e in averages if e.key.startswith("fastconv::") and "[" in e.key]
    lines = [f"\nfastconv ops ({len(ours)} distinct ranges; total time inside each, all steps):"]
    for e in sorted(ours, key=lambda e: -e.cpu_time_total)[:top]:
        dev_ms = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0)) / 1e3
        extra = f"  device {dev_ms:9.3f} ms" if device.type == "cuda" else ""
        lines.append(f"  {e.key:<58} calls {e.count:4d}  cpu {e.cpu_time_total / 1e3:9.3f} ms{extra}")
    lines.append(f"\ntop {top} by self time:")
    lines.append(averages.table(sort_by=sort, row_limit=top, max_name_column_width=60))
    return lines
