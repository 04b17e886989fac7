"""TLS on every link, through real servers on 127.0.0.1: mutual TLS between the services, a
detection over it, callers without the right certificate refused, a plaintext health port for
Kubernetes' probes, renewed certificates picked up without a restart, and clear start-up errors."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from anyanomaly.v1 import (
    clip_pb2_grpc,
    common_pb2,
    context_pb2,
    context_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
)
from services.clip_service.server import build_service as build_clip
from services.common import balancing
from services.common.clients import open_channel
from services.common.errors import StartupError
from services.common.images import encode_png
from services.common.server import start_server
from services.common.tls import ClientTls, ServerTls
from tests.helpers import cli
from tests.helpers.certificates import Authority, Pki
from tests.helpers.detect import frame_folder, split
from tests.helpers.fake_openai_server import FakeOpenAIServer
from tests.helpers.lvlm import openai_lvlm, score, segment_items
from tests.helpers.stack import clip_settings, lvlm_settings, start_clip, start_context, start_lvlm, start_orchestrator

REQUEST = common_pb2.GetModelInfoRequest()


def client(pki: Pki, name: str = "") -> ClientTls:
    """A test client trusting `pki`'s CA, with a certificate as `name` when given."""
    if not name:
        return ClientTls(str(pki.ca_file))
    files = pki.caller(name)
    return ClientTls(str(files["tls_ca"]), str(files["tls_client_cert"]), str(files["tls_client_key"]))


async def model_name(address: str, tls: ClientTls | None) -> str:
    async with open_channel(address, tls=tls) as channel:
        return (await clip_pb2_grpc.ClipServiceStub(channel).GetModelInfo(REQUEST, timeout=10)).name


async def test_a_detection_runs_over_mutual_tls_and_callers_without_a_certificate_are_refused(
        tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    clip, _ = await start_clip(clip_settings(**pki.server("clip")))
    context = await start_context(clip.address, **pki.server("context"), **pki.caller("context-caller"))
    lvlm = await start_lvlm(lvlm_settings(**pki.server("lvlm")))
    orchestrator = await start_orchestrator(clip.address, context.address, lvlm.address,
                                            **pki.server("orchestrator", mutual=False),
                                            **pki.caller("orchestrator-caller"))
    try:
        source = orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 24)))
        request = orchestrator_pb2.DetectRequest(source=source, texts=["bicycle"])
        async with open_channel(orchestrator.address, tls=client(pki)) as channel:  # no client certificate needed
            updates = [u async for u in orchestrator_pb2_grpc.OrchestratorStub(channel).Detect(request, timeout=120)]
        _, segments, summary = split(updates)
        assert len(segments) == 1 and summary.num_frames == 24

        # The command line reaches it with the CA, and says what is wrong without.
        out = tmp_path / "result.json"
        command = ["detect", str(source.frame_folder), "-t", "bicycle", "--address", orchestrator.address,
                   "--output", str(out)]
        done = await asyncio.to_thread(cli.run, *command, "--tls-ca", str(pki.ca_file))
        assert done.returncode == 0, done.stderr
        assert len(json.loads(out.read_text())["segments"]) == 1
        done = await asyncio.to_thread(cli.run, *command)  # plaintext to a TLS port
        assert done.returncode == 2 and "cannot reach the orchestrator" in done.stderr
        done = await asyncio.to_thread(cli.run, *command, "--tls-cert", str(pki.ca_file))
        assert done.returncode == 2 and "needs --tls-ca too" in done.stderr

        assert await model_name(clip.address, client(pki, "test-caller"))
        stranger = Pki(tmp_path / "stranger")  # a client certificate from another CA
        theirs = stranger.caller("stranger")
        strangers = ClientTls(str(pki.ca_file), str(theirs["tls_client_cert"]), str(theirs["tls_client_key"]))
        for refused in (None, client(pki), strangers):  # plaintext; no client certificate; the wrong CA's
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await model_name(clip.address, refused)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for server in (orchestrator, lvlm, context, clip):
            await server.shutdown(1.0)


