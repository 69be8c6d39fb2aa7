"""Request field checks, declared once per request type. ``check(request, RULES, config)``
runs the rules in order and returns the checked values by field name (an unset ``optional``
proto field is ``None``). Each failure is an ``RpcFailure`` whose message names the field;
the servicers turn it into the gRPC status."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import grpc

from pbkv.service.config import ServiceConfig

_TENANT = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# C0 controls, DEL, C1 controls, and the bidirectional embeddings/overrides/isolates (they
# make an id display as a different one: U+202A..U+202E, U+2066..U+2069, plus U+200E/U+200F).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
DEFAULT_TENANT = "default"

# Ranges that make sense, fixed (not knobs): times are seconds on the caller's clock (unix or
# monotonic, never negative), counts of tokens and blocks fit in 2^24.
MAX_TIME_S = 1e10  # ~ the year 2286 as a unix time
MAX_TOKENS = 1 << 24  # tokens in one step / prompt segment / request
MAX_BLOCKS = 1 << 24  # an engine's gpu_blocks / cpu_blocks
MAX_TOKENS_PER_BLOCK = 4096


class RpcFailure(Exception):
    """Ends an RPC with ``code`` and ``message`` (the message names the offending field)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def invalid(message: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, message)


# ---------------------------------------------------------------------------- rules
# Each rule checks its field of ``request`` and stores the checked value in ``out``.
@dataclass(frozen=True, slots=True)
class Name:
    """An id or name: required, at most ``max_name_bytes``, no control characters."""

    field: str
    optional: bool = False  # a proto3 ``optional`` field: checked only when set
    label: str = ""  # how messages name it (default: the field name)

    def __call__(self, request: Any, out: dict[str, Any], config: ServiceConfig) -> None:
        if self.optional and not request.HasField(self.field):
            out[self.field] = None
        else:
            out[self.field] = name(
                getattr(request, self.field), self.label or self.field, config.max_name_bytes
            )


@dataclass(frozen=True, slots=True)
class Text:
    """Free text of at most ``max_context_bytes``."""

    field: str

    def __call__(self, request: Any, out: dict[str, Any], config: ServiceConfig) -> None:
        out[self.field] = text(getattr(request, self.field), self.field, config.max_context_bytes)


@dataclass(frozen=True, slots=True)
class Time:
    """An ``optional double`` in seconds: when set, finite and in [0, ``MAX_TIME_S``]."""

    field: str

    def __call__(self, request: Any, out: dict[str, Any], config: ServiceConfig) -> None:
        value = getattr(request, self.field) if request.HasField(self.field) else None
        out[self.field] = time_s(value, self.field)


@dataclass(frozen=True, slots=True)
class Count:
    """An integer in [``low``, ``high``]."""

    field: str
    high: int
    low: int = 0
    label: str = ""

    def __call__(self, request: Any, out: dict[str, Any], config: ServiceConfig) -> None:
        value = out[self.field] = getattr(request, self.field)
        if not self.low <= value <= self.high:
            raise invalid(
                f"{self.label or self.field} must be in [{self.low}, {self.high}], got {value}"
            )


@dataclass(frozen=True, slots=True)
class NotBefore:
    """``later`` must not be before ``earlier`` when both are set (both checked earlier)."""

    later: str
    earlier: str

    def __call__(self, request: Any, out: dict[str, Any], config: ServiceConfig) -> None:
        later, earlier = out[self.later], out[self.earlier]
        if later is not None and earlier is not None and later < earlier:
            raise invalid(f"{self.later} ({later}) is before {self.earlier} ({earlier})")


@dataclass(frozen=True, slots=True)
class Each:
    """A repeated message field: at most ``config.<cap>`` items, each checked by ``rules``
    (messages name the item: ``prompt[3].id is required``)."""

    field: str
    cap: str
    rules: tuple[Any, ...]

    def __call__(self, request: Any, out: dict[str, Any], config: ServiceConfig) -> None:
        items = getattr(request, self.field)
        if not items:  # the common case (no prompt segments): nothing over any cap
            return
        capped(len(items), self.field, self.cap, config)
        for i, item in enumerate(items):
            try:
                check(item, self.rules, config)
            except RpcFailure as exc:
                raise RpcFailure(exc.code, f"{self.field}[{i}].{exc.message}") from None


@dataclass(frozen=True, slots=True)
class Hashes:
    """Block hashes: at most ``max_blocks_per_event`` of them (``optional``: a proto3
    ``optional bytes`` holding one), each 1..``max_block_hash_bytes`` bytes."""

    field: str
    optional: bool = False

    def __call__(self, request: Any, out: dict[str, Any], config: ServiceConfig) -> None:
        if self.optional:
            if not request.HasField(self.field):
                return
            hashes = (getattr(request, self.field),)
        else:
            hashes = getattr(request, self.field)
            capped(len(hashes), self.field, "max_blocks_per_event", config)
        limit = config.max_block_hash_bytes
        for i, h in enumerate(hashes):
            if not 0 < len(h) <= limit:
                where = self.field if self.optional else f"{self.field}[{i}]"
                raise invalid(
                    f"{where} is {len(h)} bytes; a block hash has 1 to {limit} "
                    f"(max_block_hash_bytes)"
                )


