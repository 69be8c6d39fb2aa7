"""Who may call what, and the gate every call passes before a servicer sees it.

Roles (a token maps to one, server side; see docs/service.md "Security model"):

    operator   every RPC; acts for any tenant; sees every tenant in GetStats/ListWorkflows;
               the only role that may call ReloadModel; the dashboard
    tenant     the Orchestrator service and GetStats/ListWorkflows, for its own tenant only
    engine     EngineLink.Attach only
    dashboard  read-only: GetStats/ListWorkflows (all tenants) and the HTTP dashboard

The gate checks the bearer token and the role before the request bytes are decoded
(UNAUTHENTICATED / PERMISSION_DENIED, nothing decoded, nothing logged), and bytes that do not
decode answer INVALID_ARGUMENT with one short log line (not UNKNOWN and a traceback). The
caller's ``Principal`` is in ``CALLER`` while its handler runs (None: auth is off).

Health checks stay open (load balancers probe without a token)."""

from __future__ import annotations

import contextvars
import hashlib
import inspect
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from pbkv.service.validation import RpcFailure

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
ROLES = ("operator", "tenant", "engine", "dashboard")
_TENANT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Roles allowed per method (full name) or per service (prefix); others: any known caller.
_ALLOWED: tuple[tuple[str, frozenset[str]], ...] = (
    ("/pbkv.v1.Operator/ReloadModel", frozenset({"operator"})),
    ("/pbkv.v1.Operator/", frozenset({"operator", "tenant", "dashboard"})),
    ("/pbkv.v1.Orchestrator/", frozenset({"operator", "tenant"})),
    ("/opentelemetry.proto.collector.trace.v1.TraceService/", frozenset({"operator", "tenant"})),
    ("/pbkv.v1.EngineLink/", frozenset({"operator", "engine"})),
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a token speaks for: a role, and for the tenant role its tenant."""

    role: str
    tenant: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r} (roles: {', '.join(ROLES)})")
        if (self.role == "tenant") != (self.tenant is not None):
            raise ValueError("a tenant token names its tenant; other roles name none")
        if self.tenant is not None and not _TENANT_NAME.fullmatch(self.tenant):
            raise ValueError(f"tenant {self.tenant!r} must match {_TENANT_NAME.pattern}")

    @property
    def sees_all_tenants(self) -> bool:
        return self.role in ("operator", "dashboard")


OPERATOR = Principal("operator")
# The caller of the RPC being handled (set by the gate; None when auth is off).
CALLER: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "pbkv_caller", default=None
)

TokenGrant = tuple[str, str, str | None]  # (token, role, tenant): ServiceConfig.token_grants


class TokenTable:
    """Tokens -> principals, looked up by the token's SHA-256 (the table never compares a
    secret byte by byte). Empty: auth is off."""

    def __init__(self, grants: Iterable[TokenGrant] = ()) -> None:
        self._by_digest: dict[bytes, Principal] = {}
        for token, role, tenant in grants:
            if not token:
                raise ValueError("a token must not be empty")
            digest = _digest(token)
            if digest in self._by_digest:
                raise ValueError("the same token is given twice")
            self._by_digest[digest] = Principal(role, tenant)

    @classmethod
    def from_config(cls, config) -> TokenTable:
        """``auth_token`` (the operator token) and ``token_grants`` of a ``ServiceConfig``."""
        operator = ((config.auth_token, "operator", None),) if config.auth_token else ()
        return cls((*operator, *config.token_grants))

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def lookup(self, token: str) -> Principal | None:
        return self._by_digest.get(_digest(token)) if token else None

    def bearer(self, authorization: str) -> Principal | None:
        """The principal of an ``authorization: Bearer <token>`` value (None: unknown)."""
        scheme, _, token = authorization.partition(" ")
        return self.lookup(token.strip()) if scheme.lower() == "bearer" else None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_token_file(text: str) -> tuple[TokenGrant, ...]:
    """A token file: one bare token (the operator token; the original format), or JSON lines
    ``{"token": "...", "tenant": "acme"}`` / ``{"token": "...", "role": "engine"}``
    (roles: operator, engine, dashboard; a line with ``tenant`` is a tenant token). Blank
    lines and lines starting with ``#`` are skipped. Raises ValueError naming the line."""
    lines = [
        (n, line.strip())
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#")
    ]
    if len(lines) == 1 and not lines[0][1].startswith("{"):
        return ((lines[0][1], "operator", None),)
    grants = []
    for n, line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"line {n}: not a JSON object ({exc.msg}); a file of several "
                "tokens has one JSON object per line"
            ) from None
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            raise ValueError(f"line {n}: needs a string field 'token'")
        unknown = sorted(set(entry) - {"token", "role", "tenant"})
        if unknown:
            raise ValueError(f"line {n}: unknown fields {', '.join(unknown)}")
        role = entry.get("role", "tenant" if "tenant" in entry else None)
        try:
            Principal(role, entry.get("tenant"))
        except ValueError as exc:
            raise ValueError(f"line {n}: {exc}") from None
        grants.append((entry["token"], role, entry.get("tenant")))
    TokenTable(grants)  # empty or repeated tokens
    return tuple(grants)


