"""Server interceptor: request ids, the caller's deadline, structured access logs, metrics,
and the one place where domain errors become gRPC status codes.

Nothing is sent to the client before the handler has decided the outcome: response headers
commit a call, and a committed call is never retried by the client's retry policy. The
request id therefore travels back in the trailing metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import Counter, Histogram

from services.common.deadlines import reset_deadline, set_deadline
from services.common.errors import FAILED_SERVICE_HEADER, InvalidInput, ServiceError
from services.common.logs import (
    REQUEST_ID_HEADER,
    new_request_id,
    reset_request_id,
    set_request_id,
)
from services.common.rich_errors import status_trailer

log = logging.getLogger("anyanomaly.rpc")

Context = grpc.aio.ServicerContext[Any, Any]

RPC_TOTAL = Counter("anyanomaly_rpc_total", "RPCs served", ["service", "method", "code"])
RPC_SECONDS = Histogram("anyanomaly_rpc_seconds", "RPC latency", ["service", "method"])

MAX_DETAILS_CHARS = 1000  # status details travel in a header; 8 kB would be refused

_caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")


def current_caller() -> str:
    """The name of the credential the current RPC came with ("" where none is asked)."""
    return _caller.get()


def _request_id(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and value:
            return str(value)[:64]
    return new_request_id()


def _shortened(message: str) -> str:
    if len(message) <= MAX_DETAILS_CHARS:
        return message
    return message[: MAX_DETAILS_CHARS - 40] + f"... ({len(message)} characters in all)"


class Malformed:
    """A request whose bytes are not the method's protobuf message (decoded to this marker so
    that the interceptor, not the library, answers it)."""

    def __init__(self, message_type: str, error: Exception) -> None:
        self.message = (f"the request is not a valid {message_type} message ({error}); check that the client "
                        "uses this service's contract")


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    message_type = getattr(getattr(deserializer, "__self__", None), "__name__", "protobuf")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends; answered below
            return Malformed(message_type, exc)

    return deserialize


async def _checked(requests: AsyncIterator[Any], call: _Call) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Malformed):
            raise InvalidInput(request.message)
        call.recheck()  # credentials revoked while the client streams in end the call here
        yield request


class _Call:
    """Bookkeeping for one RPC: request id, deadline, timing, outcome, error mapping."""

    def __init__(self, service: str, method: str, context: Context, authorize: Authorize | None) -> None:
        self.service, self.method, self.context = service, method, context
        self.authorize = authorize
        self.caller = ""  # the token's name, when the service checks tokens
        self.request_id = _request_id(context)
        self.code = grpc.StatusCode.OK
        self.started = time.perf_counter()
        self._tokens: tuple[Any, Any] | None = None
        self._caller_token: contextvars.Token[str] | None = None

    def begin(self, request: Any) -> None:
        """Make the request id and the caller's deadline current; refuse a malformed request."""
        self.context.set_trailing_metadata(((REQUEST_ID_HEADER, self.request_id),))
        self._tokens = (set_request_id(self.request_id), set_deadline(self.context.time_remaining()))
        if self.authorize is not None:
            self.caller = self.authorize(self.method, self.context)
            self._caller_token = _caller.set(self.caller)
        if isinstance(request, Malformed):
            raise InvalidInput(request.message)

    def recheck(self) -> None:
        """Authorize again (the credentials may have been revoked since the call began)."""
        if self.authorize is not None:
            self.authorize(self.method, self.context)

    async def fail(self, exc: BaseException) -> None:
        """Abort the RPC with the status that `exc` maps to (always raises)."""
        trailer: list[tuple[str, str | bytes]] = [(REQUEST_ID_HEADER, self.request_id)]
        if isinstance(exc, ServiceError):
            self.code, message = exc.code, _shortened(str(exc))
            if exc.service:
                trailer.append((FAILED_SERVICE_HEADER, exc.service))
            trailer += status_trailer(exc, message, self.service)
            log.warning("rpc failed", extra={"method": self.method, "code": self.code.name, "error": message})
        else:
            self.code = grpc.StatusCode.INTERNAL
            message = f"internal error (request id {self.request_id}); see the service log"
            log.error("rpc crashed", exc_info=exc, extra={"method": self.method})
        await self.context.abort(self.code, message, tuple(trailer))

    def end(self) -> None:
        elapsed = time.perf_counter() - self.started
        RPC_TOTAL.labels(self.service, self.method, self.code.name).inc()
        RPC_SECONDS.labels(self.service, self.method).observe(elapsed)
        log.info("rpc", extra={"method": self.method, "code": self.code.name, "ms": round(elapsed * 1000, 1),
                               **({"caller": self.caller} if self.caller else {})})
        if self._tokens is not None:
            reset_request_id(self._tokens[0])
            reset_deadline(self._tokens[1])
        if self._caller_token is not None:
            with contextlib.suppress(ValueError):  # a generator closed from another context
                _caller.reset(self._caller_token)


if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]  # generic only in the type stubs

# Served as they are, without tokens: probes and the contract (exactly these, not all of /grpc.*).
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")

# (method, the call's metadata) -> the caller's name; raises Unauthenticated or PermissionDenied.
Authorize = Callable[[str, Context], str]  # (method, context) -> the caller's name


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every application RPC (health and reflection pass through untouched, also past
    `authorize`)."""

    def __init__(self, service: str, authorize: Authorize | None = None) -> None:
        self._service = service
        self._authorize = authorize

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        wrap = self._wrap_stream if handler.response_streaming else self._wrap_unary
        behavior = (handler.unary_unary or handler.unary_stream or handler.stream_unary
                    or handler.stream_stream)
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(handler.request_streaming, handler.response_streaming)]
        return make(
            wrap(behavior, method, handler.request_streaming),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _wrap_unary(self, behavior: Callable[..., Any] | None, method: str, streaming_in: bool
                    ) -> Callable[..., Any]:
        assert behavior is not None

        async def unary(request: Any, context: Context) -> Any:
            call = _Call(self._service, method, context, self._authorize)
            try:
                call.begin(None if streaming_in else request)
                return await behavior(_checked(request, call) if streaming_in else request, context)
            except (grpc.aio.AbortError, GeneratorExit):
                raise
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status and logged, never hidden
                await call.fail(exc)
            finally:
                call.end()

        return unary

    def _wrap_stream(self, behavior: Callable[..., Any] | None, method: str, streaming_in: bool
                     ) -> Callable[..., Any]:
        assert behavior is not None
        if not inspect.isasyncgenfunction(behavior):
            # A streaming handler written with context.write(): a plain coroutine.
            return self._wrap_unary(behavior, method, streaming_in)

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            call = _Call(self._service, method, context, self._authorize)
            try:
                call.begin(None if streaming_in else request)
                async for response in behavior(_checked(request, call) if streaming_in else request, context):
                    call.recheck()  # a token revoked while its stream runs ends the stream here
                    yield response
            except (grpc.aio.AbortError, GeneratorExit):
                raise
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status and logged, never hidden
                await call.fail(exc)
            finally:
                call.end()

        return stream
