"""Domain errors. Services raise these; one interceptor maps them to gRPC status codes."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base class of errors a caller should see with a specific status code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(ServiceError):
    """The request is wrong; the message tells the caller what to change."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Overloaded(ServiceError):
    """Too much work queued; the caller should back off and retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotReady(ServiceError):
    """The model is still loading (or the service is shutting down)."""

    code = grpc.StatusCode.UNAVAILABLE


class DependencyUnavailable(ServiceError):
    """A service this one calls cannot be reached or failed."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ModelLoadError(RuntimeError):
    """Start-up could not load a model. The message names the setting to fix."""

