"""Endpoints of a Kubernetes Service, followed through its EndpointSlices.

A target `kubernetes:///SERVICE[.NAMESPACE]:PORT` (PORT: the port's name, e.g. `grpc`, or its
number, the pods' port) is resolved by listing, then watching, the EndpointSlices labelled
`kubernetes.io/service-name=SERVICE`. An endpoint counts while it is ready and not terminating
(a pod that is shutting down, or failing its readiness probe, drops out at once; calls already
on it finish). Needs get/list/watch on endpointslices in that namespace
(k8s/base/discovery-rbac.yaml) and the Kubernetes API: $KUBECONFIG when set, else the pod's
service account in a cluster, else ~/.kube/config. The client is only imported when such a target is used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.config import environment
from services.common.errors import StartupError

log = logging.getLogger(__name__)

SCHEME = "kubernetes:///"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
WATCH_SECONDS = 240  # the API server ends each watch after this; the watcher lists again
RETRY_MIN_SECONDS, RETRY_MAX_SECONDS = 0.5, 30.0


@dataclass(frozen=True)
class KubernetesTarget:
    service: str
    namespace: str
    port: str  # a port name, or a number

    def __str__(self) -> str:
        return f"{SCHEME}{self.service}.{self.namespace}:{self.port}"

    def dns_address(self) -> str:
        """The Service by DNS (needs a port number): gRPC's round robin over its records."""
        return f"dns:///{self.service}.{self.namespace}.svc:{self.port}"


def parse_target(address: str) -> KubernetesTarget | None:
    """The Service a `kubernetes:///` address names; None for any other address."""
    if not address.startswith(SCHEME):
        return None
    host, _, port = address[len(SCHEME):].rpartition(":")
    service, _, namespace = host.partition(".")
    namespace = namespace.split(".")[0]  # "lvlm.prod.svc.cluster.local" is in namespace "prod"
    if not service or not port:
        raise ValueError(f"{address!r}: write {SCHEME}SERVICE[.NAMESPACE]:PORT, e.g. {SCHEME}lvlm:grpc")
    return KubernetesTarget(service, namespace or _own_namespace(), port)


def _own_namespace() -> str:
    try:
        return NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


def _port_number(slice_: Mapping[str, Any], port: str) -> int | None:
    for entry in slice_.get("ports") or []:
        if (port.isdigit() and entry.get("port") == int(port)) or entry.get("name") == port:
            return int(entry["port"])
    return None


def endpoint_addresses(slices: Iterable[Mapping[str, Any]], port: str) -> tuple[set[str], set[str]]:
    """("ip:port" that take calls, "ip:port" that are terminating) of a Service's EndpointSlices
    (as the API's JSON). `ready` unset counts as ready, as the API defines it."""
    usable: set[str] = set()
    terminating: set[str] = set()
    for slice_ in slices:
        number = _port_number(slice_, port)
        if number is None or slice_.get("addressType") not in ("IPv4", "IPv6"):
            continue
        for endpoint in slice_.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            for ip in endpoint.get("addresses") or []:
                address = f"[{ip}]:{number}" if ipaddress.ip_address(ip).version == 6 else f"{ip}:{number}"
                if conditions.get("terminating"):
                    terminating.add(address)
                elif conditions.get("ready") is not False:
                    usable.add(address)
    return usable, terminating


