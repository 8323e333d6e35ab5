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
    c = p.add_argument_group("conformal prediction and calibration (fastconv.training.evaluation)")
    c.add_argument("--conformal", type=float, default=None, metavar="ALPHA",
                   help="split conformal prediction sets at miscoverage ALPHA (e.g. 0.1 for 90%%): calibrated on "
                        "a random part of the test split, coverage and mean set size reported on the rest; also "
                        "writes a reliability diagram with the expected calibration error (ECE)")
    c.add_argument("--calibration-fraction", type=float, default=0.5, metavar="F",
                   help="share of the test split used for calibration (default 0.5)")
    c.add_argument("--calibration-seed", type=int, default=0, metavar="S",
                   help="seed of the calibration / evaluation split (default 0)")
    c.add_argument("--reliability-png", default=None, metavar="FILE",
                   help="where the reliability diagram goes (default: reliability.png next to the checkpoint)")


def run_conformal(args: argparse.Namespace) -> int:
    from ..training.engine import dumps
    from ..training.evaluation import conformal_evaluate

    res, err = run_training_call(NAME, lambda: conformal_evaluate(
        args.checkpoint, args.conformal, args.device, args.backend, args.data_dir, args.batch_size,
        args.calibration_fraction, args.calibration_seed, args.reliability_png))
    if err is not None:
        return err
    if args.json:
        print(dumps(res))
        return 0
    lo, hi = res["expected_coverage"]
    ilo, ihi = res["coverage_interval_99_9"]
    print(f"split conformal prediction, alpha {res['alpha']}: calibrated on {res['n_calibration']} test images "
          f"(qhat {res['qhat']:.4f}), evaluated on the other {res['n_evaluation']}",
          f"  coverage {100 * res['coverage']:.2f}% (guaranteed on average: {100 * lo:.2f}% .. {100 * hi:.2f}%; "
          f"99.9% range for {res['n_evaluation']} images: {100 * ilo:.2f}% .. {100 * ihi:.2f}%)",
          f"  mean set size {res['mean_set_size']:.3f} classes; sets of size 0, 1, 2, ...: {res['set_size_counts']}",
          f"calibration: test accuracy {100 * res['accuracy']:.2f}%, expected calibration error (ECE, 10 bins) "
          f"{100 * res['ece']:.2f}%; reliability diagram {res['reliability_png']}", sep="\n")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..training import evaluate_checkpoint, report

    if args.conformal is not None:
        return run_conformal(args)
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
