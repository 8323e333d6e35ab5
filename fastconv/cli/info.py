"""`fastconv info`: what was built and which backends are available (fastconv.info)."""
from __future__ import annotations

import argparse
import json

NAME = "info"
HELP = "print what was built and which backends are available"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from ..info import format_info, info_dict

    data = info_dict()
    print(json.dumps(data, indent=2, default=str) if args.json else format_info(data))
    return 0
