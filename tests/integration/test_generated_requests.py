"""Generated requests for every RPC of every service (hypothesis, from the contract's descriptors,
a fixed budget and a fixed seed), through a real stack on 127.0.0.1: every answer is a status a
client can act on (never INTERNAL or UNKNOWN), no service crashes, and all of them still answer
SERVING afterwards. The suite prints the figure (requests tried, statuses seen)."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyanomaly.v1 import (
    clip_pb2,
    context_pb2,
    events_pb2,
    jobs_pb2,
    lvlm_pb2,
    monitors_pb2,
    orchestrator_pb2,
)
from tests.conftest import scripted_stack
from tests.helpers.detect import frame_folder
from tests.helpers.protobuf_strategies import messages

EXAMPLES_PER_METHOD = 20
UNARY_TIMEOUT, STREAM_TIMEOUT = 30.0, 3.0  # a stream that is still going after 3 s is fine (watches)
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def services_of(*modules: Any) -> list[ServiceDescriptor]:
    return [service for module in modules for service in module.DESCRIPTOR.services_by_name.values()]


def caller(channel: grpc.Channel, method: MethodDescriptor) -> Callable[[Any], grpc.StatusCode]:
    """Sends one generated request (a list of them for a client stream) and returns the status."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    answer = message_factory.GetMessageClass(method.output_type)
    kinds: dict[tuple[bool, bool], Any] = {
        (False, False): channel.unary_unary, (False, True): channel.unary_stream,
        (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    rpc = kinds[(method.client_streaming, method.server_streaming)](
        path, request_serializer=serialize, response_deserializer=answer.FromString)

    def call(request: Any) -> grpc.StatusCode:
        sent = iter(request) if method.client_streaming else request
        try:
            if method.server_streaming:
                for _ in zip(range(200), rpc(sent, timeout=STREAM_TIMEOUT), strict=False):
                    pass
            else:
                rpc(sent, timeout=UNARY_TIMEOUT)
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    return call


def serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


def sweep(targets: list[tuple[ServiceDescriptor, str]], statuses: Counter[tuple[str, grpc.StatusCode]]) -> None:
    """Every method of every service, EXAMPLES_PER_METHOD generated requests each (sync client:
    this runs on a thread while the servers run on the test's event loop)."""
    for service, address in targets:
        with grpc.insecure_channel(address) as channel:
            for method in service.methods:
                requests = messages(method.input_type)
                generated = st.lists(requests, max_size=4) if method.client_streaming else requests
                try_method(f"{service.name}.{method.name}", caller(channel, method), generated, statuses)


def try_method(name: str, call: Callable[[Any], grpc.StatusCode], generated: st.SearchStrategy[Any],
               statuses: Counter[tuple[str, grpc.StatusCode]]) -> None:
    @settings(max_examples=EXAMPLES_PER_METHOD, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(generated)
    def one(request: Any) -> None:
        statuses[(name, call(request))] += 1

    one()


def serving(address: str, names: list[str]) -> Iterator[bool]:
    with grpc.insecure_channel(address) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        for name in ("", *names):
            answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            yield answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_generated_requests_for_every_rpc_get_clear_statuses_and_the_services_keep_serving(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    media = tmp_path / "media"
    media.mkdir()
    shutil.copytree(frame_folder(tmp_path, 24), media / "frames")
    statuses: Counter[tuple[str, grpc.StatusCode]] = Counter()
    async with scripted_stack(data_dir=str(tmp_path / "data"), media_roots=str(media), stream_timeout_seconds=1.0,
                              reconnect_min_seconds=0.05) as stack:
        services = stack.stack
        targets = [(s, services.clip.address) for s in services_of(clip_pb2)]
        targets += [(s, services.context.address) for s in services_of(context_pb2)]
        targets += [(s, services.lvlm.address) for s in services_of(lvlm_pb2)]
        targets += [(s, stack.address) for s in services_of(orchestrator_pb2, events_pb2, jobs_pb2, monitors_pb2)]
        await asyncio.to_thread(sweep, targets, statuses)
        for service, address in targets:
            assert all(await asyncio.to_thread(list, serving(address, [service.full_name])))

    seen: Counter[grpc.StatusCode] = Counter()
    for (_, code), count in statuses.items():
        seen[code] += count
    methods = {name for name, _ in statuses}
    with capsys.disabled():
        print(f"\ngenerated requests: {sum(seen.values())} to {len(methods)} methods of {len(targets)} services; "
              + ", ".join(f"{code.name} {count}" for code, count in seen.most_common())
              + "; every service SERVING afterwards")
    assert len(methods) == sum(len(s.methods) for s, _ in targets)
    bad = {key: count for key, count in statuses.items() if key[1] in NEVER}
    assert not bad, bad
