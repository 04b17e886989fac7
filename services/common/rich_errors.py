"""google.rpc error details on every failed RPC (the gRPC richer error model, as grpcio-status
sends them in the `grpc-status-details-bin` trailer):

- ErrorInfo: a stable `reason` (e.g. INVALID_INPUT, OVERLOADED, JOB_QUOTA) in the domain
  "anyanomaly.v1", with the service that answered and, when another service caused the failure,
  that one;
- BadRequest: the field at fault, when the error names one (e.g. "options.sigma");
- RetryInfo: how long to wait before retrying, on RESOURCE_EXHAUSTED and UNAVAILABLE.

Clients that do not read the trailer still get the status code and the message as before.
"""

from __future__ import annotations

import datetime

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.errors import ServiceError

DOMAIN = "anyanomaly.v1"
# The message travels in grpc-message and in the Status too; the violation's copy is kept short so
# that the trailer stays well inside gRPC's 8 KiB metadata limit.
DESCRIPTION_CHARS = 200


def _packed(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def status_trailer(error: ServiceError, message: str, service: str) -> tuple[tuple[str, bytes], ...]:
    """The trailing metadata that carries `error`'s details."""
    metadata = {"service": service, **({"failed_service": error.service} if error.service else {})}
    details = [error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata)]
    if error.field:
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=error.field, description=message[:DESCRIPTION_CHARS])]))
    if error.retry_after:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(datetime.timedelta(seconds=error.retry_after))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    code: grpc.StatusCode = error.code
    status = status_pb2.Status(code=code.value[0], message=message, details=[_packed(d) for d in details])
    return tuple(rpc_status.to_status(status).trailing_metadata)
