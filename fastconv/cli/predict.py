"""`fastconv predict CHECKPOINT IMAGE_OR_FOLDER...`: classify image files with a checkpoint written by
`fastconv train` (fastconv.training.predict_files)."""
from __future__ import annotations

import argparse

from ..training.config import BACKEND_CHOICES
from ._util import run_training_call

NAME = "predict"
HELP = "classify image files or folders with a checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint.pt written by `fastconv train`")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files, or folders searched recursively for images. They are converted and "
                        "resized as the training images were (digits: greyscale 8x8, inverted when the "
                        "background is light, since the digits are light ink on dark)")
    p.add_argument("--top-k", type=int, default=1, help="print the k most likely classes (default 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="as for train (default auto)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")


def run(args: argparse.Namespace) -> int:
    from ..training import predict_files
    from ..training.engine import dumps

    preds, err = run_training_call(NAME, lambda: predict_files(args.checkpoint, args.inputs, args.device,
                                                               args.backend, args.top_k))
    if err is not None:
        return err
    if args.json:
        print(dumps(preds))
        return 0
    for p in preds:
        tops = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in p["top"])
        print(f"{p['file']}: {tops}")
    return 0
