"""The `fastconv` command (also `python -m fastconv`).

Subcommands: info (build/availability report), demo (a short check of every op against torch).
Further subcommands (train, evaluate, predict, bench, profile) register themselves in COMMANDS.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Dict, List, Optional, Tuple

# name -> (help, add_arguments(parser), run(args) -> exit code)
COMMANDS: Dict[str, Tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def decorator(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help, add_arguments, run)
        return run

    return decorator


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")


@command("info", "print what was built and which backends are available", _info_args)
def _info(args: argparse.Namespace) -> int:
    from .info import format_info, info_dict

    data = info_dict()
    print(json.dumps(data, indent=2, default=str) if args.json else format_info(data))
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", help="backend to run (default: auto)")


@command("demo", "run every fastconv op once against torch and print the error and timing", _demo_args)
def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.backend)


def _register_optional_commands() -> None:
    """Subcommands that live in their own modules register on import; a missing one is skipped."""
    import importlib

    for module in ("fastconv.train", "fastconv.bench", "fastconv.profile"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def main(argv: Optional[List[str]] = None) -> int:
    _register_optional_commands()
    parser = argparse.ArgumentParser(prog="fastconv", description="fastconv: fast convolution kernels for PyTorch")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
