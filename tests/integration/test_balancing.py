"""EndpointPool over real gRPC servers on 127.0.0.1: least requests in flight, endpoints that
leave finish their calls and get no new ones, UNAVAILABLE goes on to another endpoint and
nothing else does, and a call waits a while for a first endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from anyanomaly.v1 import clip_pb2_grpc, common_pb2
from services.common import balancing
from services.common.balancing import RETRIED, EndpointPool, open_pool
from services.common.clients import open_channel
from services.common.errors import FAILED_SERVICE_HEADER, DependencyUnavailable, InvalidInput, StartupError

REQUEST = common_pb2.GetModelInfoRequest()
Pool = EndpointPool["clip_pb2_grpc.ClipServiceAsyncStub"]  # the async stub exists for type checkers only


class Replica:
    """A server answering ClipService.GetModelInfo with its own name; calls wait while `gate` is
    clear; `status` makes every call fail with that code."""

    def __init__(self, name: str) -> None:
        self.name, self.calls, self.status = name, 0, grpc.StatusCode.OK
        self.culprit = ""  # the service a failure names as its cause (one further down)
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()  # set once a call waits at the gate
        self.arrivals: asyncio.Queue[None] = asyncio.Queue()  # one item per call received
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("anyanomaly.v1.ClipService", {
            "GetModelInfo": grpc.unary_unary_rpc_method_handler(
                self._answer, request_deserializer=common_pb2.GetModelInfoRequest.FromString,
                response_serializer=common_pb2.ModelInfo.SerializeToString)})])
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    async def _answer(self, request: common_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext[
            common_pb2.GetModelInfoRequest, common_pb2.ModelInfo]) -> common_pb2.ModelInfo:
        self.calls += 1
        self.arrivals.put_nowait(None)
        if self.status != grpc.StatusCode.OK:
            if self.culprit:
                context.set_trailing_metadata(((FAILED_SERVICE_HEADER, self.culprit),))
            await context.abort(self.status, f"{self.name} says no")
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        return common_pb2.ModelInfo(name=self.name)


@asynccontextmanager
async def replicas(count: int) -> AsyncIterator[list[Replica]]:
    started = [Replica(name) for name in "xyz"[:count]]
    for replica in started:
        await replica.server.start()
    try:
        yield started
    finally:
        for replica in started:
            replica.gate.set()
            await replica.server.stop(0)


def pool_of(*addresses: str) -> Pool:
    pool: Pool = EndpointPool("clip_service", "test", lambda a: open_channel(a, retries=False),
                              clip_pb2_grpc.ClipServiceStub)
    pool.set_endpoints(addresses)
    return pool


async def name_of(pool: Pool, timeout: float = 10) -> str:
    return (await pool.call(lambda s: s.GetModelInfo, REQUEST, timeout)).name


async def test_the_next_call_goes_to_the_endpoint_with_the_fewest_calls_in_flight() -> None:
    async with replicas(2) as (x, y):
        pool = pool_of(x.address)
        x.gate.clear()
        held = asyncio.create_task(name_of(pool))
        await x.waiting.wait()
        pool.set_endpoints([x.address, y.address])
        assert [await name_of(pool) for _ in range(4)] == ["y"] * 4  # round robin would wait on x twice
        x.gate.set()
        assert await held == "x"
        assert sorted([await name_of(pool) for _ in range(4)]) == ["x", "x", "y", "y"]  # idle: taken in turn
        await pool.close()


async def test_an_endpoint_that_leaves_finishes_its_calls_and_gets_no_new_ones() -> None:
    async with replicas(2) as (x, y):
        pool = pool_of(x.address)
        x.gate.clear()
        held = asyncio.create_task(name_of(pool))
        await x.waiting.wait()
        pool.set_endpoints([y.address])
        assert pool.leaving == {x.address} and pool.addresses == {y.address}
        y.gate.clear()
        on_y = [asyncio.create_task(name_of(pool)) for _ in range(3)]
        for _ in on_y:
            await y.arrivals.get()
        assert (x.calls, y.calls) == (1, 3)  # none went to x, though it had fewer calls in flight
        x.gate.set()
        assert await held == "x"  # not cut off, not repeated elsewhere
        assert await pool.wait_until(lambda p: not p.leaving, 5)  # its channel is closed once idle
        y.gate.set()
        assert [await call for call in on_y] == ["y"] * 3
        assert (x.calls, y.calls) == (1, 3)
        await pool.close()


async def test_unavailable_goes_to_another_endpoint_and_other_failures_do_not() -> None:
    async with replicas(2) as (x, y):
        pool = pool_of(x.address, y.address)
        x.status = grpc.StatusCode.UNAVAILABLE
        retried = RETRIED.labels("clip_service")._value.get()
        assert [await name_of(pool) for _ in range(4)] == ["y"] * 4
        assert x.calls == 1  # tried once, then passed over while it is ejected
        assert RETRIED.labels("clip_service")._value.get() - retried == 1
        x.status, y.status = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT
        calls = x.calls + y.calls
        with pytest.raises(InvalidInput, match="says no"):
            await name_of(pool)
        assert x.calls + y.calls == calls + 1  # tried once
        await pool.close()


async def test_unavailable_caused_further_down_is_not_tried_elsewhere() -> None:
    """Another endpoint of this service would call the same broken dependency: no multiplying."""
    async with replicas(2) as (x, y):
        pool = pool_of(x.address, y.address)
        for replica in (x, y):
            replica.status, replica.culprit = grpc.StatusCode.UNAVAILABLE, "lvlm_service"
        with pytest.raises(DependencyUnavailable) as caught:
            await name_of(pool)
        assert x.calls + y.calls == 1 and caught.value.service == "lvlm_service"
        await pool.close()


async def test_retries_stop_while_every_endpoint_keeps_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(balancing, "FIRST_BACKOFF_SECONDS", 0.001)
    async with replicas(2) as (x, y):
        pool = pool_of(x.address, y.address)
        x.status = y.status = grpc.StatusCode.UNAVAILABLE
        attempts = []
        for _ in range(40):
            before = x.calls + y.calls
            with pytest.raises(DependencyUnavailable):
                await name_of(pool)
            attempts.append(x.calls + y.calls - before)
        assert attempts[0] == balancing.ATTEMPTS  # retried at first ...
        assert attempts[-10:] == [1] * 10  # ... then throttled (4 each would be 160 in all)
        x.status = y.status = grpc.StatusCode.OK
        assert await name_of(pool) in ("x", "y")
        await pool.close()


async def test_a_stopped_endpoint_is_passed_over_and_all_down_fails_with_unavailable() -> None:
    async with replicas(2) as (x, y):
        pool = pool_of(x.address, y.address)
        await x.server.stop(0)
        assert {await name_of(pool) for _ in range(3)} == {"y"}
        await y.server.stop(0)
        with pytest.raises(DependencyUnavailable, match="clip_service"):
            await name_of(pool, timeout=5)
        await pool.close()


async def test_a_call_waits_for_a_first_endpoint_within_its_deadline() -> None:
    async with replicas(1) as (x,):
        pool = pool_of()
        with pytest.raises(DependencyUnavailable, match="no ready endpoint for test"):
            await name_of(pool, timeout=0.2)
        waiting = asyncio.create_task(name_of(pool))
        for _ in range(3):  # let the call run up to its wait for an endpoint
            await asyncio.sleep(0)
        assert not waiting.done()
        pool.set_endpoints([x.address])
        assert await waiting == "x"
        await pool.close()


async def test_addresses_are_checked_at_start_up() -> None:
    with pytest.raises(StartupError, match=r"clip_service address: .*is not an IP address"):
        await open_pool("clip_service", "10.0.0.1:1,clip:2", clip_pb2_grpc.ClipServiceStub)
    with pytest.raises(StartupError, match=r"SERVICE\[\.NAMESPACE\]:PORT"):
        await open_pool("clip_service", "kubernetes:///clip", clip_pb2_grpc.ClipServiceStub)


async def test_without_the_kubernetes_api_a_service_port_number_falls_back_to_dns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))  # no cluster to ask
    pool = await open_pool("clip_service", "kubernetes:///clip.prod:50051", clip_pb2_grpc.ClipServiceStub)
    assert pool.target == "dns:///clip.prod.svc:50051" and pool.discovery is None
    await pool.close()
    with pytest.raises(StartupError, match="no Kubernetes API to discover endpoints with"):
        await open_pool("clip_service", "kubernetes:///clip.prod:grpc", clip_pb2_grpc.ClipServiceStub)
