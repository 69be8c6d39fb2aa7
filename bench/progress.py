"""Progress bars for long commands (``pbkv bench ...``, ``pbkv demo``): the one place they are
made.

A bar goes to stderr (stdout keeps the command's results, so ``> file`` and ``| jq`` see only
them) and shows a count, the elapsed time and an ETA. ``--progress`` / ``--no-progress``
(``add_progress_argument``) choose; with neither, bars are shown when stderr is a terminal and
left out otherwise (a log file gets no carriage-return noise; ``--progress`` forces them).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar with counts and an ETA on stderr (default: shown "
        "when stderr is a terminal; --progress forces it, --no-progress "
        "turns it off)",
    )


def enabled(args: argparse.Namespace) -> bool:
    """Whether ``args`` (from a parser with ``add_progress_argument``) asks for bars."""
    chosen = getattr(args, "progress", None)
    return sys.stderr.isatty() if chosen is None else bool(chosen)


class Bar:
    """One bar: ``advance(n)``, ``describe(text)``, ``close()``; a no-op when progress is
    off."""

    def __init__(self, bar: Any | None) -> None:
        self._bar = bar

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(text)

    def close(self) -> None:
        """Take the bar off the screen's last line (before the command prints more)."""
        if self._bar is not None:
            self._bar.close()


@contextmanager
def progress(
    args: argparse.Namespace, total: int | None, desc: str, unit: str = "run"
) -> Iterator[Bar]:
    """A bar of ``total`` ``unit``s on stderr (off: a bar that does nothing)."""
    if not enabled(args):
        yield Bar(None)
        return
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=True,
        bar_format="{desc}: {n_fmt}/{total_fmt} {unit}s |{bar}| {elapsed} elapsed, ETA {remaining}",
    )
    try:
        yield Bar(bar)
    finally:
        bar.close()
