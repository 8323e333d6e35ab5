"""The `fastconv` command (also `python -m fastconv`): one module per subcommand.

    info      fastconv.cli.info      -> fastconv.info (build and availability report)
    demo      fastconv.cli.demo      -> fastconv.demo (every op once against torch)
    train     fastconv.cli.train     -> fastconv.training (training loop, checkpoints, DDP)
    evaluate  fastconv.cli.evaluate  -> fastconv.training
    predict   fastconv.cli.predict   -> fastconv.training
    explain   fastconv.cli.explain   -> fastconv.explain (Grad-CAM, saliency, SmoothGrad PNGs)
    bench     fastconv.cli.bench     -> fastconv.benchmarks (sweep, records, report, charts, compare)
    profile   fastconv.cli.profile   -> fastconv.profiling (named ranges, profile_model, ncu command)

A command module defines NAME, HELP, add_arguments(parser) and run(args) -> exit code; it parses and
checks the arguments and calls the machinery, which imports its heavy or optional dependencies
(scikit-learn, matplotlib, tqdm, Pillow for train / evaluate / predict / explain) only when the command runs.
"""
from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import Dict, List, Optional

from . import bench, demo, evaluate, explain, info, predict, profile, train

# name -> command module, in the order `fastconv --help` lists them
COMMANDS: Dict[str, ModuleType] = {m.NAME: m for m in (info, demo, train, evaluate, predict, explain, bench, profile)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastconv", description="fastconv: fast convolution kernels for PyTorch")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return COMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
