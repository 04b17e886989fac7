"""Server interceptor: request ids, structured access logs, metrics, and the one
place where domain errors become gRPC status codes."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import Counter, Histogram

from services.common.errors import ServiceError
from services.common.logs import (
    REQUEST_ID_HEADER,
    new_request_id,
    reset_request_id,
    set_request_id,
)

log = logging.getLogger("anyanomaly.rpc")

Context = grpc.aio.ServicerContext[Any, Any]

RPC_TOTAL = Counter("anyanomaly_rpc_total", "RPCs served", ["service", "method", "code"])
RPC_SECONDS = Histogram("anyanomaly_rpc_seconds", "RPC latency", ["service", "method"])

# Status codes a dependency's failure keeps; any other failure is reported as UNAVAILABLE.
_KEPT_DEPENDENCY_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
}


def dependency_status(error: grpc.aio.AioRpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = error.code()
    return code if code in _KEPT_DEPENDENCY_CODES else grpc.StatusCode.UNAVAILABLE


def _request_id(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and value:
            return str(value)[:64]
    return new_request_id()


class _Call:
    """Bookkeeping for one RPC: request id, timing, outcome, error mapping."""

    def __init__(self, service: str, method: str, context: Context) -> None:
        self.service, self.method, self.context = service, method, context
        self.request_id = _request_id(context)
        self.code = grpc.StatusCode.OK
        self.started = time.perf_counter()

    async def begin(self) -> Any:
        token = set_request_id(self.request_id)
        await self.context.send_initial_metadata(((REQUEST_ID_HEADER, self.request_id),))
        return token

    async def fail(self, exc: BaseException) -> None:
        """Abort the RPC with the status that `exc` maps to (always raises)."""
        if isinstance(exc, ServiceError):
            self.code, message = exc.code, str(exc)
            log.warning("rpc failed", extra={"method": self.method, "code": self.code.name, "error": message})
        elif isinstance(exc, grpc.aio.AioRpcError):
            self.code = dependency_status(exc)
            message = f"a dependency failed ({exc.code().name}): {exc.details()}"
            log.warning("dependency failed", extra={"method": self.method, "code": self.code.name,
                                                    "error": message})
        else:
            self.code = grpc.StatusCode.INTERNAL
            message = f"internal error (request id {self.request_id}); see the service log"
            log.error("rpc crashed", exc_info=exc, extra={"method": self.method})
        await self.context.abort(self.code, message)

    def end(self, token: Any) -> None:
        elapsed = time.perf_counter() - self.started
        RPC_TOTAL.labels(self.service, self.method, self.code.name).inc()
        RPC_SECONDS.labels(self.service, self.method).observe(elapsed)
        log.info("rpc", extra={"method": self.method, "code": self.code.name, "ms": round(elapsed * 1000, 1)})
        reset_request_id(token)


if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]  # generic only in the type stubs


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every application RPC (health and reflection pass through untouched)."""

    def __init__(self, service: str) -> None:
        self._service = service

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith("/grpc."):
            return handler
        wrap = self._wrap_stream if handler.response_streaming else self._wrap_unary
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            wrap(handler.stream_stream, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap_unary(self, behavior: Callable[..., Any] | None, method: str) -> Callable[..., Any]:
        assert behavior is not None

        async def unary(request: Any, context: Context) -> Any:
            call = _Call(self._service, method, context)
            token = await call.begin()
            try:
                return await behavior(request, context)
            except (grpc.aio.AbortError, GeneratorExit):
                raise
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status and logged, never hidden
                await call.fail(exc)
            finally:
                call.end(token)

        return unary

    def _wrap_stream(self, behavior: Callable[..., Any] | None, method: str) -> Callable[..., Any]:
        assert behavior is not None
        if not inspect.isasyncgenfunction(behavior):
            # A streaming handler written with context.write(): a plain coroutine.
            return self._wrap_unary(behavior, method)

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            call = _Call(self._service, method, context)
            token = await call.begin()
            try:
                async for response in behavior(request, context):
                    yield response
            except (grpc.aio.AbortError, GeneratorExit):
                raise
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status and logged, never hidden
                await call.fail(exc)
            finally:
                call.end(token)

        return stream