async def test_the_health_port_answers_in_plaintext_and_serves_nothing_else(tmp_path: Path) -> None:
    settings = clip_settings(**Pki(tmp_path).server("clip"), health_port=free_port())
    spec, _ = build_clip(settings)
    running = await start_server(spec, settings)
    await running.until_ready()
    try:
        async with open_channel(f"127.0.0.1:{settings.health_port}") as channel:
            health: object = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)  # type: ignore[attr-defined]
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await clip_pb2_grpc.ClipServiceStub(channel).GetModelInfo(REQUEST, timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await running.shutdown(1.0)


async def test_renewed_certificates_are_used_without_a_restart(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Both sides move to a new CA in place (as cert-manager renews a mounted Secret): the server
    presents and checks against the new files at the next handshake, and a caller opens new
    connections with its new certificate."""
    monkeypatch.setattr(balancing, "TLS_CHECK_SECONDS", 0.0)
    live, old, new = tmp_path / "live", tmp_path / "old", tmp_path / "new"
    live.mkdir()
    files: dict[str, dict[str, object]] = {}
    for folder in (old, new):
        pki = Pki(folder)
        files[folder.name] = {**pki.server("clip"), **pki.caller("context")}

    def install(generation: str) -> dict[str, object]:
        """The generation's files copied onto the same paths in `live`; those paths."""
        paths: dict[str, object] = {}
        for setting, source in files[generation].items():
            target = live / f"{setting}.pem"
            shutil.copyfile(str(source), target)
            paths[setting] = str(target)
        return paths

    paths = install("old")
    clip_files = {k: paths[k] for k in ("tls_cert", "tls_key")}
    settings = clip_settings(**clip_files, tls_client_ca=paths["tls_ca"])
    clip, _ = await start_clip(settings)
    context = await start_context(clip.address, **{k: paths[k] for k in (
        "tls_ca", "tls_client_cert", "tls_client_key")})
    port = clip.port
    try:
        caller = ClientTls(str(paths["tls_ca"]), str(paths["tls_client_cert"]),
                           str(paths["tls_client_key"]))
        assert await model_name(clip.address, caller)
        await _context_embeds(context.address)

        install("new")
        assert await model_name(clip.address, caller)  # the same paths, the new CA and certificate
        old_files = files["old"]
        with pytest.raises(grpc.aio.AioRpcError):  # the server no longer accepts the old CA's client certificate
            await model_name(clip.address, ClientTls(str(files["new"]["tls_ca"]),
                                                     str(old_files["tls_client_cert"]),
                                                     str(old_files["tls_client_key"])))
        # The server restarts on its port, so context_service must connect anew: with the new files.
        await clip.shutdown(0.5)
        settings.port = port
        clip, _ = await start_clip(settings)
        await _context_embeds(context.address)
    finally:
        await context.shutdown(1.0)
        await clip.shutdown(1.0)


async def _context_embeds(address: str) -> None:
    """A call through context_service that makes it call clip_service."""
    frames = [common_pb2.Image(data=encode_png(np.full((64, 64, 3), i * 40, np.uint8))) for i in range(4)]
    request = context_pb2.BuildContextsRequest(frames=frames, queries=[
        context_pb2.ContextQuery(text="running", key_frames=[0, 1, 2, 3])])
    async with open_channel(address) as channel:
        response = await context_pb2_grpc.ContextServiceStub(channel).BuildContexts(request, timeout=60)
    assert len(response.contexts) == 1


def free_port() -> int:
    """A port that was free a moment ago (the server binds it right after)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_tls_settings_that_cannot_work_stop_start_up_with_what_to_fix(tmp_path: Path) -> None:
    authority = Authority.create("ca")
    cert, key = authority.issue(tmp_path, "clip")
    with pytest.raises(StartupError, match="both --tls-cert and --tls-key"):
        ServerTls.from_settings(str(cert), "", "")
    with pytest.raises(StartupError, match="needs --tls-ca too"):
        ClientTls.from_settings("", str(cert), str(key))
    with pytest.raises(StartupError, match=r"cannot read the TLS CA .*missing\.pem"):
        ClientTls(str(tmp_path / "missing.pem")).credentials()
    other_cert, _ = authority.issue(tmp_path, "other")
    with pytest.raises(StartupError, match="do not load as a pair"):
        ServerTls(str(other_cert), str(key)).credentials()


async def test_binding_beyond_loopback_without_tls_warns(caplog: pytest.LogCaptureFixture) -> None:
    settings = clip_settings(host="0.0.0.0")
    spec, _ = build_clip(settings)
    with caplog.at_level(logging.WARNING, logger="anyanomaly.server"):
        running = await start_server(spec, settings)
    try:
        assert any("WITHOUT TLS" in r.getMessage() for r in caplog.records)
    finally:
        await running.shutdown(0.5)


async def test_lvlm_service_reaches_an_https_engine_trusting_the_given_ca(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    cert, key = pki.authority.issue(tmp_path, "engine")
    with FakeOpenAIServer(tls=(str(cert), str(key))) as engine:
        assert engine.url.startswith("https://")
        lvlm = await openai_lvlm(engine, openai_ca_file=str(pki.ca_file))
        try:
            response = await score(lvlm.address, segment_items(["bicycle"]))
            assert len(response.items) == 3 and engine.requests
        finally:
            await lvlm.shutdown(1.0)
        untrusting = await openai_lvlm(engine, http_retries=0)  # the system's CAs do not know this one
        try:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await score(untrusting.address, segment_items(["bicycle"]))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "CERTIFICATE_VERIFY_FAILED" in (refused.value.details() or "")
        finally:
            await untrusting.shutdown(1.0)
