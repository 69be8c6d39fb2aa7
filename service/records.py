"""Typed workflow events, as the trace store keeps them, and their one JSON codec.

The servicers build these from requests, the stores write and read them (``encode`` /
``decode``), the restart rebuild replays them into the manager and ``export`` turns finished
runs into trace v1. The JSON field names are the stored format: they are exactly the ones the
first service version wrote as untyped payloads, so existing SQLite files and Redis lists still
load. Fields a row lacks take their defaults; fields this version does not know are ignored.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pbkv.predictor.forecast import Forecast


@dataclass(frozen=True, slots=True)
class PromptPart:
    """One prompt segment as the orchestrator reported it (trace-format-v1 segment id)."""

    id: str
    tokens: int


@dataclass(frozen=True, slots=True)
class WorkflowStarted:
    KIND: ClassVar[str] = "start"
    app: str
    task: str = ""
    now_s: float | None = None


@dataclass(frozen=True, slots=True)
class StepStarted:
    KIND: ClassVar[str] = "step_started"
    agent: str
    parallel_group: str | None = None
    now_s: float | None = None


@dataclass(frozen=True, slots=True)
class StepFinished:
    KIND: ClassVar[str] = "step_finished"
    agent: str
    parallel_group: str | None = None
    step_index: int = 0
    context_text: str = ""
    output_text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    start_s: float | None = None
    end_s: float | None = None
    phase: str | None = None
    prompt: tuple[PromptPart, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkflowEnded:
    KIND: ClassVar[str] = "end"
    now_s: float | None = None


WorkflowEvent = WorkflowStarted | StepStarted | StepFinished | WorkflowEnded
EVENT_TYPES: dict[str, type[WorkflowEvent]] = {
    cls.KIND: cls for cls in (WorkflowStarted, StepStarted, StepFinished, WorkflowEnded)
}
EVENT_KINDS = tuple(EVENT_TYPES)
_EVENT_CLASSES = frozenset(EVENT_TYPES.values())
_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in EVENT_TYPES.values()}


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One recorded event of a tenant's workflow. ``seq`` is assigned by the store (0 before it
    is appended; in cluster mode it counts per partition); ``at_s`` is the service's wall
    clock when it was accepted."""

    tenant: str
    workflow_id: str
    at_s: float
    event: WorkflowEvent
    seq: int = 0
    # The forecast the event produced at its workflow's owner (a finished step, cluster mode):
    # stored with it so other replicas mirror the workflow without running the predictor.
    forecast: Forecast | None = field(default=None, compare=False)
    # The caller's id for the event (``x-pbkv-event-id``): a cluster answers a resend of it
    # from the log instead of applying it twice. Empty: none given.
    event_id: str = field(default="", compare=False)
    # Cluster mode: the partition lease (``"<replica>:<token>"``) the event was accepted
    # under; the log writes it only while that lease is still the partition's (never under
    # a later one). Empty: accepted outside a cluster.
    lease: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if type(self.event) not in _EVENT_CLASSES:
            raise ValueError(
                f"event must be one of {', '.join(EVENT_KINDS)} events, "
                f"got {type(self.event).__name__}"
            )

    @property
    def kind(self) -> str:
        return self.event.KIND


# ---------------------------------------------------------------------------- codec
def payload(event: WorkflowEvent) -> dict[str, Any]:
    """The event's JSON-ready fields (the stored names)."""
    out = {name: getattr(event, name) for name in _FIELDS[type(event)]}
    if isinstance(event, StepFinished):
        out["prompt"] = [{"id": p.id, "tokens": p.tokens} for p in event.prompt]
    return out


def from_payload(kind: str, data: Mapping[str, Any]) -> WorkflowEvent:
    """The event of ``kind`` from stored fields; ``ValueError`` names what is wrong."""
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise ValueError(f"kind must be one of {EVENT_KINDS}, got {kind!r}")
    if not isinstance(data, Mapping):
        raise ValueError(f"{kind} event: payload must be a JSON object, got {data!r}")
    kwargs = {name: data[name] for name in _FIELDS[cls] if name in data}
    if "prompt" in kwargs:
        try:
            kwargs["prompt"] = tuple(
                PromptPart(str(p["id"]), int(p["tokens"])) for p in kwargs["prompt"] or ()
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{kind} event: bad prompt {kwargs['prompt']!r}") from exc
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ValueError(f"{kind} event: {exc}") from exc


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps would build one per call
dumps = _ENCODER.encode  # compact JSON text of plain values (one encoder for every caller)


def _one_shot_encoder():
    """``_ENCODER.encode`` for a payload, with the C encoder built once (``encode`` builds
    one per call, a third of its cost): the same text. Without circular-reference markers:
    a payload is a dict of plain values and a list of plain dicts, with no cycle to find.
    ``None`` where the C accelerator is missing."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    e = _ENCODER
    return make(
        None,
        e.default,
        json.encoder.encode_basestring_ascii,
        e.indent,
        e.key_separator,
        e.item_separator,
        e.sort_keys,
        e.skipkeys,
        e.allow_nan,
    )


_ENCODE = _one_shot_encoder()


def encode(event: WorkflowEvent) -> str:
    if _ENCODE is None:
        return _ENCODER.encode(payload(event))
    return "".join(_ENCODE(payload(event), 0))


def decode(kind: str, text: str | bytes) -> WorkflowEvent:
    return from_payload(kind, json.loads(text))
