"""Reading, validating and writing trace files (format v1, see ``docs/trace-format.md``).

A trace file is JSON Lines (``.jsonl``) or gzipped JSON Lines (``.jsonl.gz``), one workflow
per line. Parsing is strict: every problem becomes a ``Problem`` naming the file, the line and
the field as a JSON path (``steps[3].prompt[1].tokens``). Nothing is ever repaired or dropped
quietly: a line either loads whole, or (with ``skip_invalid``) is skipped and counted with its
reasons in the ``LoadResult``.

    problems.py     Problem, TraceError, LoadResult: what a load reports
    line_parser.py  one line -> one Workflow (fields, types, order within the workflow)
    file_checks.py  checks that span lines (duplicate ids, app-scoped content lengths)
    reader.py       the bounded reader: read_workflows, iter_workflows, load_workflows,
                    validate_file
    writer.py       dumps_workflow, write_workflows (atomic, byte-identical output)
"""

from __future__ import annotations

from pbkv.training.trace_io.problems import LoadResult, Problem, TraceError
from pbkv.training.trace_io.reader import (
    DEFAULT_MAX_LINE_BYTES,
    iter_workflows,
    load_workflows,
    read_workflows,
    validate_file,
)
from pbkv.training.trace_io.writer import dumps_workflow, write_workflows

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "LoadResult",
    "Problem",
    "TraceError",
    "dumps_workflow",
    "iter_workflows",
    "load_workflows",
    "read_workflows",
    "validate_file",
    "write_workflows",
]
