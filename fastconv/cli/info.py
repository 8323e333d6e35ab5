"""`fastconv info`: what was built and which backends are available (fastconv.info); with
--explain-conv, which CPU algorithm each pass of one convolution runs at each ISA level."""
from __future__ import annotations

import argparse
import json

NAME = "info"
HELP = "print what was built and which backends are available"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    e = p.add_argument_group("--explain-conv: the cpu backend's path chooser for one convolution")
    e.add_argument("--explain-conv", metavar="N,C,H,W,K,R[,S]",
                   help="input N x C x H x W, K output channels, an R x S filter (S = R when left out): print "
                        "the algorithm of the forward, input-gradient and weight-gradient pass at each ISA level")
    e.add_argument("--stride", default="1", help="int or 'sh,sw' (default 1)")
    e.add_argument("--padding", default="0", help="int, 'ph,pw', 'same' or 'valid' (default 0)")
    e.add_argument("--dilation", default="1", help="int or 'dh,dw' (default 1)")
    e.add_argument("--groups", type=int, default=1)
    e.add_argument("--dtype", default="float32", choices=("float32", "float64", "float16", "bfloat16"))
    e.add_argument("--channels-last", action="store_true", help="channels_last input (default NCHW)")
    e.add_argument("--relu", action="store_true", help="the fused conv2d_relu (its backward masks dy)")


def _ints(text: str, what: str):
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"fastconv info: error: {what} must be comma-separated integers, got {text!r}")
    return values[0] if len(values) == 1 else values


def explain_conv(args: argparse.Namespace) -> str:
    """The table `fastconv info --explain-conv` prints: pass x ISA level -> algorithm."""
    import torch

    from .. import _C
    from ..backends.cpu import CONV_PASSES, conv2d_path

    dims = _ints(args.explain_conv, "--explain-conv")
    if not isinstance(dims, tuple) or len(dims) not in (6, 7):
        raise SystemExit("fastconv info: error: --explain-conv takes N,C,H,W,K,R or N,C,H,W,K,R,S")
    N, C, H, W, K, R = dims[:6]
    S = dims[6] if len(dims) == 7 else R
    dtype = getattr(torch, args.dtype)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.empty(N, C, H, W, dtype=dtype, device="meta").contiguous(memory_format=fmt)
    w = torch.empty(K, C // max(args.groups, 1), R, S, dtype=dtype, device="meta")
    padding = args.padding if args.padding in ("same", "valid") else _ints(args.padding, "--padding")
    stride, dilation = _ints(args.stride, "--stride"), _ints(args.dilation, "--dilation")
    order = ["baseline", "avx2", "avx512"]
    isas = order[:order.index(_C.detected_cpu_isa()) + 1]
    layout = "channels_last" if args.channels_last else "NCHW"
    lines = [f"conv2d{'_relu' if args.relu else ''} {N}x{C}x{H}x{W} -> {K}, {R}x{S}, stride {args.stride}, "
             f"padding {args.padding}, dilation {args.dilation}, groups {args.groups}, {args.dtype}, {layout}"]
    previous = _C.cpu_isa()
    try:
        for isa in reversed(isas):
            _C.set_cpu_isa(isa)
            lines.append(f"  {isa}{' (in use)' if isa == previous else ''}:")
            for p in CONV_PASSES:
                path = conv2d_path(x, w, stride, padding, dilation, args.groups, pass_=p, relu=args.relu)
                lines.append(f"    {p:6s} {path}")
    finally:
        _C.set_cpu_isa(previous)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..errors import ArgumentError
    from ..info import format_info, info_dict

    if args.explain_conv:
        try:
            print(explain_conv(args))
        except ArgumentError as exc:
            print(f"fastconv info: error: {exc}")
            return 2
        return 0
    data = info_dict()
    print(json.dumps(data, indent=2, default=str) if args.json else format_info(data))
    return 0
