"""`fastconv profile`: training steps of a model under torch.profiler, every fastconv op in a named range.

    fastconv profile                                  # LeNet-5 as `fastconv train` trains it (digits, 8x8)
    fastconv profile --model resnet18_cifar --batch 32 --steps 5 --out trace.json
    fastconv profile --ncu                            # the Nsight Compute command for fastconv's kernels

Each step is forward, cross-entropy, backward and an SGD update on a random batch of the model's
input size (the data do not change which kernels run). Every fastconv op call is wrapped in a range
named like `fastconv::conv2d_relu[cpu,float32,3x3,s1]` (op, backend, dtype, filter or window, stride;
see fastconv.profiling): torch.profiler's record_function on every device, plus NVTX on CUDA. The
trace is Chrome/Perfetto JSON (open it in https://ui.perfetto.dev or chrome://tracing); the top
ranges and kernels by self time are printed.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .cli import command

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


def _profile_args(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n")[1]
    p.add_argument("--model", default="lenet5", choices=list(MODEL_INPUTS),
                   help="model to profile (default: lenet5, the `fastconv train` default)")
    p.add_argument("--steps", type=int, default=3, help="profiled training steps (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="unprofiled steps first (default 1)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 32; 8 for resnet18_imagenet)")
    p.add_argument("--backend", default="auto", help="fastconv backend (default auto)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda if available)")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and input")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="trace file (default: ./fastconv-trace-<time>.json)")
    p.add_argument("--top", type=int, default=15, metavar="N", help="print the top N ranges/kernels (default 15)")
    p.add_argument("--no-trace", action="store_true",
                   help="run the steps with the named ranges (NVTX on CUDA) but without torch.profiler "
                        "(for running under ncu or nsys)")
    p.add_argument("--ncu", action="store_true",
                   help="print the Nsight Compute command that profiles just fastconv's kernels, and run it "
                        "if `ncu` is on PATH and a GPU is present")


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def ncu_command(args: argparse.Namespace, trace_dir: str = ".") -> List[str]:
    """ncu on `fastconv profile` itself (one step, no warm-up, no torch.profiler, whose CUPTI use would
    clash with ncu's): only kernels whose demangled name matches NCU_KERNEL_REGEX; --nvtx records the
    fastconv op range (op, dtype, window, stride) each kernel ran in."""
    inner = [sys.executable, "-m", "fastconv", "profile", "--model", args.model, "--steps", "1", "--warmup", "0",
             "--device", "cuda", "--backend", args.backend, "--no-trace"]
    if args.batch:
        inner += ["--batch", str(args.batch)]
    if args.channels_last:
        inner.append("--channels-last")
    return ["ncu", "--nvtx", "--kernel-name-base", "demangled",
            "--kernel-name", NCU_KERNEL_REGEX, "--set", "full", "--target-processes", "all",
            "-o", os.path.join(trace_dir, "fastconv-ncu"), "-f", *inner]


def _ncu(args: argparse.Namespace) -> int:
    import subprocess

    import torch

    cmd = ncu_command(args)
    print("Nsight Compute command (only fastconv's kernels, op/dtype/tile in their names):")
    print("  " + " ".join(shlex.quote(c) for c in cmd))
    if shutil.which("ncu") is None:
        print("not running it: `ncu` is not on PATH (install Nsight Compute, or run the command on a GPU machine)")
        return 0
    if not torch.cuda.is_available():
        print("not running it: no CUDA GPU is available to torch")
        return 0
    return subprocess.call(cmd)


def profile_model(model_name: str = "lenet5", steps: int = 3, warmup: int = 1, batch: Optional[int] = None,
                  backend: str = "auto", device: str = "auto", channels_last: bool = False,
                  out: Optional[str] = None, trace: bool = True):
    """Runs the steps under torch.profiler with fastconv's named ranges on; writes the Chrome trace.
    Returns (profiler, trace path); with trace=False, runs the steps with the ranges only: (None, None)."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from . import profiling
    from .backends import use_backend
    from .models import build_model

    dev = _device(device)
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
            with profiling.enabled():
                for _ in range(steps):
                    step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return None, None
        with profiling.enabled(), profile(activities=activities, record_shapes=True) as prof:
            for i in range(steps):
                with torch.profiler.record_function(f"train_step#{i}"):
                    step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    return prof, path


@command("profile", "profile training steps of a model with named ranges around every fastconv op", _profile_args)
def _profile(args: argparse.Namespace) -> int:
    if args.ncu:
        return _ncu(args)
    if args.steps < 1:
        print("fastconv profile: error: --steps must be >= 1", file=sys.stderr)
        return 2
    dev = _device(args.device)
    if dev.type == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("fastconv profile: error: --device cuda: no CUDA device is available", file=sys.stderr)
            return 2
    prof, path = profile_model(args.model, args.steps, args.warmup, args.batch, args.backend, args.device,
                               args.channels_last, args.out, trace=not args.no_trace)
    if prof is None:
        print(f"fastconv profile: {args.model}, {args.steps} step(s) run with named ranges, no trace (--no-trace)")
        return 0
    sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    ours = [e for e in averages if e.key.startswith("fastconv::") and "[" in e.key]
    print(f"fastconv profile: {args.model}, {args.steps} step(s), device {dev}, backend {args.backend}")
    print(f"\nfastconv ops ({len(ours)} distinct ranges; total time inside each, all steps):")
    for e in sorted(ours, key=lambda e: -e.cpu_time_total)[:args.top]:
        dev_ms = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0)) / 1e3
        extra = f"  device {dev_ms:9.3f} ms" if dev.type == "cuda" else ""
        print(f"  {e.key:<58} calls {e.count:4d}  cpu {e.cpu_time_total / 1e3:9.3f} ms{extra}")
    print(f"\ntop {args.top} by self time:")
    print(averages.table(sort_by=sort, row_limit=args.top, max_name_column_width=60))
    print(f"trace: {path} (open in https://ui.perfetto.dev or chrome://tracing)")
    return 0
