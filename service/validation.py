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
_CONTROL = re.compile(r"[\x00-\x1f]")
DEFAULT_TENANT = "default"


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
            out[self.field] = name(getattr(request, self.field), self.label or self.field,
                                   config.max_name_bytes)


@dataclass(frozen=True, slots=True)
class Text:
    """Free text of at most ``max_context_bytes``."""

    field: str

    def __call__(self, request: Any, out: dict[str, Any], config: ServiceConfig) -> None:
        out[self.field] = text(getattr(request, self.field), self.field,
                               config.max_context_bytes)


@dataclass(frozen=True, slots=True)
class Finite:
    """An ``optional double`` that must be finite when set."""

    field: str

    def __call__(self, request: Any, out: dict[str, Any], config: ServiceConfig) -> None:
        value = getattr(request, self.field) if request.HasField(self.field) else None
        out[self.field] = finite(value, self.field)


@dataclass(frozen=True, slots=True)
class Positive:
    """A count that must be > 0."""

    field: str
    label: str = ""

    def __call__(self, request: Any, out: dict[str, Any], config: ServiceConfig) -> None:
        value = out[self.field] = getattr(request, self.field)
        if value <= 0:
            raise invalid(f"{self.label or self.field} must be > 0")


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
class EachName:
    """Every item of a repeated message field has a valid name in ``item_field``."""

    field: str
    item_field: str

    def __call__(self, request: Any, out: dict[str, Any], config: ServiceConfig) -> None:
        for i, item in enumerate(getattr(request, self.field)):
            name(getattr(item, self.item_field), f"{self.field}[{i}].{self.item_field}",
                 config.max_name_bytes)


Rule = Name | Text | Finite | Positive | NotBefore | EachName

START = (Name("workflow_id"), Name("app"), Text("task"), Finite("now_s"))
STEP_STARTED = (Name("workflow_id"), Name("agent"), Name("parallel_group", optional=True),
                Finite("now_s"))
STEP_FINISHED = (Name("workflow_id"), Name("agent"), Name("parallel_group", optional=True),
                 Name("phase", optional=True), Text("context_text"), Text("output_text"),
                 Finite("start_s"), Finite("end_s"), NotBefore("end_s", "start_s"),
                 EachName("prompt", "id"))
END = (Name("workflow_id"), Finite("now_s"))
GET_FORECAST = (Name("workflow_id"),)
HELLO = (Name("engine_id", label="hello.engine_id"),
         Positive("tokens_per_block", label="hello.tokens_per_block"))


def check(request: Any, rules: tuple[Rule, ...], config: ServiceConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rule in rules:
        rule(request, out, config)
    return out


# ---------------------------------------------------------------------------- field checks
def name(value: str, field: str, max_bytes: int) -> str:
    if not value:
        raise invalid(f"{field} is required")
    size = len(value.encode())
    if size > max_bytes:
        raise invalid(f"{field} is {size} bytes; the limit is {max_bytes} (max_name_bytes)")
    if _CONTROL.search(value):
        raise invalid(f"{field} contains control characters")
    return value


def text(value: str, field: str, max_bytes: int) -> str:
    size = len(value.encode())
    if size > max_bytes:
        raise invalid(f"{field} is {size} bytes; the limit is {max_bytes} "
                      f"(max_context_bytes)")
    return value


def finite(value: float | None, field: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise invalid(f"{field} must be a finite number, got {value}")
    return value


def tenant(field_value: str, metadata_value: str | None) -> str:
    """The call's tenant: the request field or the ``x-pbkv-tenant`` metadata (they must
    agree when both are given); neither means the default tenant."""
    if field_value and metadata_value and field_value != metadata_value:
        raise RpcFailure(grpc.StatusCode.PERMISSION_DENIED,
                         f"tenant {field_value!r} does not match the x-pbkv-tenant metadata")
    value = field_value or metadata_value or DEFAULT_TENANT
    if not _TENANT.match(value):
        raise invalid(f"tenant {value!r} must match {_TENANT.pattern}")
    return value
