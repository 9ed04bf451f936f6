"""The ``maskrt`` console script: one entry point, one subcommand family per part.

Each part owns its subcommands in its own ``cli.py`` (``register(subparsers)``); this module only
assembles them, so ``maskrt --help`` stays fast (parts import torch lazily, inside ``run``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from maskrt.errors import MaskrtError

PARTS = ("maskrt.model.cli", "maskrt.export.cli", "maskrt.server.cli", "maskrt.bench.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskrt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in PARTS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MaskrtError as exc:
        print(f"maskrt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
