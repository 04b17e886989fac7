"""Calls to one service spread over its endpoints: the endpoint with the fewest calls in flight
gets the next one, an endpoint that leaves the set (a terminating or removed pod) gets no new
calls and is closed once its calls have finished, and a call answered UNAVAILABLE (a pod that
went away mid-call, a server draining) is tried again on another endpoint.

The endpoint set is fixed (a list of addresses) or follows a discovery source
(services/common/discovery.py) through `set_endpoints`. Every method the services call
between themselves is idempotent (services/common/clients.py, IDEMPOTENT_METHODS), so a second
attempt is safe; a call that fails any other way is not repeated.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from prometheus_client import Counter, Gauge

from services.common.clients import (
    DEFAULT_TIMEOUT_SECONDS,
    KEEPALIVE_SECONDS,
    dependency_error,
    endpoint_list,
    failed_service,
    open_channel,
)
from services.common.deadlines import remaining
from services.common.discovery import EndpointSliceWatcher, parse_target
from services.common.errors import DependencyUnavailable, StartupError
from services.common.tls import ClientTls
from services.common.waiting import wait_event

log = logging.getLogger(__name__)

S = TypeVar("S")  # a service's stub
T = TypeVar("T")

ATTEMPTS = 4  # per call, over different endpoints while there are untried ones
FIRST_BACKOFF_SECONDS = 0.2  # once every endpoint has failed a call, before trying one again
MAX_BACKOFF_SECONDS = 2.0
NO_ENDPOINT_WAIT_SECONDS = 30.0  # a call waits this long for a first endpoint (pods starting)
TLS_CHECK_SECONDS = 10.0  # how often a pool looks for renewed TLS files (then opens new connections)
EJECT_SECONDS = 5.0  # an endpoint that answered UNAVAILABLE goes last for this long
# Retry throttling, as gRPC's own (services/common/clients.py): a failed attempt costs a token, a
# success earns half of one, and below half of the tokens nothing is retried, so a dependency
# that is down is not hammered by every hop above it.
MAX_TOKENS, TOKEN_RATIO = 100.0, 0.5

ENDPOINTS = Gauge("anyanomaly_endpoints", "endpoints of a service this process calls: ready (take new calls) or "
                  "leaving (finishing their calls)", ["service", "state"])
RETRIED = Counter("anyanomaly_endpoint_retries_total", "calls answered UNAVAILABLE and tried on another endpoint",
                  ["service"])


@dataclass(eq=False)
class Endpoint(Generic[S]):
    address: str
    channel: grpc.aio.Channel
    stub: S
    in_flight: int = 0
    leaving: bool = False  # out of the set: no new calls, closed when idle
    ejected_until: float = 0.0  # answered UNAVAILABLE: picked only when nothing else is left


class EndpointPool(Generic[S]):
    """The endpoints of one service (named in errors as `service`), reached through `target`."""

    def __init__(self, service: str, target: str, open_channel: Callable[[str], grpc.aio.Channel],
                 stub_type: Callable[[grpc.aio.Channel], S], attempts: int = ATTEMPTS,
                 tls: ClientTls | None = None) -> None:
        self.service, self.target = service, target
        self._open, self._stub_type, self._attempts = open_channel, stub_type, attempts
        self._tls = tls
        self._tls_version = tls.version() if tls else None
        self._tls_checked = time.monotonic()
        self._endpoints: dict[str, Endpoint[S]] = {}
        self._leaving: set[Endpoint[S]] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._turn = itertools.count()
        self._tokens = MAX_TOKENS
        self.discovery: EndpointSliceWatcher | None = None

    @property
    def addresses(self) -> frozenset[str]:
        """The endpoints that get new calls."""
        return frozenset(self._endpoints)

    @property
    def leaving(self) -> frozenset[str]:
        """Endpoints out of the set whose calls are still finishing."""
        return frozenset(e.address for e in self._leaving)

    def set_endpoints(self, addresses: Iterable[str]) -> None:
        """The endpoints that may take new calls from now on."""
        wanted = set(addresses)
        added = wanted - self._endpoints.keys()
        removed = self._endpoints.keys() - wanted
        if not added and not removed:
            return
        try:
            opened = {address: self._endpoint(address) for address in sorted(added)}
        except StartupError as exc:  # TLS files that cannot be used: the set stays as it is
            log.error("%s: cannot connect to new endpoints: %s", self.service, exc)
            return
        self._endpoints.update(opened)
        for address in sorted(removed):
            self._retire(self._endpoints.pop(address))
        log.info("%s endpoints changed", self.service,
                 extra={"target": self.target, "endpoints": sorted(self._endpoints), "added": sorted(added),
                        "removed": sorted(removed)})
        self._notify()

    def _endpoint(self, address: str) -> Endpoint[S]:
        channel = self._open(address)
        return Endpoint(address, channel, self._stub_type(channel))

    def _retire(self, endpoint: Endpoint[S]) -> None:
        endpoint.leaving = True
        self._leaving.add(endpoint)
        self._close_when_idle(endpoint)

    def _renew_if_tls_changed(self) -> None:
        """New connections to every endpoint once the TLS files change (a renewed client
        certificate or CA); calls on the old ones finish there."""
        if self._tls is None or time.monotonic() - self._tls_checked < TLS_CHECK_SECONDS:
            return
        self._tls_checked = time.monotonic()
        version = self._tls.version()
        if version == self._tls_version:
            return
        try:
            renewed = {address: self._endpoint(address) for address in self._endpoints}
        except StartupError as exc:  # half-written or unreadable files: keep the connections there are
            log.warning("%s: TLS files changed but cannot be used; keeping the current connections: %s",
                        self.service, exc)
            return
        self._tls_version = version
        for endpoint in self._endpoints.values():
            self._retire(endpoint)
        self._endpoints = renewed
        log.info("%s: TLS files changed; new connections opened", self.service)
        self._notify()

    def _notify(self) -> None:
        ENDPOINTS.labels(self.service, "ready").set(len(self._endpoints))
        ENDPOINTS.labels(self.service, "leaving").set(len(self._leaving))
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, condition: Callable[[EndpointPool[S]], bool], timeout: float) -> bool:
        """Whether `condition(self)` came true within `timeout` seconds (checked on each change)."""
        deadline = time.monotonic() + timeout
        while not condition(self):
            left = deadline - time.monotonic()
            if left <= 0 or not await wait_event(self._changed, left):
                return condition(self)
        return True

    async def call(self, method: Callable[[S], Callable[..., Awaitable[T]]], request: Any,
                   timeout: float | None) -> T:
        """`method(stub)(request)` on the least busy endpoint; UNAVAILABLE from that endpoint goes
        on to another one, within `timeout` seconds over all attempts (and the deadline of the RPC
        being served). Only for methods that change nothing: an attempt may be repeated."""
        budget = remaining(timeout)
        deadline = None if budget is None else time.monotonic() + budget
        failed: set[str] = set()
        backoff = FIRST_BACKOFF_SECONDS
        self._renew_if_tls_changed()
        for attempt in range(1, self._attempts + 1):
            endpoint = await self._pick(failed, deadline)
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            endpoint.in_flight += 1
            try:
                answer = await method(endpoint.stub)(request, timeout=left)
                self._tokens = min(MAX_TOKENS, self._tokens + TOKEN_RATIO)
                return answer
            except grpc.aio.AioRpcError as error:
                if not self._retry(error, endpoint, attempt, deadline):
                    raise dependency_error(self.service, error) from error
                failed.add(endpoint.address)
                if not self._endpoints.keys() - failed:  # every endpoint failed once: wait, then try again
                    failed.clear()
                    pause = backoff if deadline is None else min(backoff, deadline - time.monotonic())
                    await asyncio.sleep(max(pause, 0.0))
                    backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                    if deadline is not None and time.monotonic() >= deadline:
                        raise dependency_error(self.service, error) from error
            finally:
                endpoint.in_flight -= 1
                if endpoint.leaving:
                    self._close_when_idle(endpoint)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _retry(self, error: grpc.aio.AioRpcError, endpoint: Endpoint[S], attempt: int,
               deadline: float | None) -> bool:
        """Whether a failed attempt goes on to another endpoint: UNAVAILABLE from this service's
        endpoint itself (not from a service further down, which another endpoint would reach
        too), attempts and time left, and retries not throttled."""
        if error.code() != grpc.StatusCode.UNAVAILABLE or failed_service(error) not in ("", self.service):
            return False
        endpoint.ejected_until = time.monotonic() + EJECT_SECONDS
        self._tokens = max(0.0, self._tokens - 1)
        if attempt == self._attempts or self._tokens <= MAX_TOKENS / 2:
            return False
        if deadline is not None and time.monotonic() >= deadline:
            return False
        log.warning("%s at %s unavailable; trying another endpoint", self.service, endpoint.address,
                    extra={"attempt": attempt, "error": error.details()})
        RETRIED.labels(self.service).inc()
        return True

    async def _pick(self, failed: set[str], deadline: float | None) -> Endpoint[S]:
        while not self._endpoints:
            wait = NO_ENDPOINT_WAIT_SECONDS if deadline is None else min(NO_ENDPOINT_WAIT_SECONDS,
                                                                           deadline - time.monotonic())
            if wait <= 0 or not await wait_event(self._changed, wait):
                raise DependencyUnavailable(f"{self.service}: no ready endpoint for {self.target}",
                                            service=self.service)
        now = time.monotonic()
        untried = [e for a, e in self._endpoints.items() if a not in failed] or list(self._endpoints.values())
        candidates = [e for e in untried if e.ejected_until <= now] or untried  # a failing one goes last
        start = next(self._turn) % len(candidates)  # ties go round the endpoints
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda e: e.in_flight)

    def _close_when_idle(self, endpoint: Endpoint[S]) -> None:
        if endpoint.in_flight == 0 and endpoint in self._leaving:
            self._leaving.discard(endpoint)
            self._notify()
            task = asyncio.ensure_future(endpoint.channel.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self.discovery is not None:
            await self.discovery.close()
        channels = [e.channel for e in (*self._endpoints.values(), *self._leaving)]
        self._endpoints.clear()
        self._leaving.clear()
        self._notify()
        await asyncio.gather(*(c.close() for c in channels), *self._closing, return_exceptions=True)


async def open_pool(service: str, address: str, stub_type: Callable[[grpc.aio.Channel], S], max_message_mb: int = 64,
                    default_timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
                    keepalive_seconds: float = KEEPALIVE_SECONDS, tls: ClientTls | None = None) -> EndpointPool[S]:
    """The pool for a service address: `kubernetes:///SERVICE[.NAMESPACE]:PORT` follows the
    Service's ready pods; "a:p,b:p" is a fixed set; one address (host:port, dns:///name:port) is
    one channel that balances round-robin over what the name resolves to and retries there.
    With `tls`, a pod (reached by IP) must present a certificate for the Service's name.
    Without access to the Kubernetes API (no service account token, no kubeconfig), a
    kubernetes:/// address with a port number falls back to DNS round-robin over the Service."""
    try:
        target = parse_target(address)
        endpoints = endpoint_list(address) if target is None and "," in address else [address]
    except ValueError as exc:
        raise StartupError(f"{service} address: {exc}") from None
    server_name = target.service if target else ""

    def endpoint_channel(endpoint: str) -> grpc.aio.Channel:
        return open_channel(endpoint, max_message_mb, default_timeout, keepalive_seconds, retries=False, tls=tls,
                            server_name=server_name)

    if target is not None:
        pool = EndpointPool(service, str(target), endpoint_channel, stub_type, tls=tls)
        pool.discovery = EndpointSliceWatcher(target, pool.set_endpoints)
        try:
            await pool.discovery.start()
            return pool
        except StartupError as exc:
            if not target.port.isdigit():
                raise
            endpoints = [target.dns_address()]
            log.warning("%s: %s; calling %s instead (DNS round-robin)", service, exc, endpoints[0])
    if len(endpoints) > 1:
        pool = EndpointPool(service, address, endpoint_channel, stub_type, tls=tls)
        pool.set_endpoints(endpoints)
        return pool
    pool = EndpointPool(service, endpoints[0], lambda a: open_channel(
        a, max_message_mb, default_timeout, keepalive_seconds, tls=tls, server_name=server_name),
        stub_type, attempts=1, tls=tls)
    pool.set_endpoints(endpoints)
    return pool
