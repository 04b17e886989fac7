"""Domain errors. Services raise these; one interceptor maps them to gRPC status codes."""

from __future__ import annotations

import grpc


def echo(value: object, limit: int = 60) -> str:
    """`value` quoted for an error message, cut short: a message must not carry kilobytes of
    the caller's input back (status details travel in a size-limited header)."""
    text = repr(value) if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(str(value))} characters)"


# Trailing metadata naming the service whose failure ended an RPC (the culprit a client reports).
FAILED_SERVICE_HEADER = "x-anyanomaly-failed-service"


class ServiceError(Exception):
    """Base class of errors a caller should see with a specific status code. `service` names
    another service that caused the failure (sent back in FAILED_SERVICE_HEADER).

    Callers also get the google.rpc details (services/common/rich_errors.py): `reason`, a stable
    name for what went wrong (ErrorInfo; the class's own unless given); `field`, the request field
    at fault (a BadRequest field violation); `retry_after`, seconds to wait before a retry
    (RetryInfo; the class's own unless given)."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"
    default_retry_after: float | None = None

    def __init__(self, message: str, service: str = "", *, field: str = "", reason: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.service = service
        self.field = field
        self.reason = reason or self.default_reason
        self.retry_after = self.default_retry_after if retry_after is None else retry_after


class InvalidInput(ServiceError):
    """The request is wrong; the message tells the caller what to change."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_INPUT"


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(ServiceError):
    """No credentials, or ones that are not known."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class Overloaded(ServiceError):
    """Too much work queued; the caller should back off and retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "OVERLOADED"
    default_retry_after = 1.0


class NotReady(ServiceError):
    """The model is still loading (or the service is shutting down)."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "NOT_READY"
    default_retry_after = 5.0


class DependencyUnavailable(ServiceError):
    """A service this one calls cannot be reached or failed."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "DEPENDENCY_UNAVAILABLE"
    default_retry_after = 2.0


class DependencyFailed(ServiceError):
    """A service this one calls failed in a way a repeat would not fix (a bug, a refusal)."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "DEPENDENCY_FAILED"


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class FailedPrecondition(ServiceError):
    """The request is fine, but the system is not in a state to do it (the message says which)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Cancelled(ServiceError):
    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED"


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class StartupError(RuntimeError):
    """Start-up cannot go on (a setting, a model, a dependency's configuration); the message names
    what to fix, and the service exits with status 2 after logging it."""


class ModelLoadError(StartupError):
    """Start-up could not load a model. The message names the setting to fix."""

