"""One trace line (a decoded JSON object) into a ``Workflow``, strictly.

``LineParser(path, line).workflow(obj)`` returns the workflow, or ``None`` with every problem
found in ``problems``: unknown and missing fields, wrong types, negative counts, unknown segment
kinds, and the checks between the steps of one workflow (start times in order, a ``system:X``
segment names an agent of the workflow, a history never shrinks). Nothing is repaired: a field
path such as ``steps[3].prompt[1].tokens`` names each problem. Checks that span lines live in
``file_checks.py``.
"""

from __future__ import annotations

import math
from typing import Any

from pbkv.trace import FORMAT_VERSION, SEGMENT_KINDS, Segment, Step, Workflow
from pbkv.training.trace_io.problems import Problem

WORKFLOW_FIELDS = {"format", "workflow_id", "app", "tenant", "task", "arrival_s", "meta", "steps"}
WORKFLOW_REQUIRED = ("format", "workflow_id", "app", "steps")
STEP_FIELDS = {
    "agent",
    "prompt",
    "output_tokens",
    "parallel_group",
    "start_s",
    "end_s",
    "input_text",
    "output_text",
    "phase",
    "meta",
}
STEP_REQUIRED = ("agent", "prompt", "output_tokens")
SEGMENT_FIELDS = {"id", "tokens"}


