"""``pbkv report BENCH.json [--out report.html]``: a self-contained HTML report of a bench
result (the same page the dashboard serves at ``/bench/<name>``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "report", help="write a self-contained HTML report of a bench JSON", description=__doc__
    )
    parser.add_argument(
        "bench",
        type=Path,
        metavar="BENCH.json",
        help="a result file written by `pbkv bench ... --out DIR`",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="HTML file to write (default: BENCH.json with .html)"
    )
    parser.add_argument("--title", default=None, help="report title (default: the file name)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pbkv.cli import CliError
    from pbkv.dashboard.report import ReportError, load_bench, render_report

    out = args.out if args.out is not None else args.bench.with_suffix(".html")
    try:
        html = render_report(load_bench(args.bench), title=args.title or args.bench.name)
    except ReportError as exc:
        raise CliError(str(exc)) from None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"--out {out}: cannot write: {exc.strerror or exc}") from None
    print(f"wrote {out} ({len(html.encode()):,} bytes)")
    return 0
