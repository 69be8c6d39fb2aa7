"""Request field checks. Each failure is an ``RpcFailure`` whose message names the field;
the servicer turns it into the gRPC status."""

from __future__ import annotations

import math
import re

import grpc

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


def name(value: str, field: str, max_bytes: int, *, required: bool = True) -> str:
    if not value:
        if required:
            raise invalid(f"{field} is required")
        return value
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
