"""Errors the client raises: one exception per gRPC status, each carrying the status code, the
service's message and, when the service sent them, the rich details (google.rpc field
violations, a retry delay, a stable reason)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


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


def _details(trailer: dict[str, str | bytes]) -> dict[str, Any]:
    """reason, violations and retry_after from a google.rpc.Status in the trailer, if any."""
    raw = trailer.get(rpc_status.GRPC_DETAILS_METADATA_KEY)
    if not isinstance(raw, bytes):
        return {}
    found: dict[str, Any] = {}
    try:
        status = status_pb2.Status.FromString(raw)
    except DecodeError:  # not ours to trust; the code and the message still stand
        return {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            found["reason"] = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found["violations"] = tuple(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            found["retry_after"] = retry.retry_delay.ToTimedelta().total_seconds()
    return found


def from_rpc_error(error: grpc.aio.AioRpcError) -> AnyAnomalyError:
    """The exception for a failed call, with the rich details its trailer carries."""
    code = error.code()
    trailer = {key: value for key, value in (error.trailing_metadata() or ())}
    kind = _BY_CODE.get(code, Internal)
    return kind(code, error.details() or code.name,
                metadata={key: value for key, value in trailer.items() if isinstance(value, str)},
                **_details(trailer))


def describe(error: grpc.aio.AioRpcError) -> str:
    """The service's message with what the details add for a person: the fields at fault and
    when to retry."""
    rich = from_rpc_error(error)
    text = rich.message
    fields = [v.field for v in rich.violations if v.field]
    if fields:
        text += f" (field: {', '.join(fields)})"
    if rich.retry_after:
        text += f"; retry in {rich.retry_after:g} s"
    return text
