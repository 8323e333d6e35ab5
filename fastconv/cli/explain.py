"""`fastconv explain CHECKPOINT IMAGE_OR_FOLDER...`: a PNG per image with the image, a heatmap of what
the prediction rests on (Grad-CAM, saliency or SmoothGrad) and the top-k classes (fastconv.explain)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..training.config import BACKEND_CHOICES
from ._util import run_training_call

NAME = "explain"
HELP = "Grad-CAM / saliency heatmaps of a checkpoint's predictions, one PNG per image"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint.pt written by `fastconv train`")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files, or folders searched recursively for images (preprocessed as for predict)")
    p.add_argument("--method", choices=("gradcam", "saliency", "smoothgrad"), default="gradcam",
                   help="gradcam: class activation map at a conv layer; saliency: |d logit / d input|; "
                        "smoothgrad: saliency averaged over noisy copies (default gradcam)")
    p.add_argument("--layer", default=None, metavar="NAME",
                   help="Grad-CAM's conv layer, a module name such as features.2 (default: the last conv layer)")
    p.add_argument("--target", default=None, metavar="CLASS",
                   help="explain this class (a class name) instead of the predicted one")
    p.add_argument("--top-k", type=int, default=3, help="classes listed in the PNG (default 3)")
    p.add_argument("--samples", type=int, default=25, help="smoothgrad: noisy copies per image (default 25)")
    p.add_argument("--noise", type=float, default=0.15,
                   help="smoothgrad: noise std as a fraction of the image's value range (default 0.15)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the PNGs go (default: explain/ next to the checkpoint)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="as for train (default auto)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from ..explain import explain_files
    from ..training.engine import dumps

    out = args.out or str(Path(args.checkpoint).expanduser().parent / "explain")
    res, err = run_training_call(NAME, lambda: explain_files(
        args.checkpoint, args.inputs, out, args.method, args.layer, args.target, args.top_k, args.samples,
        args.noise, args.device, args.backend))
    if err is not None:
        return err
    if args.json:
        print(dumps(res))
        return 0
    for r in res:
        tops = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"])
        print(f"{r['file']}: {tops}  -> {r['png']}")
    return 0
