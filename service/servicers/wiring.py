"""What the servicers share: the manager and config they serve, the call's tenant, the RPC
metrics + status decorator, and the translation of manager errors into statuses.

Tenants: the manager knows a workflow as ``"<tenant>/<workflow_id>"`` (tenant names cannot
contain ``/``), so two tenants may use the same workflow id and one tenant's calls can never
reach another's workflow -- it is simply NOT_FOUND for them. Engines tag requests with
(tenant, workflow_id) and the same mapping applies on the Attach stream.

With auth on, a tenant token fixes the call's tenant (claiming another one is
PERMISSION_DENIED); the operator may act for any tenant (``service/auth.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from pbkv.cache_manager import errors as cm_errors
from pbkv.service import validation as v
from pbkv.service.auth import CALLER, Principal
from pbkv.service.config import ServiceConfig
from pbkv.service.recorder import RecorderFull
from pbkv.service.stores.base import StoreError
from pbkv.service.validation import RpcFailure

if TYPE_CHECKING:
    from pbkv.cache_manager.manager import CacheManager

log = logging.getLogger(__name__)

RpcObserver = Callable[[str, str, float], None]
# The event id of the call being handled (cluster mode; see cluster/forward.py), "" if none.
EVENT_ID: contextvars.ContextVar[str] = contextvars.ContextVar("pbkv_event_id", default="")

# CacheManager errors -> gRPC codes (the manager's message already names the field).
_MANAGER_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (cm_errors.UnknownWorkflow, grpc.StatusCode.NOT_FOUND),
    (cm_errors.UnknownEngine, grpc.StatusCode.NOT_FOUND),
    (cm_errors.DuplicateWorkflow, grpc.StatusCode.ALREADY_EXISTS),
    (cm_errors.EndedWorkflow, grpc.StatusCode.FAILED_PRECONDITION),
    (cm_errors.OutOfOrderStep, grpc.StatusCode.FAILED_PRECONDITION),
    (cm_errors.CacheManagerError, grpc.StatusCode.INVALID_ARGUMENT),
)


@dataclass(frozen=True, slots=True)
class Wiring:
    """The manager the servicers drive, the service config, and the RPC observer."""

    manager: CacheManager
    config: ServiceConfig
    observer: RpcObserver | None = None
    # One event per attached engine stream: set, the stream replans and sends the plan.
    _engine_wakers: set[asyncio.Event] = field(default_factory=set)

    def observe(self, method: str, code: str, latency_s: float) -> None:
        if self.observer is not None:
            self.observer(method, code, latency_s)

    def add_engine_waker(self, waker: asyncio.Event) -> None:
        self._engine_wakers.add(waker)

    def remove_engine_waker(self, waker: asyncio.Event) -> None:
        self._engine_wakers.discard(waker)

    def wake_engines(self) -> None:
        """An orchestrator event changed the outlook (a step started or finished, a workflow
        began or ended): every engine stream replans now rather than when its engine next
        speaks, so a prefetch for the predicted agent reaches the engine during the boundary
        (tool call, orchestrator think time) and not with that agent's own request. Streams
        coalesce: many wakes before a stream gets to run cost one plan."""
        for waker in self._engine_wakers:
            waker.set()


@dataclass(frozen=True, slots=True)
class WorkflowKey:
    """A tenant's workflow; ``manager_id`` is how the manager knows it."""

    tenant: str
    workflow_id: str

    @property
    def manager_id(self) -> str:
        return manager_key(self.tenant, self.workflow_id)


def manager_key(tenant: str, workflow_id: str) -> str:
    return f"{tenant}/{workflow_id}"


def caller() -> Principal | None:
    """The principal of the call being handled (None: auth is off)."""
    return CALLER.get()


def metadata_tenant(context: grpc.aio.ServicerContext) -> str | None:
    """The call-wide tenant: a tenant token's own, else the ``x-pbkv-tenant`` metadata."""
    metadata = {k: val for k, val in (context.invocation_metadata() or ())}
    claimed = metadata.get("x-pbkv-tenant")
    who = CALLER.get()
    if who is None or who.tenant is None:
        return claimed
    if claimed and claimed != who.tenant:
        raise RpcFailure(
            grpc.StatusCode.PERMISSION_DENIED,
            f"x-pbkv-tenant {claimed!r}: the token is for tenant {who.tenant!r}",
        )
    return who.tenant


def call_tenant(request_tenant: str, context: grpc.aio.ServicerContext) -> str:
    who = CALLER.get()
    if who is not None and who.tenant is not None and request_tenant not in ("", who.tenant):
        raise RpcFailure(
            grpc.StatusCode.PERMISSION_DENIED,
            f"tenant {request_tenant!r}: the token is for tenant {who.tenant!r}",
        )
    return v.tenant(request_tenant, metadata_tenant(context))


def sees_all_tenants() -> bool:
    """Auth on and the caller is the operator (or the dashboard): views span every tenant."""
    who = CALLER.get()
    return who is not None and who.sees_all_tenants


def manager_errors(key: WorkflowKey | None = None) -> _ManagerErrors:
    """Turn a CacheManager error into the RpcFailure of its status. With ``key`` the message
    shows the caller's own workflow id (not the tenant-qualified one) and names the tenant
    when the workflow is unknown. (A context manager class, not a generator: every event
    passes here twice.)"""
    return _ManagerErrors(key)


class _ManagerErrors:
    __slots__ = ("key",)

    def __init__(self, key: WorkflowKey | None) -> None:
        self.key = key

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if not isinstance(exc, cm_errors.CacheManagerError):
            return False
        message, key = str(exc), self.key
        if key is not None:
            message = message.replace(key.manager_id, key.workflow_id)
            if isinstance(exc, cm_errors.UnknownWorkflow):
                message = (
                    f"workflow_id {key.workflow_id!r} is not a running workflow of "
                    f"tenant {key.tenant!r}"
                )
        code = next(code for cls, code in _MANAGER_CODES if isinstance(exc, cls))
        raise RpcFailure(code, message) from exc


def rpc(method: str):
    """Wrap a unary handler of a servicer with a ``wiring``: map failures to statuses, report
    (method, code, latency)."""

    def deco(fn):
        @functools.wraps(fn)
        async def wrapper(self, request, context: grpc.aio.ServicerContext):
            t0 = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await fn(self, request, context)
            except RpcFailure as exc:
                code = exc.code
                await context.abort(exc.code, exc.message)
            except RecorderFull as exc:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                await context.abort(code, str(exc))
            except StoreError as exc:
                code = grpc.StatusCode.UNAVAILABLE
                await context.abort(code, f"trace store: {exc}")
            except grpc.aio.AbortError:
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed", method)
                raise
            finally:
                self.wiring.observe(method, code.name, time.perf_counter() - t0)

        return wrapper

    return deco
