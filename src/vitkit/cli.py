"""The ``vitkit`` command line: ``vitkit <command> ...``.

Each command lives in ``vitkit/commands/<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``; this file only wires them up and turns user errors into one line.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from . import __version__
from . import commands as _commands
from .errors import VitkitError

# The order commands appear in `vitkit --help`; a command module not listed here comes last.
ORDER = (
    "train",
    "pretrain",
    "evaluate",
    "predict",
    "probe",
    "embed",
    "explain",
    "serve",
    "convert",
    "export",
    "bench",
    "presets",
)


def _command_modules() -> list:
    names = [m.name for m in pkgutil.iter_modules(_commands.__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return [importlib.import_module(f"{_commands.__name__}.{n}") for n in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit",
        description="Vision Transformers (Dosovitskiy et al., 2021): train, classify, convert, and look inside.",
    )
    parser.add_argument("--version", action="version", version=f"vitkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("vitkit: interrupted", file=sys.stderr)
        return 130
    except (VitkitError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        # User errors (bad preset, bad file, bad checkpoint, a lost peer): one line, non-zero exit.
        print(f"vitkit {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
