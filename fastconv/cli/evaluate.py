"""`fastconv evaluate CHECKPOINT`: accuracy, per-class accuracy and confusion matrix of a checkpoint
written by `fastconv train`, on its dataset (fastconv.training.evaluate_checkpoint)."""
from __future__ import annotations

import argparse

from ..training.config import BACKEND_CHOICES
from ._util import run_training_call

NAME = "evaluate"
HELP = "accuracy, per-class accuracy and confusion matrix of a checkpoint on its dataset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint.pt written by `fastconv train`")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="the dataset directory, if it moved since training (default: the one it was trained on)")
    p.add_argument("--split", choices=("test", "train"), default="test", help="default test")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="as for train (default auto)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from ..training import evaluate_checkpoint, report
    from ..training.engine import dumps

    res, err = run_training_call(NAME, lambda: evaluate_checkpoint(args.checkpoint, args.device, args.backend,
                                                                   args.data_dir, args.batch_size, args.split))
    if err is not None:
        return err
    conf = res.pop("_confusion")
    if args.json:
        print(dumps(res))
        return 0
    print(f"{args.split} accuracy: {100 * res['accuracy']:.2f}% ({res['correct']}/{res['total']})  loss "
          f"{res['loss']:.4f}  [backend {res['backend']}, {res['device']}]")
    print("per-class accuracy:")
    print("\n".join(report.format_per_class(res["classes"], conf)))
    print("\n".join(report.format_confusion(res["classes"], conf)))
    return 0
