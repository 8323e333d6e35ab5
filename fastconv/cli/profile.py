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
import shlex
import shutil

from ..profiling import MODEL_INPUTS
from ._util import fail

NAME = "profile"
HELP = "profile training steps of a model with named ranges around every fastconv op"


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def _ncu(args: argparse.Namespace) -> int:
    import subprocess

    import torch

    from ..profiling import ncu_command

    cmd = ncu_command(args.model, args.backend, args.batch, args.channels_last)
    print("Nsight Compute command (only fastconv's kernels, op/dtype/tile in their names):")
    print("  " + " ".join(shlex.quote(c) for c in cmd))
    if shutil.which("ncu") is None:
        print("not running it: `ncu` is not on PATH (install Nsight Compute, or run the command on a GPU machine)")
        return 0
    if not torch.cuda.is_available():
        print("not running it: no CUDA GPU is available to torch")
        return 0
    return subprocess.call(cmd)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..profiling import profile_model, resolve_device, summary_lines

    if args.ncu:
        return _ncu(args)
    if args.steps < 1:
        return fail(NAME, "--steps must be >= 1")
    dev = resolve_device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return fail(NAME, "--device cuda: no CUDA device is available")
    prof, path = profile_model(args.model, args.steps, args.warmup, args.batch, args.backend, args.device,
                               args.channels_last, args.out, trace=not args.no_trace)
    if prof is None:
        print(f"fastconv profile: {args.model}, {args.steps} step(s) run with named ranges, no trace (--no-trace)")
        return 0
    print(f"fastconv profile: {args.model}, {args.steps} step(s), device {dev}, backend {args.backend}")
    print("\n".join(summary_lines(prof, dev, args.top)))
    print(f"trace: {path} (open in https://ui.perfetto.dev or chrome://tracing)")
    return 0
