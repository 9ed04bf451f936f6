"""The ``maskrt`` console script: one entry point, one subcommand family per part.

Each part's subcommands have a module here (``register(subparsers)``); this one only assembles
them, so ``maskrt --help`` stays fast (parts import torch lazily, inside ``run``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from maskrt import __version__
from maskrt.errors import MaskrtError
from maskrt.quiet import ignore_expected_warnings

PARTS = (
    "maskrt.cli.model",
    "maskrt.cli.export",
    "maskrt.cli.serve",
    "maskrt.cli.predict",
    "maskrt.cli.bench",
)


class HelpFormatter(argparse.HelpFormatter):
    """Help that states each option's default (unless it has none or the text already does)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default:" in text or not _shows(action.default) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _shows(default: object) -> bool:
    return default is not None and default is not False and default != argparse.SUPPRESS


def _subparsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _subparsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskrt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"maskrt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in PARTS:
        importlib.import_module(name).register(sub)
    for each in _subparsers(parser):
        each.formatter_class = HelpFormatter
        for action in each._actions:
            if action.help is None and action.option_strings and _shows(action.default):
                action.help = "(default: %(default)s)"
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    ignore_expected_warnings()
    try:
        return int(args.func(args) or 0)
    except MaskrtError as exc:
        print(f"maskrt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
