"""The ``vitkit`` command line: ``vitkit <command> ...``.

Each command lives in ``vitkit/commands/<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``; this file only wires them up and turns user errors into one line: a
mistyped option, a bad value (:class:`Parser`), a :class:`~vitkit.errors.VitkitError`, and a
warning (:func:`_plain_warning`) are each reported in the words of the command that was run.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import pkgutil
import re
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

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


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are two lines: a short usage line and one error line from
    the command that was run, with a did-you-mean for a near-miss option or choice.

    argparse's own error prints the whole usage (36 lines for ``train``), and an unknown option
    of a subcommand is reported by the top-level parser (``vitkit: error: unrecognized
    arguments``), naming neither the command nor the option meant. Every subparser is of this
    class too: ``add_subparsers`` makes its parsers of the parent's class.
    """

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's signature
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None:  # a command's parser: its leftovers are its own mistakes
            self.error(self._unrecognized(extras))
        return namespace, extras

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments: "):  # left over at the top level
            message = self._unrecognized(message.removeprefix("unrecognized arguments: ").split())
        sys.stderr.write(f"{self.short_usage()}\n{self.prog}: error: {_with_suggestion(message)}\n")
        sys.exit(2)

    def short_usage(self) -> str:
        """``usage: vitkit predict [options] RUN_OR_CHECKPOINT IMAGE_OR_FOLDER [...]``: the
        positionals only, and where to find the options."""
        words = [self.prog, "[options]"]
        for action in self._get_positional_actions():
            name = action.metavar or action.dest.upper()
            if isinstance(action, argparse._SubParsersAction):
                name = "COMMAND ..."
            words.append({"?": f"[{name}]", "*": f"[{name} ...]", "+": f"{name} [...]"}.get(action.nargs, name))
        return f"usage: {' '.join(words)}  (--help lists every option)"

    def _unrecognized(self, extras: list[str]) -> str:
        """``unrecognized argument --topk; did you mean --top-k?``, for the first unknown option
        (a value after it is not a second mistake), else the first stray word."""
        options = [a for a in extras if a.startswith("-") and len(a) > 1]
        if not options:
            return f"unrecognized argument {extras[0]!r}: {self.prog} takes no more positional arguments"
        wrong = options[0].split("=", 1)[0]
        known = [o for o in self._option_string_actions if o.startswith("--")]
        close = difflib.get_close_matches(wrong, known, n=1, cutoff=0.6)
        return f"unrecognized argument {wrong}" + (f"; did you mean {close[0]}?" if close else "")


def _with_suggestion(message: str) -> str:
    """argparse's ``invalid choice: 'trian' (choose from 'train', ...)`` with a did-you-mean."""
    m = re.search(r"invalid choice: '?([^' ]+)'? \(choose from (.*)\)$", message)
    if m is None:
        return message
    choices = [c.strip().strip("'") for c in m.group(2).split(",")]
    close = difflib.get_close_matches(m.group(1), choices, n=1, cutoff=0.6)
    return message + (f"; did you mean {close[0]}?" if close else "")


def _plain_warning(command: str):  # noqa: ANN202 - a warnings.showwarning
    """A ``warnings.showwarning`` that prints ``vitkit CMD: warning: MESSAGE``: one line in the
    user's words, not Python's format with the source file and line that warned."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 - warnings' API
        print(f"vitkit {command}: warning: {message}", file=file or sys.stderr)

    return show


def _command_modules() -> list:
    names = [m.name for m in pkgutil.iter_modules(_commands.__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return [importlib.import_module(f"{_commands.__name__}.{n}") for n in names]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
        with warnings.catch_warnings():  # restores Python's showwarning when the command returns
            warnings.showwarning = _plain_warning(args.command)
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
