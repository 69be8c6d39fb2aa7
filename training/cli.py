"""``pbkv traces ...``: validate, stats, import, synth.

pbkv traces validate FILE             every problem (file:line: field: message); exit 1 if any
pbkv traces stats FILE [--json]       agents, steps, transition tables, entropy, tokens
pbkv traces import --format NAME SRC OUT
pbkv traces synth ...                 pbkv.training.synth's options (if that module exists)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from pbkv.cli import CliError
from pbkv.training.importers.base import plural

SYNTH_MODULE = "pbkv.training.synth_cli"


def register(subparsers: argparse._SubParsersAction) -> None:
    traces = subparsers.add_parser("traces", help="trace files: validate, stats, import, synth")
    sub = traces.add_subparsers(dest="traces_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("validate", help="report every problem in a trace file (exit 1 if any)")
    p.add_argument("file", type=Path, help="trace file (.jsonl or .jsonl.gz)")
    p.add_argument(
        "--max-line-bytes",
        type=_positive_int,
        default=None,
        help="reject longer lines unread (default 32 MiB)",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("stats", help="agents, steps, transitions and how dynamic, per app")
    p.add_argument("file", type=Path, help="trace file (.jsonl or .jsonl.gz)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="summarise the valid workflows of a file with bad lines",
    )
    p.add_argument(
        "--table-agents",
        type=_positive_int,
        default=8,
        help="agents shown in the transition table before folding",
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="also measure prompt reuse: perfect-prefix and non-prefix shares "
        "(materialises every prompt; slow on large files)",
    )
    p.set_defaults(func=cmd_stats)

    from pbkv.training.importers import IMPORTERS  # light: no heavy dependencies

    p = sub.add_parser("import", help="import real framework logs into trace format v1")
    p.add_argument(
        "--format",
        required=True,
        choices=IMPORTERS.names(),
        dest="fmt",
        help="the framework whose logs SRC holds (see docs/importers.md)",
    )
    p.add_argument("src", type=Path, help="a log file or a folder of them")
    p.add_argument("out", type=Path, help="output .jsonl or .jsonl.gz")
    p.add_argument(
        "--max-text-chars",
        type=_non_negative_int,
        default=None,
        help="truncate each input/output text to this many characters",
    )
    p.add_argument("--no-text", action="store_true", help="leave input/output texts out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    if importlib.util.find_spec(SYNTH_MODULE) is not None:
        # synth is stdlib-only at import time; its heavy work starts in run()
        synth = importlib.import_module(SYNTH_MODULE)
        p = sub.add_parser("synth", help="synthetic workloads (static | dynamic)")
        synth.add_arguments(p)
        p.set_defaults(func=synth.run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def cmd_validate(args: argparse.Namespace) -> int:
    from pbkv.training.trace_io import DEFAULT_MAX_LINE_BYTES, read_workflows

    result = read_workflows(
        args.file, skip_invalid=True, max_line_bytes=args.max_line_bytes or DEFAULT_MAX_LINE_BYTES
    )
    for problem in result.problems:
        print(problem)
    steps = sum(len(w.steps) for w in result.workflows)
    if result.problems:
        print(
            f"{args.file}: {plural(len(result.problems), 'problem')}; {result.summary()}",
            file=sys.stderr,
        )
        return 1
    print(
        f"{args.file}: valid ({plural(len(result.workflows), 'workflow')}, {plural(steps, 'step')})"
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from pbkv.training.stats import format_app_stats, trace_stats
    from pbkv.training.trace_io import TraceError, read_workflows

    if not args.file.is_file():
        raise CliError(f"{args.file}: no such file")
    try:
        result = read_workflows(args.file, skip_invalid=args.skip_invalid)
    except TraceError as exc:
        raise CliError(
            f"{exc}\n(run `pbkv traces validate {args.file}` for every problem, "
            f"or pass --skip-invalid to summarise the valid lines)"
        ) from None
    if result.problems:
        print(result.summary(), file=sys.stderr)
    stats = trace_stats(result.workflows, reuse=args.reuse)
    if args.json:
        text = json.dumps([s.to_dict() for s in stats], indent=2)
    else:
        text = "\n\n".join(format_app_stats(s, max_table_agents=args.table_agents) for s in stats)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `pbkv traces stats F | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from pbkv.training.importers import ImportOptions, import_source
    from pbkv.training.trace_io import write_workflows

    if not args.src.exists():
        raise CliError(f"SRC {args.src}: no such file or folder")
    name = args.out.name
    if not (name.endswith(".jsonl") or name.endswith(".jsonl.gz")):
        raise CliError(f"OUT {args.out}: must end in .jsonl or .jsonl.gz")
    options = ImportOptions(max_text_chars=args.max_text_chars, keep_text=not args.no_text)
    result = import_source(
        args.fmt, args.src, options, progress=_progress_bar(args.no_progress, args.fmt)
    )
    if not result.workflows:
        raise CliError(
            f"--format {args.fmt} recognised no run in {args.src} "
            f"({result.summary().replace(chr(10), '; ')}); "
            f"{_looks_like(args.src, args.fmt)}; nothing written"
        )
    count = write_workflows(args.out, result.workflows)
    print(result.summary())
    print(f"wrote {plural(count, 'workflow')} to {args.out}")
    return 0


def _looks_like(src: Path, fmt: str) -> str:
    from pbkv.training.importers import IMPORTERS, detect_formats

    formats = [f for f in detect_formats(src) if f != fmt]
    if formats:
        return f"the files look like {' or '.join(formats)}: try --format {formats[0]}"
    return f"the files look like none of the known formats ({', '.join(IMPORTERS.names())})"


def _progress_bar(disabled: bool, what: str):
    def wrap(paths: Iterable[Path]) -> Iterable[Path]:
        from tqdm import tqdm

        items = list(paths)
        # tqdm hides itself when stderr is not a terminal (disable=None)
        return tqdm(
            items,
            desc=f"import {what}",
            unit="file",
            disable=True if disabled else None,
            file=sys.stderr,
        )

    return wrap
