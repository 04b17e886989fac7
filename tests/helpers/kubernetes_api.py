"""A Kubernetes API server for tests: kmock's emulator (real HTTP on 127.0.0.1, objects kept in
memory, list and watch streams as the API server sends them), with a kubeconfig that points at
it. The test plays the control plane: it writes the EndpointSlices a Service's pods would get."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from kmock import KubernetesEmulator, ResourceInfo, Server

SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
READY, TERMINATING, NOT_READY = "ready", "terminating", "not ready"
_CONDITIONS = {
    READY: {"ready": True, "serving": True, "terminating": False},
    TERMINATING: {"ready": False, "serving": True, "terminating": True},
    NOT_READY: {"ready": False, "serving": False, "terminating": False},
}


def endpoint_slice(name: str, service: str, port: int, endpoints: Mapping[str, str]) -> dict[str, Any]:
    """An EndpointSlice of `service` (port name "grpc") with {ip: READY | TERMINATING | NOT_READY}."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": _CONDITIONS[state]} for ip, state in endpoints.items()],
    }


@dataclass
class Cluster:
    session: aiohttp.ClientSession
    kubeconfig: Path
    _names: set[str]
    emulator: KubernetesEmulator

    async def put_slice(self, name: str, service: str, port: int, endpoints: Mapping[str, str]) -> None:
        body = endpoint_slice(name, service, port, endpoints)
        if name in self._names:  # the emulator replaces what a patch names (here: every field)
            response = await self.session.patch(f"{SLICES}/{name}", json=body)
        else:
            response = await self.session.post(SLICES, json=body)
        response.raise_for_status()
        self._names.add(name)

    async def delete_slice(self, name: str) -> None:
        (await self.session.delete(f"{SLICES}/{name}")).raise_for_status()
        self._names.discard(name)


@asynccontextmanager
async def kubernetes_api(folder: Path) -> AsyncIterator[Cluster]:
    """The emulator serving EndpointSlices, and a kubeconfig for it in `folder` (set KUBECONFIG)."""
    async with KubernetesEmulator() as emulator, Server(emulator):
        emulator.resources["discovery.k8s.io/v1/endpointslices"] = ResourceInfo(kind="EndpointSlice", namespaced=True)
        url = str(emulator.url).rstrip("/")
        kubeconfig = folder / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        }))
        async with aiohttp.ClientSession(base_url=url) as session:
            yield Cluster(session, kubeconfig, set(), emulator)