class LineParser:
    """Parses one decoded JSON object into a Workflow, collecting every problem."""

    def __init__(self, path: str, line: int) -> None:
        self.path = path
        self.line = line
        self.problems: list[Problem] = []

    def bad(self, where: str, message: str) -> None:
        self.problems.append(Problem(self.path, self.line, where, message))

    def _fields(
        self, obj: dict[str, Any], where: str, allowed: set[str], required: tuple[str, ...]
    ) -> None:
        prefix = f"{where}." if where else ""
        for key in sorted(set(obj) - allowed):
            self.bad(f"{prefix}{key}", "unknown field")
        for key in required:
            if key not in obj:
                self.bad(f"{prefix}{key}", "missing required field")

    def _str(
        self,
        obj: dict[str, Any],
        key: str,
        where: str,
        *,
        optional: bool = False,
        nonempty: bool = True,
        default: str | None = None,
    ) -> str | None:
        value = obj.get(key, default)
        if value is None:
            if not optional and key in obj:
                self.bad(where, "must be a string, got null")
            return None
        if not isinstance(value, str):
            self.bad(where, f"must be a string, got {type_name(value)}")
            return None
        if nonempty and not value.strip():
            self.bad(where, "must not be empty")
            return None
        return value

    def _int(self, obj: dict[str, Any], key: str, where: str) -> int | None:
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            if key in obj:
                self.bad(where, f"must be an integer, got {type_name(value)}")
            return None
        if value < 0:
            self.bad(where, f"must be >= 0, got {value}")
            return None
        return value

    def _time(self, obj: dict[str, Any], key: str, where: str) -> float | None:
        value = obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.bad(where, f"must be a number or null, got {type_name(value)}")
            return None
        if not math.isfinite(value) or value < 0:
            self.bad(where, f"must be a finite number >= 0, got {value}")
            return None
        return float(value)

    def _meta(self, obj: dict[str, Any], where: str) -> dict[str, Any]:
        value = obj.get("meta", {})
        if not isinstance(value, dict):
            self.bad(where, f"must be an object, got {type_name(value)}")
            return {}
        return value

    def segment(self, obj: Any, where: str) -> Segment | None:
        if not isinstance(obj, dict):
            self.bad(where, f"must be an object, got {type_name(obj)}")
            return None
        self._fields(obj, where, SEGMENT_FIELDS, ("id", "tokens"))
        seg_id = self._str(obj, "id", f"{where}.id")
        tokens = self._int(obj, "tokens", f"{where}.tokens")
        if seg_id is not None:
            kind, sep, name = seg_id.partition(":")
            if kind not in SEGMENT_KINDS:
                self.bad(
                    f"{where}.id",
                    f"unknown segment kind {kind!r} in {seg_id!r}; "
                    f"known: {', '.join(SEGMENT_KINDS)}",
                )
                seg_id = None
            elif kind == "new" and sep:
                self.bad(f"{where}.id", f"'new' takes no name, got {seg_id!r}")
                seg_id = None
            elif kind != "new" and not name:
                self.bad(f"{where}.id", f"{kind!r} needs a name: '{kind}:<name>'")
                seg_id = None
        if seg_id is None or tokens is None:
            return None
        return Segment(seg_id, tokens)

    def step(self, obj: Any, where: str) -> Step | None:
        if not isinstance(obj, dict):
            self.bad(where, f"must be an object, got {type_name(obj)}")
            return None
        before = len(self.problems)
        self._fields(obj, where, STEP_FIELDS, STEP_REQUIRED)
        agent = self._str(obj, "agent", f"{where}.agent")
        output_tokens = self._int(obj, "output_tokens", f"{where}.output_tokens")
        prompt_raw = obj.get("prompt")
        segments: list[Segment] = []
        if "prompt" in obj and not isinstance(prompt_raw, list):
            self.bad(f"{where}.prompt", f"must be an array, got {type_name(prompt_raw)}")
        elif isinstance(prompt_raw, list):
            for j, seg_obj in enumerate(prompt_raw):
                seg = self.segment(seg_obj, f"{where}.prompt[{j}]")
                if seg is not None:
                    segments.append(seg)
        complete = isinstance(prompt_raw, list) and len(segments) == len(prompt_raw)
        if complete and sum(s.tokens for s in segments) == 0:
            self.bad(f"{where}.prompt", "a prompt needs at least one token")
        start_s = self._time(obj, "start_s", f"{where}.start_s")
        end_s = self._time(obj, "end_s", f"{where}.end_s")
        if start_s is not None and end_s is not None and end_s < start_s:
            self.bad(f"{where}.end_s", f"ends before it starts ({end_s} < start_s {start_s})")
        texts = {
            k: self._str(obj, k, f"{where}.{k}", optional=True, nonempty=False)
            for k in ("input_text", "output_text")
        }
        group = self._str(obj, "parallel_group", f"{where}.parallel_group", optional=True)
        phase = self._str(obj, "phase", f"{where}.phase", optional=True)
        meta = self._meta(obj, f"{where}.meta")
        if len(self.problems) > before or agent is None or output_tokens is None:
            return None
        return Step(
            agent=agent,
            prompt=tuple(segments),
            output_tokens=output_tokens,
            parallel_group=group,
            start_s=start_s,
            end_s=end_s,
            input_text=texts["input_text"],
            output_text=texts["output_text"],
            phase=phase,
            meta=meta,
        )

    def workflow(self, obj: Any) -> Workflow | None:
        if not isinstance(obj, dict):
            self.bad("", f"a line must hold one JSON object, got {type_name(obj)}")
            return None
        self._fields(obj, "", WORKFLOW_FIELDS, WORKFLOW_REQUIRED)
        fmt = obj.get("format")
        if "format" in obj and fmt != FORMAT_VERSION:
            self.bad("format", f"must be {FORMAT_VERSION!r}, got {fmt!r}")
        workflow_id = self._str(obj, "workflow_id", "workflow_id")
        app = self._str(obj, "app", "app")
        tenant = self._str(obj, "tenant", "tenant", default="default")
        task = self._str(obj, "task", "task", nonempty=False, default="")
        arrival_s = self._time(obj, "arrival_s", "arrival_s")
        meta = self._meta(obj, "meta")
        steps_raw = obj.get("steps")
        steps: list[Step | None] = []
        if "steps" in obj and not isinstance(steps_raw, list):
            self.bad("steps", f"must be an array, got {type_name(steps_raw)}")
        elif isinstance(steps_raw, list):
            if not steps_raw:
                self.bad("steps", "a workflow needs at least one step")
            steps = [self.step(s, f"steps[{i}]") for i, s in enumerate(steps_raw)]
        if self.problems:
            return None
        assert workflow_id is not None and app is not None and tenant is not None
        wf = Workflow(
            workflow_id=workflow_id,
            app=app,
            tenant=tenant,
            task=task or "",
            arrival_s=arrival_s,
            meta=meta,
            steps=tuple(s for s in steps if s is not None),
        )
        self._order(wf)
        return None if self.problems else wf

    def _order(self, wf: Workflow) -> None:
        """Checks between the steps of one workflow."""
        agents = set(wf.agents)
        last_start: float | None = None
        history_len: dict[str, tuple[int, int]] = {}  # id -> (tokens, step index)
        for i, step in enumerate(wf.steps):
            if step.start_s is not None:
                if last_start is not None and step.start_s < last_start:
                    self.bad(
                        f"steps[{i}].start_s",
                        f"steps out of order: starts at "
                        f"{step.start_s}, before the previous step's {last_start}",
                    )
                last_start = step.start_s
            for j, seg in enumerate(step.prompt):
                where = f"steps[{i}].prompt[{j}]"
                if seg.kind == "system" and seg.name not in agents:
                    self.bad(
                        f"{where}.id",
                        f"{seg.id!r} names agent {seg.name!r}, which is "
                        f"not an agent of this workflow",
                    )
                if seg.kind == "history":
                    prev = history_len.get(seg.id)
                    if prev is not None and seg.tokens < prev[0]:
                        self.bad(
                            f"{where}.tokens",
                            f"history {seg.id!r} shrinks from "
                            f"{prev[0]} tokens (steps[{prev[1]}]) to {seg.tokens}",
                        )
                    history_len[seg.id] = (seg.tokens, i)


def type_name(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)
