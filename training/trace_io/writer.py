"""Writing trace files: one workflow per line, atomically, byte-identical for the same
workflows (gzip with a fixed mtime for a ``.gz`` suffix)."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pbkv.trace import Workflow, to_dict


def dumps_workflow(workflow: Workflow) -> str:
    """One trace line (no newline)."""
    return json.dumps(to_dict(workflow), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def write_workflows(path: str | os.PathLike[str], workflows: Iterable[Workflow]) -> int:
    """Write a trace file atomically (``.gz`` suffix: gzip, with a fixed mtime so the same
    workflows always give the same bytes). Returns the number of workflows written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    count = 0
    try:
        with open(tmp, "wb") as raw:
            if target.name.endswith(".gz"):
                fh: Any = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
            else:
                fh = raw
            try:
                for wf in workflows:
                    fh.write(dumps_workflow(wf).encode("utf-8") + b"\n")
                    count += 1
            finally:
                if fh is not raw:
                    fh.close()
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count