Rule = Name | Text | Time | Count | NotBefore | Each | Hashes

START = (Name("workflow_id"), Name("app"), Text("task"), Time("now_s"))
STEP_STARTED = (
    Name("workflow_id"),
    Name("agent"),
    Name("parallel_group", optional=True),
    Time("now_s"),
)
PROMPT_SEGMENT = (Name("id"), Count("tokens", MAX_TOKENS))
STEP_FINISHED = (
    Name("workflow_id"),
    Name("agent"),
    Name("parallel_group", optional=True),
    Name("phase", optional=True),
    Text("context_text"),
    Text("output_text"),
    Count("input_tokens", MAX_TOKENS),
    Count("output_tokens", MAX_TOKENS),
    Time("start_s"),
    Time("end_s"),
    NotBefore("end_s", "start_s"),
    Each("prompt", "max_prompt_segments", PROMPT_SEGMENT),
)
END = (Name("workflow_id"), Time("now_s"))
GET_FORECAST = (Name("workflow_id"),)
HELLO = (
    Name("engine_id", label="hello.engine_id"),
    Count("gpu_blocks", MAX_BLOCKS, low=1, label="hello.gpu_blocks"),
    Count("cpu_blocks", MAX_BLOCKS, label="hello.cpu_blocks"),
    Count("tokens_per_block", MAX_TOKENS_PER_BLOCK, low=1, label="hello.tokens_per_block"),
)
# Engine events, by their ``EngineEvent.kind`` (tier and hit-count consistency: convert.py).
ENGINE_EVENTS: dict[str, tuple[Rule, ...]] = {
    "block_stored": (
        Hashes("block_hashes"),
        Hashes("parent_hash", optional=True),
        Count("tokens_per_block", MAX_TOKENS_PER_BLOCK, low=1),
    ),
    "block_removed": (Hashes("block_hashes"),),
    "all_blocks_cleared": (),
    "request_started": (
        Name("request_id"),
        Hashes("block_hashes"),
        Count("num_prompt_tokens", MAX_TOKENS),
        Name("workflow_id", optional=True),
        Name("agent", optional=True),
        Time("now_s"),
    ),
    "request_finished": (Name("request_id"), Count("num_output_tokens", MAX_TOKENS), Time("now_s")),
}


def check(request: Any, rules: tuple[Rule, ...], config: ServiceConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rule in rules:
        rule(request, out, config)
    return out


# ---------------------------------------------------------------------------- field checks
def name(value: str, field: str, max_bytes: int) -> str:
    if not value:
        raise invalid(f"{field} is required")
    if value.isascii() and value.isprintable() and len(value) <= max_bytes:
        return value  # the common case: one byte per character, no control character
    size = len(value.encode())
    if size > max_bytes:
        raise invalid(f"{field} is {size} bytes; the limit is {max_bytes} (max_name_bytes)")
    if _CONTROL.search(value):
        raise invalid(f"{field} contains control characters")
    return value


def text(value: str, field: str, max_bytes: int) -> str:
    if 4 * len(value) <= max_bytes:  # UTF-8 takes at most 4 bytes a character
        return value
    size = len(value.encode())
    if size > max_bytes:
        raise invalid(f"{field} is {size} bytes; the limit is {max_bytes} (max_context_bytes)")
    return value


def time_s(value: float | None, field: str) -> float | None:
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= MAX_TIME_S):
        raise invalid(f"{field} must be a finite time in [0, {MAX_TIME_S:g}] s, got {value}")
    return value


def capped(count: int, field: str, cap: str, config: ServiceConfig) -> None:
    """``count`` items of ``field`` against the ``config.<cap>`` limit (INVALID_ARGUMENT)."""
    limit = getattr(config, cap)
    if count > limit:
        raise invalid(f"{field} has {count} entries; the limit is {limit} ({cap})")


def tenant(field_value: str, metadata_value: str | None) -> str:
    """The call's tenant: the request field or the ``x-pbkv-tenant`` metadata (they must
    agree when both are given); neither means the default tenant."""
    if field_value and metadata_value and field_value != metadata_value:
        raise RpcFailure(
            grpc.StatusCode.PERMISSION_DENIED,
            f"tenant {field_value!r} does not match the x-pbkv-tenant metadata",
        )
    value = field_value or metadata_value or DEFAULT_TENANT
    if value != DEFAULT_TENANT and not _TENANT.match(value):  # (the default matches)
        raise invalid(f"tenant {value!r} must match {_TENANT.pattern}")
    return value
