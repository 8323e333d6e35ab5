"""`fastconv train`: train a CNN on fastconv's kernels (the training itself: fastconv.training).

    fastconv train                                   # LeNet-5 on scikit-learn's digits, 10-40 s
    fastconv train --dataset cifar10 --data-dir ~/data/cifar-10-batches-py --model resnet18_cifar
    fastconv train --backend torch ...               # the same model on torch.nn layers, for comparison
    torchrun --nproc_per_node=2 -m fastconv train    # data-parallel (gloo on CPU, nccl on GPU)
    fastconv train --resume runs/X/checkpoint.pt --epochs 30
    fastconv train --init runs/X/checkpoint.pt --classes 5,6,7,8,9 --finetune-lr 0.005   # transfer learning
    fastconv train --folds 5                         # 5-fold cross-validation: mean and spread of accuracy
    fastconv train --export onnx --export torchscript   # also model.onnx, model.torchscript.pt
    fastconv evaluate runs/X/checkpoint.pt
    fastconv predict runs/X/checkpoint.pt image.png folder/

Every option defaults to None here; fastconv.training.resolve_config fills in the checkpoint's values
(on --resume) and the defaults (fastconv.training.config). scikit-learn (digits), matplotlib (the
curves), tqdm (the progress bar) and Pillow (image folders) come with the 'train' extra and are
imported only when needed; a missing one stops the command with a one-line message.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional

from ..training.config import BACKEND_CHOICES, MODEL_NAMES
from ._util import csv, run_training_call

NAME = "train"
HELP = "train a CNN (default: LeNet-5 on scikit-learn's digits) on fastconv's kernels"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every option defaults to None here; resolve_config() fills in checkpoint values and defaults, so
    that a resumed run can tell an option given on the command line from one left out."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n")[1]
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=("digits", "cifar10", "folder"), default=None,
                   help="digits: scikit-learn's 8x8 handwritten digits (no download); cifar10: the CIFAR-10 "
                        "python batches in --data-dir; folder: an image folder, one sub-folder per class "
                        "(or train/ and test/ each with one per class) (default: digits)")
    d.add_argument("--data-dir", default=None, metavar="DIR", help="dataset directory (cifar10, folder)")
    d.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="resize images to NxN (default: digits 8, folder 32; cifar10 is 32)")
    d.add_argument("--train-subset", type=int, default=None, metavar="N", help="train on the first N samples only")
    d.add_argument("--test-subset", type=int, default=None, metavar="N", help="test on the first N samples only")
    d.add_argument("--augment", choices=("none", "shift", "crop-flip"), default=None,
                   help="training-time augmentation: shift = random translation by up to 1/8 of the image side "
                        "(pad with the background, crop back), crop-flip = the same plus a random horizontal "
                        "flip (default: digits shift, cifar10 and folder crop-flip)")
    d.add_argument("--workers", type=int, default=None, metavar="N", help="DataLoader worker processes (default 0)")

    m = p.add_argument_group("model and optimization")
    m.add_argument("--model", choices=MODEL_NAMES, default=None,
                   help="default: lenet5 for digits, resnet18_cifar for cifar10, resnet18 for folder. The "
                        "torchvision architectures (tv_resnet18, resnet50, mobilenet_v2, ..., vgg11) need "
                        "--image-size of at least their minimum on digits (8x8): 15 googlenet, 29 densenet121, "
                        "32 convnext_tiny and vgg11")
    m.add_argument("--width", type=float, default=None, metavar="W",
                   help="multiply the model's channel counts by W (default: 2 for lenet5 on digits, else 1; "
                        "of the torchvision architectures only mobilenet_v2 and mobilenet_v3_large have one)")
    m.add_argument("--blur-pool", action="store_true", default=None,
                   help="anti-aliased downsampling: strided max pools and strided convs become stride 1 followed "
                        "by a stride-2 fixed [1,2,1] low-pass filter (BlurPool2d, on fastconv's depthwise "
                        "kernels); lenet5, vgg_small, resnet18*, mobilenet")
    m.add_argument("--head", choices=("fc", "gap"), default=None,
                   help="lenet5's classifier head: fc (three linear layers, the default) or gap (global "
                        "average pooling + one linear layer; the other small-zoo models always use gap)")
    m.add_argument("--epochs", type=int, default=None, help="epochs in all (default: digits 40, cifar10 30, folder 20)")
    m.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="global batch size, split over the processes under torchrun (default: digits 32, "
                        "cifar10 128, folder 64)")
    m.add_argument("--lr", type=float, default=None, help="learning rate (default: sgd 0.05, adam/adamw 1e-3)")
    m.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=None,
                   help="default sgd (momentum 0.9, Nesterov)")
    m.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9)")
    m.add_argument("--weight-decay", type=float, default=None, help="default 5e-4")
    m.add_argument("--lr-schedule", choices=("cosine", "constant"), default=None, help="per-epoch schedule (default cosine)")
    m.add_argument("--label-smoothing", type=float, default=None, help="cross-entropy label smoothing (default 0)")
    m.add_argument("--seed", type=int, default=None, help="seed of the weights, the shuffling and the digits/folder "
                                                          "train/test split (default 0)")

    r = p.add_argument_group("execution")
    r.add_argument("--device", default=None, help="auto (the GPU if one is usable, else the CPU), cpu, cuda, cuda:N")
    r.add_argument("--backend", choices=BACKEND_CHOICES, default=None,
                   help="what computes conv/pool: auto (fastconv layers, fastconv's automatic kernel choice), "
                        "cpu/cuda/triton (fastconv layers on that kernel backend; cuda and triton are not in "
                        "this build), torch (the same model on torch.nn layers), reference (fastconv layers on "
                        "the pure-torch reference backend) (default auto)")
    r.add_argument("--dtype", choices=("float32", "float64"), default=None, help="parameter dtype (default float32)")
    r.add_argument("--amp", choices=("none", "fp16", "bf16"), default=None,
                   help="autocast to float16/bfloat16 on any backend: fastconv's custom ops cast their inputs "
                        "under autocast as torch's convolutions do (the cpu backend computes in fp32 and rounds); "
                        "fp16 uses a GradScaler (default none)")
    r.add_argument("--channels-last", action="store_true", default=None, help="channels_last memory format")
    r.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    r.add_argument("--progress", choices=("auto", "on", "off"), default=None,
                   help="per-epoch progress bar: auto = when stderr is a terminal (default); a summary line "
                        "per epoch is printed in any case")

    t = p.add_argument_group("transfer learning and cross-validation")
    t.add_argument("--init", default=None, metavar="CHECKPOINT_OR_STATE_DICT",
                   help="start from pretrained weights: a checkpoint.pt of `fastconv train` or a state_dict file "
                        "(e.g. torchvision's weights for the same architecture); the classifier head is replaced "
                        "when the class count differs (fastconv.training.transfer)")
    t.add_argument("--freeze-backbone", action="store_true", default=None,
                   help="with --init: train the classifier head only")
    t.add_argument("--finetune-lr", type=float, default=None, metavar="LR",
                   help="with --init: learning rate of the pretrained backbone (the head trains at --lr)")
    t.add_argument("--classes", type=csv, default=None, metavar="A,B,...",
                   help="keep only these classes (class names, e.g. 5,6,7,8,9 of digits), relabelled in this order")
    t.add_argument("--train-per-class", type=int, default=None, metavar="N",
                   help="train on the first N training images of each class (a few-shot training set)")
    t.add_argument("--folds", type=int, default=None, metavar="K",
                   help="K-fold cross-validation on the training split: K runs, each validated on one held-out "
                        "fold; metrics.json holds the per-fold metrics and their mean and spread")

    o = p.add_argument_group("output and checkpoints")
    o.add_argument("--out", default=None, metavar="DIR",
                   help="output directory for metrics.json, curves.png, checkpoint.pt (default: a new "
                        "runs/<model>-<dataset>-<time>/ under the current directory; with --resume, the "
                        "checkpoint's directory)")
    o.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue from a checkpoint (or a run directory: its latest complete checkpoint; "
                        "truncated ones, e.g. from a run killed while writing, are skipped) exactly as if training had not stopped (model, optimizer, "
                        "LR schedule, epoch, RNG states); training options not given are taken from it")
    o.add_argument("--save-every", type=int, default=None, metavar="N",
                   help="also keep checkpoint_epochN.pt every N epochs (checkpoint.pt is rewritten every epoch)")
    o.add_argument("--export", action="append", choices=("onnx", "torchscript", "exported"), default=None,
                   metavar="FORMAT",
                   help="also write the trained model next to the checkpoint, for deployment: onnx "
                        "(model.onnx, standard ONNX operators; needs the 'onnx' extra), torchscript "
                        "(model.torchscript.pt, torch.jit.trace), exported (model.pt2, torch.export); "
                        "repeat for several")
    o.add_argument("--eval-every", type=int, default=None, metavar="N",
                   help="evaluate on the test set every N epochs (default 1; always after the last)")


def _train_or_cross_validate(cfg) -> Dict[str, Any]:
    from ..training import train
    from ..training.evaluation import cross_validate

    return cross_validate(cfg) if cfg.folds else train(cfg)


def run(args: argparse.Namespace) -> int:
    from ..training import resolve_config

    return run_training_call(NAME, lambda: _train_or_cross_validate(resolve_config(args)))[1] or 0


def run_train(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """`fastconv train ARGS` as a function: parses argv, trains, returns the metrics (raises on errors)."""
    from ..training import resolve_config

    parser = argparse.ArgumentParser(prog="fastconv train")
    add_arguments(parser)
    return _train_or_cross_validate(resolve_config(parser.parse_args(argv)))
