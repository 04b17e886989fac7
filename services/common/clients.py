"""Client channels between services, and the one place a failed call to another service
becomes a domain error that names it.

A channel has message limits, keepalive (long Detect streams survive idle NAT/proxy timeouts
and a dead peer is noticed), round-robin balancing over every address of a target (several
"ip:port" separated by commas, or one DNS name with several records, which gRPC re-resolves),
retries for UNAVAILABLE declared per method in the gRPC service config (only for idempotent
methods; a retry goes through the balancer, so with several endpoints it usually lands on
another one; retry throttling stops retrying on a channel whose calls keep failing, so retries
at several hops do not multiply), a per-call timeout capped by the deadline of the RPC being
served, and the caller's request id forwarded in the metadata.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from services.common.deadlines import remaining
from services.common.errors import (
    FAILED_SERVICE_HEADER,
    DeadlineExceeded,
    DependencyFailed,
    DependencyUnavailable,
    InvalidInput,
    Overloaded,
    ServiceError,
)
from services.common.logs import REQUEST_ID_HEADER, current_request_id
from services.common.tls import ClientTls

T = TypeVar("T")

DEFAULT_TIMEOUT_SECONDS = 120.0
KEEPALIVE_SECONDS = 30.0  # how often a channel pings on a quiet connection
MIN_KEEPALIVE_SECONDS = 10.0  # every server accepts pings this often (services/common/server.py)

ADDRESS_FORMS = ("HOST:PORT; IP:PORT,IP:PORT,... (balanced by least calls in flight); dns:///NAME:PORT; or "
                 "kubernetes:///SERVICE[.NAMESPACE]:PORT (follows the Service's ready pods)")

# Methods that change nothing, so a second attempt is always safe. Anything not listed
# (e.g. a future SubmitJob) is never retried by the channel.
IDEMPOTENT_METHODS: dict[str, tuple[str, ...]] = {
    "anyanomaly.v1.ClipService": ("EmbedTexts", "EmbedImages", "SelectKeyFrames", "GetModelInfo"),
    "anyanomaly.v1.ContextService": ("BuildContexts",),
    "anyanomaly.v1.LvlmService": ("Score", "GetModelInfo"),
    "anyanomaly.v1.Orchestrator": ("Detect",),
    "grpc.health.v1.Health": ("Check",),
}
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.2s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config() -> dict[str, Any]:
    """Round-robin over the target's addresses; retries for the idempotent methods only."""
    return {
        "loadBalancingConfig": [{"round_robin": {}}],
        # Each failed attempt costs a token, each success earns half of one, and below half of the
        # 100 tokens nothing is retried: a dependency that is down stops being retried after a
        # dozen calls instead of being hammered by every hop above it, while a pool with one
        # endpoint down (a failure and a success per call) keeps its retries.
        "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.5},
        "methodConfig": [
            {"name": [{"service": service, "method": method} for method in methods], "retryPolicy": RETRY_POLICY}
            for service, methods in IDEMPOTENT_METHODS.items()
        ],
    }


def endpoint_list(address: str) -> list[str]:
    """The "ip:port" (IPv6 as "[ip]:port") of a comma-separated list, checked."""
    hosts = []
    for part in (p.strip() for p in address.split(",") if p.strip()):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{part!r} in {address!r} is not ip:port")
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            # A name resolved once here would go stale when a pod moves; gRPC re-resolves a
            # DNS target itself.
            raise ValueError(f"{host!r} in {address!r} is not an IP address; list IP addresses, or give one "
                             "DNS name whose records are the endpoints (dns:///name:port)") from None
        hosts.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    families = {h.startswith("[") for h in hosts}
    if not hosts:
        raise ValueError(f"{address!r} lists no address")
    if len(families) > 1:
        raise ValueError(f"{address!r} mixes IPv4 and IPv6 addresses; use one family")
    return hosts


def channel_target(address: str) -> str:
    """The gRPC target for "host:port", a comma-separated list of "ip:port" (one channel balancing
    over all), or anything gRPC understands already ("dns:///name:port", "unix:...")."""
    if "," not in address:
        return address
    hosts = endpoint_list(address)
    return f"{'ipv6' if hosts[0].startswith('[') else 'ipv4'}:{','.join(hosts)}"


