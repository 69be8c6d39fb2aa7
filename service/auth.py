"""The gate every call passes before a servicer sees it: the bearer token (when one is set) is
checked before the request bytes are decoded, and bytes that do not decode answer
INVALID_ARGUMENT with one short log line (not UNKNOWN and a traceback).

Health checks stay open (load balancers probe without a token)."""

from __future__ import annotations

import hmac
import inspect
import logging

import grpc

from pbkv.service.validation import RpcFailure

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
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
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT,
                         f"the request is not a valid {method.rsplit('/', 1)[-1]} message "
                         f"({error})")


class GateInterceptor(grpc.aio.ServerInterceptor):
    """``token``: required as ``authorization: Bearer <token>`` metadata (None: no auth)."""

    def __init__(self, token: str | None = None) -> None:
        self._expected = f"Bearer {token}".encode() if token is not None else None

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        if self._expected is not None and not method.startswith(OPEN_PREFIXES):
            metadata = dict(details.invocation_metadata or ())
            given = str(metadata.get("authorization", "")).encode()
            if not hmac.compare_digest(given, self._expected):
                return _deny(handler, "missing or wrong bearer token (metadata "
                                      "'authorization')")
        return _guarded(handler, method)


def _make(handler: grpc.RpcMethodHandler, behavior, deserializer) -> grpc.RpcMethodHandler:
    make = _KINDS[(handler.request_streaming, handler.response_streaming)]
    return make(behavior, request_deserializer=deserializer,
                response_serializer=handler.response_serializer)


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """Answers UNAUTHENTICATED without decoding a byte of the request."""
    async def abort(_request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return _make(handler, abort, lambda _raw: None)


def _guarded(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """The handler with a decoder that never raises: undecodable bytes become ``Undecodable``,
    answered INVALID_ARGUMENT (a stream: its reader sees ``MalformedRequest`` raised)."""
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
    inner = (handler.stream_stream or handler.stream_unary if streaming
             else handler.unary_stream or handler.unary_unary)

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
            try:
                async for response in inner(await admit(request, context), context):
                    yield response
            except MalformedRequest as exc:
                await context.abort(exc.code, exc.message)
    else:  # a coroutine: returns its response (or writes them with context.write)
        async def behavior(request, context):
            try:
                return await inner(await admit(request, context), context)
            except MalformedRequest as exc:
                await context.abort(exc.code, exc.message)
    return _make(handler, behavior, deserialize)
