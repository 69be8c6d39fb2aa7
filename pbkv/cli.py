"""The ``pbkv`` command. Each component adds its subcommands in its own ``cli`` module.

A component module listed in ``COMMAND_MODULES`` exposes ``register(subparsers)`` which adds
parsers whose ``func`` attribute runs the command and returns an exit code. Modules are
imported only when the CLI starts, so heavy dependencies stay out of the service's hot path.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "pbkv.training.cli",  # traces validate|import|stats|synth
    "pbkv.training.train_cli",  # train, evaluate
    "pbkv.service.cli",  # serve, export-traces
    "pbkv.engine_adapter.cli",  # model make-tiny
    "pbkv.dashboard.cli",  # report
    "pbkv.bench.cli",  # bench predictor|policies|service|vllm|planner|dashboard; demo, replay
)


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pbkv", description="Prediction-driven KV-cache manager for multi-agent workflows."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # component not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"pbkv: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