def allowed_roles(method: str) -> frozenset[str] | None:
    """The roles that may call ``method`` (None: any known caller)."""
    return next((roles for prefix, roles in _ALLOWED if method.startswith(prefix)), None)


_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class Undecodable:
    """What a request's bytes become when they are not a message of the method's type."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class MalformedRequest(RpcFailure):
    def __init__(self, method: str, error: str) -> None:
        super().__init__(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid {method.rsplit('/', 1)[-1]} message ({error})",
        )


class GateInterceptor(grpc.aio.ServerInterceptor):
    """``tokens``: a ``TokenTable`` (or one operator token, or None/empty: no auth). With
    tokens, every call but health checks needs ``authorization: Bearer <token>`` metadata
    naming a role allowed to call the method."""

    def __init__(self, tokens: TokenTable | str | None = None) -> None:
        if isinstance(tokens, str):
            tokens = TokenTable([(tokens, "operator", None)])
        self._tokens = tokens or None

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        caller = None
        if self._tokens is not None and not method.startswith(OPEN_PREFIXES):
            metadata = dict(details.invocation_metadata or ())
            caller = self._tokens.bearer(str(metadata.get("authorization", "")))
            if caller is None:
                return _deny(
                    handler,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or wrong bearer token (metadata 'authorization')",
                )
            roles = allowed_roles(method)
            if roles is not None and caller.role not in roles:
                return _deny(
                    handler,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"a {caller.role} token may not call "
                    f"{method.rsplit('/', 1)[-1]} (roles allowed: "
                    f"{', '.join(sorted(roles))})",
                )
        return _guarded(handler, method, caller)


def _make(handler: grpc.RpcMethodHandler, behavior, deserializer) -> grpc.RpcMethodHandler:
    make = _KINDS[(handler.request_streaming, handler.response_streaming)]
    return make(
        behavior, request_deserializer=deserializer, response_serializer=handler.response_serializer
    )


def _deny(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """Answers ``code`` without decoding a byte of the request."""

    async def abort(_request, context):
        await context.abort(code, message)

    return _make(handler, abort, lambda _raw: None)


def _guarded(
    handler: grpc.RpcMethodHandler, method: str, caller: Principal | None = None
) -> grpc.RpcMethodHandler:
    """The handler with a decoder that never raises: undecodable bytes become ``Undecodable``,
    answered INVALID_ARGUMENT (a stream: its reader sees ``MalformedRequest`` raised). It runs
    with ``CALLER`` set; an ``RpcFailure`` it raises (e.g. a tenant claim the token does not
    allow) ends the call with its status."""
    decode = handler.request_deserializer

    def deserialize(raw: bytes):
        if decode is None:
            return raw
        try:
            return decode(raw)
        except Exception as exc:  # noqa: BLE001 - any decode failure is the caller's bytes
            return Undecodable(type(exc).__name__)

    def reject(request: Undecodable) -> MalformedRequest:
        failure = MalformedRequest(method, request.error)
        log.warning("%s: undecodable request: %s", method, request.error)
        return failure

    streaming = handler.request_streaming
    inner = (
        handler.stream_stream or handler.stream_unary
        if streaming
        else handler.unary_stream or handler.unary_unary
    )

    async def checked(request_iterator):
        async for request in request_iterator:
            if isinstance(request, Undecodable):
                raise reject(request)
            yield request

    async def admit(request, context):
        if not streaming:
            if isinstance(request, Undecodable):
                exc = reject(request)
                await context.abort(exc.code, exc.message)
            return request
        return checked(request)

    if inspect.isasyncgenfunction(inner):  # responses yielded

        async def behavior(request, context):
            CALLER.set(caller)
            try:
                async for response in inner(await admit(request, context), context):
                    yield response
            except RpcFailure as exc:
                await context.abort(exc.code, exc.message)
    else:  # a coroutine: returns its response (or writes them with context.write)

        async def behavior(request, context):
            CALLER.set(caller)
            try:
                return await inner(await admit(request, context), context)
            except RpcFailure as exc:
                await context.abort(exc.code, exc.message)

    return _make(handler, behavior, deserialize)