class EndpointSliceWatcher:
    """Follows the EndpointSlices of `target` and calls `publish(addresses)` on every change."""

    def __init__(self, target: KubernetesTarget, publish: Callable[[set[str]], None]) -> None:
        self.target, self._publish = target, publish
        self._slices: dict[str, Mapping[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._api: Any = None
        self._warned = False  # about a port the slices do not have
        self._backoff = RETRY_MIN_SECONDS

    async def start(self) -> None:
        """Connect to the API (a missing configuration stops start-up with what to do), then
        follow the slices in the background."""
        from kubernetes.aio import client, config  # only for kubernetes:/// targets
        from kubernetes.aio.config.config_exception import ConfigException

        configuration = client.Configuration()
        try:
            if environment("KUBERNETES_SERVICE_HOST") and not environment("KUBECONFIG"):  # in a pod
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            else:
                await config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=environment("KUBECONFIG") or None, client_configuration=configuration)
        except (ConfigException, OSError) as exc:
            raise StartupError(
                f"{self.target}: no Kubernetes API to discover endpoints with ({exc}); run in a pod whose service "
                "account may get/list/watch endpointslices (automountServiceAccountToken: true), set KUBECONFIG, "
                "give the port as a number (DNS round-robin is used then), or give the address as host:port or "
                "dns:///name:port") from exc
        self._api = client.DiscoveryV1Api(client.ApiClient(configuration))
        self._task = asyncio.create_task(self._follow())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._api is not None:
            await self._api.api_client.close()

    async def _follow(self) -> None:
        from kubernetes.aio.client.exceptions import ApiException

        while True:
            try:
                await self._list_and_watch()
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status == 410:  # the watch fell too far behind (the API keeps a window): list again
                    log.info("endpoint watch of %s expired; listing again", self.target)
                    await asyncio.sleep(RETRY_MIN_SECONDS)
                    continue
                await self._pause(exc)
            except Exception as exc:  # noqa: BLE001 (the API unreachable, a broken stream: list again)
                await self._pause(exc)

    async def _pause(self, exc: Exception) -> None:
        log.warning("endpoint discovery of %s failed; retrying", self.target,
                    extra={"error": str(exc)[:300], "retry_seconds": round(self._backoff, 2)})
        await asyncio.sleep(self._backoff * random.uniform(0.8, 1.2))
        self._backoff = min(self._backoff * 2, RETRY_MAX_SECONDS)

    async def _list_and_watch(self) -> None:
        """List the slices, then follow them until the watch breaks (each watch the API server
        ends after WATCH_SECONDS resumes where it stopped)."""
        from kubernetes.aio import watch

        selector = f"{SERVICE_NAME_LABEL}={self.target.service}"
        listing = await self._api.list_namespaced_endpoint_slice(self.target.namespace, label_selector=selector)
        slices = [self._api.api_client.sanitize_for_serialization(s) for s in listing.items]
        self._slices = {s["metadata"]["name"]: s for s in slices if self._ours(s)}
        self._backoff = RETRY_MIN_SECONDS  # the API answers again
        self._changed()
        version = listing.metadata.resource_version
        while True:
            async with watch.Watch() as stream:  # type: ignore[no-untyped-call]
                async for event in stream.stream(
                    self._api.list_namespaced_endpoint_slice, self.target.namespace, label_selector=selector,
                    resource_version=version, timeout_seconds=WATCH_SECONDS, allow_watch_bookmarks=True,
                ):
                    self._apply(event)
                version = stream.resource_version or version

    def _apply(self, event: Mapping[str, Any]) -> None:
        slice_ = event["raw_object"]
        if event["type"] == "BOOKMARK" or not self._ours(slice_):
            return
        name = slice_["metadata"]["name"]
        if event["type"] == "DELETED":
            self._slices.pop(name, None)
        else:  # ADDED, MODIFIED
            self._slices[name] = slice_
        self._changed()

    def _ours(self, slice_: Mapping[str, Any]) -> bool:
        labels = (slice_.get("metadata") or {}).get("labels") or {}
        return bool(labels.get(SERVICE_NAME_LABEL) == self.target.service)

    def _changed(self) -> None:
        usable, terminating = endpoint_addresses(self._slices.values(), self.target.port)
        if terminating:
            log.debug("terminating endpoints of %s", self.target, extra={"terminating": sorted(terminating)})
        ports = {str(p.get(k)) for s in self._slices.values() for p in s.get("ports") or [] for k in ("name", "port")}
        if self._slices and self.target.port not in ports and not self._warned:
            self._warned = True
            log.warning("%s: the Service's EndpointSlices have no port %r (they have %s)", self.target,
                        self.target.port, ", ".join(sorted(ports)))
        self._publish(usable)
