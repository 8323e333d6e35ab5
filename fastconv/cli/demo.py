"""`fastconv demo`: every op once on the chosen backend against torch (fastconv.demo)."""
from __future__ import annotations

import argparse

NAME = "demo"
HELP = "run every fastconv op once against torch and print the error and timing"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", help="backend to run (default: auto)")


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(args.backend)
