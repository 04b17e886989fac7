"""The one server bootstrap every service uses.

`start_server()` binds a grpc.aio server with the service's servicers, standard
health checking (NOT_SERVING until the service's `start` hook has finished, e.g.
loaded its model), server reflection, message-size and concurrency limits and the
error-mapping interceptor. `serve()` runs it until SIGTERM/SIGINT, then drains:
health goes NOT_SERVING, new RPCs are refused, in-flight RPCs get `grace_seconds`
to finish, then the service's `stop` hook runs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.common.clients import KEEPALIVE_SECONDS, MIN_KEEPALIVE_SECONDS
from services.common.config import ServerSettings
from services.common.errors import StartupError
from services.common.interceptors import Authorize, ServiceInterceptor
from services.common.lifeline import die_with_parent
from services.common.tls import ServerTls

log = logging.getLogger("anyanomaly.server")

# The context every async servicer method receives.
RpcContext: TypeAlias = grpc.aio.ServicerContext[Any, Any]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _nothing() -> None:
    return None


@dataclass
class ServiceSpec:
    """What a service contributes to the shared runtime."""

    name: str  # for logs and metrics, e.g. "clip_service"
    service_names: Sequence[str]  # full gRPC names, e.g. "anyanomaly.v1.ClipService"
    register: Callable[[grpc.aio.Server], None]  # adds the servicers
    start: Callable[[], Awaitable[None]] = field(default=_nothing)  # e.g. load the model
    stop: Callable[[], Awaitable[None]] = field(default=_nothing)  # release resources
    # Before in-flight RPCs get their grace: end endless streams (watchers) and background work.
    drain: Callable[[], Awaitable[None]] = field(default=_nothing)
    authorize: Authorize | None = None  # checks each application RPC's credentials (the public API)
    bound: Callable[[int], None] = field(default=lambda port: None)  # told the port, once bound


class RunningServer:
    """A started server; ready once the service's start hook has completed."""

    def __init__(self, spec: ServiceSpec, server: grpc.aio.Server, health: HealthServicer, port: int,
                 health_server: grpc.aio.Server | None = None) -> None:
        self.spec, self.server, self.health, self.port = spec, server, health, port
        self.health_server = health_server  # plaintext, health only (--health-port)
        self.ready_task: asyncio.Task[None] = asyncio.create_task(self._become_ready())
        self._stopped = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _become_ready(self) -> None:
        await self.spec.start()
        for name in ("", *self.spec.service_names):
            await self.health.set(name, SERVING)
        log.info("ready", extra={"port": self.port})

    async def until_ready(self) -> None:
        await asyncio.shield(self.ready_task)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting RPCs, give in-flight ones `grace` seconds, then release resources."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        log.info("draining", extra={"grace_seconds": grace})
        if self.ready_task.done():
            await self.spec.drain()
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        if not self.ready_task.done():
            self.ready_task.cancel()
        await asyncio.gather(self.ready_task, return_exceptions=True)
        await self.spec.stop()
        log.info("stopped")


def server_options(max_message_mb: int, keepalive_seconds: float = KEEPALIVE_SECONDS,
                   max_connection_age_seconds: float = 0.0) -> list[tuple[str, int]]:
    size = max_message_mb * 1024 * 1024
    # After this age a connection gets GOAWAY: new calls go over a new connection (to whatever
    # replicas exist now); no grace limit is set, so streams in progress (a detection, a watch) go on.
    age = [("grpc.max_connection_age_ms", int(max_connection_age_seconds * 1000))] if max_connection_age_seconds else []
    return [*age,
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.so_reuseport", 0),  # a busy port is an error, not a silently shared one
        # Keepalive: ping idle clients (a vanished caller frees its work) and accept the clients'
        # own pings (services/common/clients.py) on long, quiet streams.
        ("grpc.keepalive_time_ms", int(2 * keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Whatever this server's own interval, it accepts any client that pings at the floor.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", int(MIN_KEEPALIVE_SECONDS * 1000)),
        ("grpc.http2.max_pings_without_data", 0),
        # Measured (grpcio 1.85): a stream that waits quietly (WatchEvents, WatchJob, a held LVLM
        # call) is ended with GOAWAY "too_many_pings" after three client keepalive pings, even
        # when they are further apart than the interval above. No strike limit then: pings are
        # cheap, and a quiet stream is the normal case for event subscribers.
        ("grpc.http2.max_ping_strikes", 0),
    ]


async def start_server(spec: ServiceSpec, settings: ServerSettings) -> RunningServer:
    """Bind and start the server; readiness follows asynchronously (see RunningServer)."""
    server = grpc.aio.server(
        interceptors=[ServiceInterceptor(spec.name, spec.authorize)],
        options=server_options(settings.max_message_mb, settings.keepalive_seconds,
                               settings.max_connection_age_seconds),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
    )
    spec.register(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("", *spec.service_names):
        await health.set(name, NOT_SERVING)
    reflection.enable_server_reflection(
        [*spec.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    tls = ServerTls.from_settings(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    address = f"{settings.host}:{settings.port}"
    try:
        port = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot bind {address}: {exc}; choose another --port") from exc
    spec.bound(port)
    if tls is None and not _loopback(settings.host):
        log.warning("serving WITHOUT TLS on %s: anyone on the network can read and send these calls; set "
                    "--tls-cert and --tls-key, or bind 127.0.0.1", address)
    health_server = await _start_health_server(health, settings) if settings.health_port else None
    await server.start()
    log.info("listening", extra={"host": settings.host, "port": port, "tls": bool(tls),
                                 "client_certificates": bool(tls and tls.client_ca)})
    if settings.port_file:  # written whole, then renamed: a launcher never reads half a number
        partial = Path(settings.port_file + ".partial")
        partial.write_text(f"{port}\n")
        partial.replace(settings.port_file)
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
        log.info("metrics", extra={"metrics_port": settings.metrics_port})
    return RunningServer(spec, server, health, port, health_server)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


async def _start_health_server(health: HealthServicer, settings: ServerSettings) -> grpc.aio.Server:
    """The health service alone, in plaintext: what Kubernetes' gRPC probes can reach when the
    service port speaks TLS. It tells SERVING or NOT_SERVING, nothing else."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])  # a busy port is an error
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    address = f"{settings.host}:{settings.health_port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot bind {address}: {exc}; choose another --health-port") from exc
    await server.start()
    log.info("health port", extra={"health_port": settings.health_port})
    return server


async def serve(spec: ServiceSpec, settings: ServerSettings) -> int:
    """Run until SIGTERM or SIGINT; returns the process exit code."""
    die_with_parent(settings.parent_pid)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    try:
        running = await start_server(spec, settings)
    except (OSError, StartupError) as refused:  # a port taken, TLS files missing: one line, no traceback
        log.error(str(refused))
        return 2
    stop_wait = asyncio.create_task(stop_requested.wait())
    await asyncio.wait({running.ready_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if running.ready_task.done() and running.ready_task.exception() is not None:
        error = running.ready_task.exception()
        if isinstance(error, StartupError):
            log.error(str(error))
        else:
            log.error("start-up failed", exc_info=error)
        stop_wait.cancel()
        await running.shutdown(0)
        return 2
    await stop_wait
    log.info("stop requested")
    await running.shutdown(settings.grace_seconds)
    return 0
