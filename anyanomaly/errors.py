"""Errors the client raises: one exception per gRPC status, each carrying the status code, the
service's message and, when the service sent them, the rich details (google.rpc field
violations, a retry delay, a stable reason)."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc


@dataclass(frozen=True)
class FieldViolation:
    field: str  # the request field at fault, e.g. "options.sigma"
    description: str


@dataclass
class AnyAnomalyError(Exception):
    """A call failed. `code`: the gRPC status; `message`: what the service said, meant to be
    acted on; `reason`: a stable machine-readable cause (google.rpc.ErrorInfo) when sent;
    `violations`: the fields at fault (google.rpc.BadRequest); `retry_after`: seconds to wait
    before retrying (google.rpc.RetryInfo), when the service said."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    violations: tuple[FieldViolation, ...] = ()
    retry_after: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(AnyAnomalyError):
    """The request is wrong; the message says what to change. Retrying it as is will fail again."""


class NotFound(AnyAnomalyError):
    pass


class AlreadyExists(AnyAnomalyError):
    pass


class PermissionDenied(AnyAnomalyError):
    pass


class Unauthenticated(AnyAnomalyError):
    """No token, or a token the orchestrator does not know."""


class FailedPrecondition(AnyAnomalyError):
    pass


class ResourceExhausted(AnyAnomalyError):
    """The service is at capacity; retry after `retry_after` seconds."""


class Unavailable(AnyAnomalyError):
    """The service (or one it depends on) cannot be reached; retry after `retry_after` seconds."""


class DeadlineExceeded(AnyAnomalyError):
    pass


class Cancelled(AnyAnomalyError):
    pass


class Internal(AnyAnomalyError):
    pass


_BY_CODE: dict[grpc.StatusCode, type[AnyAnomalyError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def from_rpc_error(error: grpc.aio.AioRpcError) -> AnyAnomalyError:
    """The exception for a failed call, with whatever rich details its trailers carry."""
    code = error.code()
    metadata = {key: value for key, value in (error.trailing_metadata() or ()) if isinstance(value, str)}
    kind = _BY_CODE.get(code, Internal)
    return kind(code, error.details() or code.name, metadata=metadata)
