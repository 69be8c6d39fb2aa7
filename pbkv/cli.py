"""The ``pbkv`` command. Each component adds its subcommands in its own ``cli`` module.

A component module listed in ``COMMAND_MODULES`` exposes ``register(subparsers)`` which adds
parsers whose ``func`` attribute runs the command and returns an exit code. Modules are
imported only when the CLI starts, so heavy dependencies stay out of the service's hot path.

Conventions every command follows (``tests/test_cli_conventions.py`` checks them):
  * every option has help text; ``--help`` shows its default (``HelpFormatter``);
  * arguments are checked before any work starts;
  * an expected failure (a ``pbkv.errors.UserError``: unknown name, bad trace file, bad model
    directory, bad argument; or a named file that cannot be opened, ``FILE_ERRORS``) prints
    one ``pbkv: error: ...`` line and exits 2, no traceback (``PBKV_TRACEBACK=1`` shows it);
  * tables are printed through ``table_console()`` so a pipe gets them whole;
  * outputs: ``--out PATH`` names the file or folder a command writes (each command says
    which); ``--json`` is a switch that prints machine-readable JSON on stdout instead of text.
    Older spellings (``--out-dir``, ``--json FILE``) still work as ``DeprecatedAlias`` options
    that print one ``pbkv: warning:`` line;
  * long work shows a progress bar on stderr (``pbkv.bench.progress``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from pbkv import __version__
from pbkv.errors import UserError

COMMAND_MODULES = (
    "pbkv.training.cli",  # traces validate|import|stats|synth
    "pbkv.training.train_cli",  # train, evaluate
    "pbkv.service.cli",  # serve, export-traces
    "pbkv.service.cluster.cli",  # cluster status
    "pbkv.engine_adapter.cli",  # model make-tiny
    "pbkv.dashboard.cli",  # report
    "pbkv.bench.cli",  # bench predictor|policies|service|vllm|planner|dashboard; demo, replay
)
USER_ERROR_EXIT = 2
# A file the user named that cannot be read or written is their error, not pbkv's; set
# PBKV_TRACEBACK=1 to see where one of these came from.
FILE_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
PIPE_TABLE_WIDTH = 200  # columns a table may use when stdout is not a terminal


class CliError(UserError):
    """A user-facing error raised by a command: printed without a traceback, exit code 2."""


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless it names its default already or
    has none worth showing (``None``, a switch's ``False``, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default" in text.lower()
            or not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or default == []
        ):
            return text
        return f"{text} (default: %(default)s)"


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores into the new option's ``dest`` and prints one
    ``pbkv: warning: OLD is deprecated; use NEW`` line. ``parser.add_argument("--out-dir",
    dest="out", action=DeprecatedAlias, new="--out")``."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", f"deprecated spelling of {new}")
        kwargs.setdefault("default", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        warn(f"{option_string} is deprecated; use {self.new}")
        setattr(namespace, self.dest, values)


def warn(message: str) -> None:
    """One ``pbkv: warning: ...`` line on stderr."""
    print(f"pbkv: warning: {message}", file=sys.stderr, flush=True)


def subparsers_of(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every parser below it, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases repeat a parser
                yield from subparsers_of(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pbkv", description="Prediction-driven KV-cache manager for multi-agent workflows."
    )
    parser.add_argument("--version", action="version", version=f"pbkv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # component not built yet
                continue
            raise
        module.register(sub)
    for each in subparsers_of(parser):
        each.formatter_class = HelpFormatter
    return parser


def table_console() -> Any:
    """A rich ``Console`` for tables: the terminal's width, or ``PIPE_TABLE_WIDTH`` columns
    when stdout is a pipe or a file (rich would otherwise cut every table to 80 columns)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=PIPE_TABLE_WIDTH)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return USER_ERROR_EXIT
    try:
        return int(args.func(args) or 0)
    except (UserError, *FILE_ERRORS) as exc:
        if os.environ.get("PBKV_TRACEBACK"):
            raise
        print(f"pbkv: error: {_message(exc)}", file=sys.stderr)
        return USER_ERROR_EXIT
    except BrokenPipeError:  # `pbkv ... | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _message(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
