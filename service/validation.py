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
@dataclass(frozen=True, slots=True)
class Name:
    """An id or name: required, at most ``max_name_bytes``, no control characters."""

    field: str
    optional: bool = False  # a proto3 ``optional`` field: checked only when set
    label: str = ""  # how messages name it (default: the field name)


@dataclass(frozen=True, slots=True)
class Text:
    """Free text of at most ``max_context_bytes``."""

    field: str


@dataclass(frozen=True, slots=True)
class Finite:
    """An ``optional double`` that must be finite when set."""

    field: str


@dataclass(frozen=True, slots=True)
class Positive:
    """A count that must be > 0."""

    field: str
    label: str = ""


@dataclass(frozen=True, slots=True)
class NotBefore:
    """``later`` must not be before ``earlier`` when both are set."""

    later: str
    earlier: str


@dataclass(frozen=True, slots=True)
class EachName:
    """Every item of a repeated message field has a valid name in ``item_field``."""

    field: str
    item_field: str


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
        match rule:
            case Name(field, optional, label):
                if optional and not request.HasField(field):
                    out[field] = None
                else:
                    out[field] = name(getattr(request, field), label or field,
                                      config.max_name_bytes)
            case Text(field):
                out[field] = text(getattr(request, field), field, config.max_context_bytes)
            case Finite(field):
                value = getattr(request, field) if request.HasField(field) else None
                out[field] = finite(value, field)
            case Positive(field, label):
                out[field] = getattr(request, field)
                if out[field] <= 0:
                    raise invalid(f"{label or field} must be > 0")
            case NotBefore(later, earlier):
                if (out[later] is not None and out[earlier] is not None
                        and out[later] < out[earlier]):
                    raise invalid(f"{later} ({out[later]}) is before {earlier} "
                                  f"({out[earlier]})")
            case EachName(field, item_field):
                for i, item in enumerate(getattr(request, field)):
                    name(getattr(item, item_field), f"{field}[{i}].{item_field}",
                         config.max_name_bytes)
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