def channel_options(max_message_mb: int, keepalive_seconds: float = KEEPALIVE_SECONDS,
                    retries: bool = True) -> list[tuple[str, Any]]:
    """`retries=False` for a channel to one endpoint of a pool (services/common/balancing.py),
    which tries another endpoint instead of the same one again."""
    size = max_message_mb * 1024 * 1024
    return [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.enable_retries", int(retries)),
        # A request larger than the retry buffer commits at once and is never retried (the
        # default is 256 KiB; a segment's 24 frames are megabytes).
        ("grpc.per_rpc_retry_buffer_size", size),
        ("grpc.service_config", json.dumps(service_config())),
        ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging a stream that waits for its next result
    ]


def _with_defaults(details: grpc.aio.ClientCallDetails, default_timeout: float | None, token: str = "") -> Any:
    metadata = list(details.metadata or [])
    request_id = current_request_id()
    if request_id and not any(key == REQUEST_ID_HEADER for key, _ in metadata):
        metadata.append((REQUEST_ID_HEADER, request_id))
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    timeout = remaining(details.timeout if details.timeout is not None else default_timeout)
    return grpc.aio.ClientCallDetails(
        details.method, timeout, grpc.aio.Metadata(*metadata), details.credentials, details.wait_for_ready
    )


class _CallDefaults:
    """Every call: a timeout, the request id, and the caller's bearer token when it has one."""

    def __init__(self, default_timeout: float | None, token: str = "") -> None:
        self._timeout, self._token = default_timeout, token

    def _details(self, details: Any) -> Any:
        return _with_defaults(details, self._timeout, self._token)


# One interceptor per kind of call: a channel files an interceptor under the first kind it is an
# instance of, so one class for all four would only ever see unary-unary calls.
class _UnaryUnaryDefaults(_CallDefaults, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStreamDefaults(_CallDefaults, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnaryDefaults(_CallDefaults, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStreamDefaults(_CallDefaults, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def call_defaults(default_timeout: float | None, token: str = "") -> list[grpc.aio.ClientInterceptor]:
    return [kind(default_timeout, token) for kind in (_UnaryUnaryDefaults, _UnaryStreamDefaults,
                                                     _StreamUnaryDefaults, _StreamStreamDefaults)]


def open_channel(
    address: str, max_message_mb: int = 64, default_timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    keepalive_seconds: float = KEEPALIVE_SECONDS, retries: bool = True, tls: ClientTls | None = None,
    server_name: str = "", token: str = "",
) -> grpc.aio.Channel:
    """A channel to `address`, over TLS when `tls` is given. `server_name`: the name the
    server's certificate must carry, when it is not the address's host (a pod's IP). `token`:
    sent as a bearer token on every call (the orchestrator's --auth-tokens-file)."""
    options = channel_options(max_message_mb, keepalive_seconds, retries)
    interceptors = call_defaults(default_timeout, token)
    if tls is None:
        return grpc.aio.insecure_channel(channel_target(address), options=options, interceptors=interceptors)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(channel_target(address), tls.credentials(), options=options,
                                   interceptors=interceptors)


def dependency_error(dependency: str, error: grpc.aio.AioRpcError) -> ServiceError:
    """A domain error for a failed call to another service, naming that service (or the service
    it names as the culprit, when the failure started further down)."""
    message = f"{dependency}: {error.details() or error.code().name}"
    code = error.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(message)
    failed = failed_service(error) or dependency
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Overloaded(message, service=failed)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(message, service=failed)
    if code == grpc.StatusCode.UNAVAILABLE:
        return DependencyUnavailable(message, service=failed)
    # A bug or a refusal in the dependency: repeating the call would not help, so not UNAVAILABLE.
    return DependencyFailed(f"{message} ({code.name})", service=failed)


def failed_service(error: grpc.aio.AioRpcError) -> str:
    """The service a failed call's trailing metadata names as the culprit ("" when none)."""
    return next((str(v) for k, v in error.trailing_metadata() or () if k == FAILED_SERVICE_HEADER), "")


async def call_dependency(dependency: str, rpc: Callable[..., Awaitable[T]], request: Any,
                          timeout: float | None = None) -> T:
    """`await rpc(request)`; a failure becomes the domain error that names `dependency`."""
    try:
        return await rpc(request, timeout=timeout)
    except grpc.aio.AioRpcError as error:
        raise dependency_error(dependency, error) from error

