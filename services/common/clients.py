"""Client channels between services: message limits, retries for UNAVAILABLE
declared in the service config, a default deadline on every call, and the
caller's request id forwarded in the metadata."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc

from services.common.errors import DeadlineExceeded, DependencyUnavailable, InvalidInput, Overloaded, ServiceError
from services.common.logs import REQUEST_ID_HEADER, current_request_id

DEFAULT_TIMEOUT_SECONDS = 120.0

# Retried by the gRPC library itself (not hand-written loops): transient UNAVAILABLE,
# e.g. a pod restarting or a service still loading its model.
RETRY_SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.2s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


def _details_with_request_id(details: grpc.aio.ClientCallDetails, default_timeout: float) -> Any:
    metadata = list(details.metadata or [])
    request_id = current_request_id()
    if request_id and not any(key == REQUEST_ID_HEADER for key, _ in metadata):
        metadata.append((REQUEST_ID_HEADER, request_id))
    timeout = details.timeout if details.timeout is not None else default_timeout
    return grpc.aio.ClientCallDetails(
        details.method, timeout, grpc.aio.Metadata(*metadata), details.credentials, details.wait_for_ready
    )


class _CallDefaults(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, default_timeout: float) -> None:
        self._timeout = default_timeout

    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(_details_with_request_id(details, self._timeout), request)

    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(_details_with_request_id(details, self._timeout), request)


def open_channel(
    address: str, max_message_mb: int = 64, default_timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> grpc.aio.Channel:
    size = max_message_mb * 1024 * 1024
    options = [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(RETRY_SERVICE_CONFIG)),
    ]
    return grpc.aio.insecure_channel(address, options=options, interceptors=[_CallDefaults(default_timeout)])


def dependency_error(dependency: str, error: grpc.aio.AioRpcError) -> ServiceError:
    """A domain error for a failed call to another service, naming that service."""
    message = f"{dependency}: {error.details() or error.code().name}"
    code = error.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(message)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Overloaded(message)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(message)
    return DependencyUnavailable(f"{message} ({code.name})")
