"""The shared server runtime: health, reflection, graceful drain, start-up failure."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from anyanomaly.v1 import clip_pb2, clip_pb2_grpc, common_pb2
from services.clip_service.engine import ClipEngine
from services.clip_service.server import build_service
from services.common.clients import open_channel
from services.common.server import RunningServer, start_server
from tests.helpers.fixtures import REPO_ROOT
from tests.helpers.processes import die_with_this_process
from tests.helpers.stack import clip_settings


class GatedClipEngine(ClipEngine):
    """A real ClipEngine whose model loading and image batches wait for the test."""

    def __init__(self) -> None:
        super().__init__(clip_settings())
        self.load_gate = asyncio.Event()
        self.batch_entered = threading.Event()
        self.batch_gate = threading.Event()

    async def load(self) -> None:
        await self.load_gate.wait()
        await super().load()

    def _encode_batch(self, rows: list) -> list:  # type: ignore[type-arg]
        self.batch_entered.set()
        self.batch_gate.wait(timeout=30)
        return super()._encode_batch(rows)


async def health(address: str, service: str = "") -> int:
    async with open_channel(address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs' types describe the sync API
        response = await stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(response.status)


async def refused_or_not_serving(address: str) -> bool:
    """True once the server refuses new RPCs or reports NOT_SERVING."""
    try:
        return await health(address) == health_pb2.HealthCheckResponse.NOT_SERVING
    except grpc.aio.AioRpcError as error:
        return bool(error.code() == grpc.StatusCode.UNAVAILABLE)


async def test_health_is_not_serving_until_the_model_is_loaded_and_reflection_lists_services() -> None:
    engine = GatedClipEngine()
    spec, _ = build_service(engine.settings, engine)
    running = await start_server(spec, engine.settings)
    try:
        assert await health(running.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await health(running.address, "anyanomaly.v1.ClipService") == health_pb2.HealthCheckResponse.NOT_SERVING
        async with open_channel(running.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await clip_pb2_grpc.ClipServiceStub(channel).GetModelInfo(common_pb2.GetModelInfoRequest())
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        engine.load_gate.set()
        await running.until_ready()
        assert await health(running.address) == health_pb2.HealthCheckResponse.SERVING
        assert await health(running.address, "anyanomaly.v1.ClipService") == health_pb2.HealthCheckResponse.SERVING

        async with open_channel(running.address) as channel:
            stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
            responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = {s.name async for r in responses for s in r.list_services_response.service}
        assert {"anyanomaly.v1.ClipService", "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= names
    finally:
        engine.load_gate.set()
        engine.batch_gate.set()
        await running.shutdown(1.0)


async def test_shutdown_drains_in_flight_requests_and_refuses_new_ones(avenue21_pngs: list[bytes]) -> None:
    engine = GatedClipEngine()
    engine.load_gate.set()
    spec, _ = build_service(engine.settings, engine)
    running: RunningServer = await start_server(spec, engine.settings)
    await running.until_ready()
    request = clip_pb2.SelectKeyFramesRequest(
        frames=[common_pb2.Image(data=p) for p in avenue21_pngs], texts=["running"]
    )
    try:
        async with open_channel(running.address) as channel:
            stub = clip_pb2_grpc.ClipServiceStub(channel)
            in_flight = asyncio.ensure_future(stub.SelectKeyFrames(request, timeout=30))
            await asyncio.to_thread(engine.batch_entered.wait, 30)  # the request is inside the model now
            shutdown = asyncio.create_task(running.shutdown(grace=30))
            while await refused_or_not_serving(running.address) is False:
                await asyncio.sleep(0.01)  # polling for the drain to begin, not waiting for a result
            assert not in_flight.done()
            engine.batch_gate.set()
            response = await in_flight  # finished during the grace period
            assert len(response.selections) == 1
            await shutdown
        async with open_channel(running.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await clip_pb2_grpc.ClipServiceStub(channel).SelectKeyFrames(request, timeout=2)
            assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        engine.batch_gate.set()
        await running.shutdown(1.0)


def _service_process(args: list[str], tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", *args], cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "HF_HOME": str(tmp_path / "hf"), **env}, preexec_fn=die_with_this_process,
    )


def test_sigterm_stops_a_service_process_cleanly(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    process = _service_process(
        ["services.clip_service", "--port", "0", "--host", "127.0.0.1", "--models", "tiny",
         "--port-file", str(port_file)], tmp_path,
    )
    try:
        lines = []
        assert process.stderr is not None
        for line in process.stderr:  # the service logs JSON lines; wait for readiness
            lines.append(json.loads(line))
            if lines[-1]["msg"] == "ready":
                break
        port = int(port_file.read_text())
        assert any(e["msg"] == "listening" and e["port"] == port for e in lines)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            info = clip_pb2_grpc.ClipServiceStub(channel).GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
        assert info.random_weights
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    messages = [json.loads(line)["msg"] for line in rest.splitlines()]
    assert messages[-3:] == ["stop requested", "draining", "stopped"]


def test_missing_weights_stop_start_up_with_one_message(tmp_path: Path) -> None:
    process = _service_process(
        ["services.clip_service", "--port", "0", "--host", "127.0.0.1", "--offline",
         "--cache-dir", str(tmp_path)], tmp_path,
    )
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    errors = [json.loads(line) for line in err.splitlines() if json.loads(line)["level"] == "error"]
    assert len(errors) == 1
    assert "ANYANOMALY_CLIP_WEIGHTS" in errors[0]["msg"] and "--models tiny" in errors[0]["msg"]


def test_clip_embeddings_survive_the_wire_as_float32(avenue21_pngs: list[bytes]) -> None:
    """Tensor encoding round trip through a real server (sync client, like a VMS integrator)."""
    async def run() -> None:
        spec, engine = build_service(clip_settings())
        running = await start_server(spec, engine.settings)
        await running.until_ready()
        try:
            async with open_channel(running.address) as channel:
                response = await clip_pb2_grpc.ClipServiceStub(channel).EmbedImages(
                    clip_pb2.EmbedImagesRequest(images=[common_pb2.Image(data=avenue21_pngs[0])])
                )
            assert list(response.embeddings.shape) == [1, 64]
            vector = np.frombuffer(response.embeddings.data, dtype="<f4")
            assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5
        finally:
            await running.shutdown(1.0)

    asyncio.run(run())


def test_a_taken_port_stops_start_up_with_one_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = _service_process(["services.context_service", "--host", "127.0.0.1", "--port", str(port)],
                                   tmp_path)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "Traceback" not in err
    # gRPC's C core prints its own bind line too; the service's log is the JSON lines.
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    errors = [entry["msg"] for entry in logged if entry["level"] == "error"]
    assert len(errors) == 1
    assert "cannot bind 127.0.0.1" in errors[0] and "choose another --port" in errors[0]
