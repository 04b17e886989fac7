"""Credentials on the orchestrator's public API, through a real stack: no token or an unknown
one is UNAUTHENTICATED, a token without the method's scope PERMISSION_DENIED, the right scope
goes through; tokens rotate by editing the file; health and reflection stay open; no token (or
its hash) reaches a log line; the command line sends one; client certificates are identities
under mutual TLS; each caller has its own monitors and jobs budget."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from anyanomaly.v1 import (
    events_pb2,
    events_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    monitors_pb2,
    monitors_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
)
from services.common.auth import new_token, token_hash
from services.common.clients import open_channel
from services.common.tls import ClientTls
from tests.conftest import scripted_stack
from tests.helpers import cli
from tests.helpers.certificates import Pki
from tests.helpers.detect import frame_folder

TOKENS = {name: new_token() for name in ("reader", "detector", "operator", "admin")}
SCOPES = {"reader": "events", "detector": "detect", "operator": "events,monitors,jobs", "admin": "admin"}


def tokens_file(path: Path, names: tuple[str, ...], extra: str = "") -> Path:
    path.write_text("# credential scopes name\n" + "".join(
        f"{token_hash(TOKENS[name])} {SCOPES[name]} {name}\n" for name in names) + extra)
    return path


async def code_of(address: str, token: str, call: str, source: orchestrator_pb2.VideoSource,
                  tls: ClientTls | None = None) -> grpc.StatusCode:
    """The status one call of each kind ends with, sent with `token` ("" for none); a refusal for
    want of a scope comes back as PERMISSION_DENIED, any other as its own code (checked)."""
    code, details = await answer_of(address, token, call, source, tls)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        assert "needs the scope" in details, details  # not some other refusal with the same code
    return code


async def answer_of(address: str, token: str, call: str, source: orchestrator_pb2.VideoSource,
                    tls: ClientTls | None = None) -> tuple[grpc.StatusCode, str]:
    async with open_channel(address, token=token, tls=tls) as channel:
        calls: dict[str, Any] = {
            "detect": lambda: _drain(orchestrator_pb2_grpc.OrchestratorStub(channel).Detect(
                orchestrator_pb2.DetectRequest(source=source, texts=["bicycle"]))),
            "detect_stream": lambda: _drain(orchestrator_pb2_grpc.OrchestratorStub(channel).DetectStream(iter([
                orchestrator_pb2.DetectStreamRequest(config=orchestrator_pb2.DetectStreamConfig(texts=["bicycle"]))]))),
            "events": lambda: events_pb2_grpc.EventsStub(channel).ListEvents(events_pb2.ListEventsRequest()),
            "monitors": lambda: monitors_pb2_grpc.MonitorsStub(channel).DeleteMonitor(
                monitors_pb2.DeleteMonitorRequest(monitor_id="none")),
            "jobs": lambda: jobs_pb2_grpc.JobsStub(channel).CancelJob(jobs_pb2.CancelJobRequest(job_id="none")),
        }
        try:
            await calls[call]()
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


async def test_each_call_needs_a_known_token_with_its_scope(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 24)))
    path = tokens_file(tmp_path / "tokens", tuple(TOKENS))
    with caplog.at_level(logging.INFO):
        async with scripted_stack(data_dir=str(tmp_path / "data"), auth_tokens_file=str(path)) as stack:
            address = stack.address
            granted = {"reader": {"events"}, "detector": {"detect", "detect_stream"},
                       "operator": {"events", "monitors", "jobs"},
                       "admin": {"detect", "detect_stream", "events", "monitors", "jobs"}}
            for call in ("detect", "detect_stream", "events", "monitors", "jobs"):
                assert await code_of(address, "", call, source) == grpc.StatusCode.UNAUTHENTICATED
                assert await code_of(address, new_token(), call, source) == grpc.StatusCode.UNAUTHENTICATED
                for name, scopes in granted.items():
                    code = await code_of(address, TOKENS[name], call, source)
                    # Past the check, the missing monitor or job is NOT_FOUND: the call was let in.
                    assert (code != grpc.StatusCode.PERMISSION_DENIED) == (call in scopes), (name, call, code)
                    assert code != grpc.StatusCode.UNAUTHENTICATED

            async with open_channel(address) as channel:  # no token needed for probes and reflection
                health: Any = health_pb2_grpc.HealthStub(channel)
                answer = await health.Check(health_pb2.HealthCheckRequest())
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
                reflect: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
                replies = [r async for r in reflect.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]))]
                assert "anyanomaly.v1.Orchestrator" in {s.name for s in replies[0].list_services_response.service}

            async with open_channel(address, token=TOKENS["reader"]) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await monitors_pb2_grpc.MonitorsStub(channel).DeleteMonitor(
                        monitors_pb2.DeleteMonitorRequest(monitor_id="none"))
                assert refused.value.details() == ("'reader' may not call Monitors.DeleteMonitor: that needs the "
                                                   "scope 'monitors' (it has events)")
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "caller" in logged  # the access log names the token's holder ...
    for token in TOKENS.values():  # ... and never shows a token or its hash
        assert token not in logged and token_hash(token).split(":")[1] not in logged


async def test_tokens_rotate_by_editing_the_file(tmp_path: Path) -> None:
    source = orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 24)))
    path = tokens_file(tmp_path / "tokens", ("reader", "operator"))
    async with scripted_stack(data_dir=str(tmp_path / "data"), auth_tokens_file=str(path)) as stack:
        assert await code_of(stack.address, TOKENS["reader"], "events", source) == grpc.StatusCode.OK
        tokens_file(path, ("operator",))  # the old token is revoked, the new one stays
        assert await code_of(stack.address, TOKENS["reader"], "events", source) == grpc.StatusCode.UNAUTHENTICATED
        assert await code_of(stack.address, TOKENS["operator"], "events", source) == grpc.StatusCode.OK
        path.write_text("operator events,monitors\n")  # a broken edit: the tokens in force stay
        assert await code_of(stack.address, TOKENS["operator"], "events", source) == grpc.StatusCode.OK


async def test_the_command_line_sends_the_token(tmp_path: Path) -> None:
    made = await asyncio.to_thread(cli.run, "token", "new", "--name", "cli", "--scopes", "detect,jobs", "--json")
    assert made.returncode == 0, made.stderr
    new = json.loads(made.stdout)
    assert new["line"] == f"{token_hash(new['token'])} detect,jobs cli"
    (tmp_path / "tokens").write_text(new["line"] + "\n")
    (tmp_path / "token").write_text(new["token"] + "\n")
    folder = frame_folder(tmp_path, 24)
    async with scripted_stack(data_dir=str(tmp_path / "data"), auth_tokens_file=str(tmp_path / "tokens")) as stack:
        command = ["detect", str(folder), "-t", "bicycle", "--address", stack.address, "--output",
                   str(tmp_path / "out.json")]
        done = await asyncio.to_thread(cli.run, *command, "--token-file", str(tmp_path / "token"))
        assert done.returncode == 0, done.stderr
        done = await asyncio.to_thread(cli.run, *command)
        assert done.returncode == 2 and "needs a token" in done.stderr
        done = await asyncio.to_thread(cli.run, "jobs", "list", "--address", stack.address, "--token-file",
                                       str(tmp_path / "token"))
        assert done.returncode == 0, done.stderr
        done = await asyncio.to_thread(cli.run, "monitors", "delete", "none", "--address", stack.address,
                                       "--token-file", str(tmp_path / "token"))
        assert done.returncode == 2 and "needs the scope 'monitors'" in done.stderr


async def test_client_certificates_are_identities_under_mutual_tls(tmp_path: Path) -> None:
    """cert:IDENTITY lines let in a caller by its verified certificate, with that line's scopes; a
    certificate not listed is UNAUTHENTICATED, and a token, when sent, is what counts."""
    pki = Pki(tmp_path / "pki")
    path = tokens_file(tmp_path / "tokens", ("detector",), extra="cert:vms-7 events vms\n")
    listed, unlisted = (ClientTls(*(str(f) for f in pki.caller(name).values())) for name in ("vms-7", "other"))
    source = orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 24)))
    async with scripted_stack(data_dir=str(tmp_path / "data"), auth_tokens_file=str(path),
                              **pki.server("orchestrator")) as stack:
        async def code(tls: ClientTls, token: str, call: str) -> grpc.StatusCode:
            return await code_of(stack.address, token, call, source, tls)

        assert await code(listed, "", "events") == grpc.StatusCode.OK
        assert await code(listed, "", "detect") == grpc.StatusCode.PERMISSION_DENIED
        assert await code(unlisted, "", "events") == grpc.StatusCode.UNAUTHENTICATED
        assert await code(unlisted, TOKENS["detector"], "detect") == grpc.StatusCode.OK
        assert await code(listed, TOKENS["detector"], "events") == grpc.StatusCode.PERMISSION_DENIED


async def test_each_caller_has_its_own_budget_of_monitors_and_jobs(tmp_path: Path) -> None:
    path = tokens_file(tmp_path / "tokens", ("operator", "admin"))
    folder = frame_folder(tmp_path, 24)
    source = orchestrator_pb2.VideoSource(frame_folder=str(folder))
    async with scripted_stack(data_dir=str(tmp_path / "data"), auth_tokens_file=str(path), max_monitors_per_token=1,
                              max_jobs_per_token=1) as stack:
        stack.lvlm.hold_after = 0  # jobs stay running until released
        try:
            for name in ("operator", "admin"):
                async with open_channel(stack.address, token=TOKENS[name]) as channel:
                    monitors: Any = monitors_pb2_grpc.MonitorsStub(channel)
                    jobs: Any = jobs_pb2_grpc.JobsStub(channel)
                    spec = monitors_pb2.MonitorSpec(source=source, texts=["bicycle"])
                    first = await monitors.CreateMonitor(monitors_pb2.CreateMonitorRequest(spec=spec))
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await monitors.CreateMonitor(monitors_pb2.CreateMonitorRequest(spec=spec))
                    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert refused.value.details() == (f"{name!r} has 1 monitors, the most --max-monitors-per-token "
                                                       "allows; delete one first")
                    job = await jobs.SubmitJob(jobs_pb2.SubmitJobRequest(source=source, texts=["bicycle"]))
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await jobs.SubmitJob(jobs_pb2.SubmitJobRequest(source=source, texts=["bicycle"]))
                    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "1 queued or running jobs, the most --max-jobs-per-token allows" in (
                        refused.value.details() or "")
                    # Freed places are given again.
                    await monitors.DeleteMonitor(monitors_pb2.DeleteMonitorRequest(monitor_id=first.monitor_id))
                    await monitors.CreateMonitor(monitors_pb2.CreateMonitorRequest(spec=spec))
                    await jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.job_id))
                    await jobs.SubmitJob(jobs_pb2.SubmitJobRequest(source=source, texts=["bicycle"]))
        finally:
            stack.lvlm.release()


async def test_a_token_revoked_mid_stream_ends_its_stream_at_the_next_message(tmp_path: Path) -> None:
    path = tokens_file(tmp_path / "tokens", ("detector", "admin"))
    source = orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 24 * 3)))
    async with scripted_stack(auth_tokens_file=str(path), max_segments_in_flight=1) as stack:
        stack.lvlm.hold_after = 3  # one text: the first segment is scored, then the engine waits
        try:
            async with open_channel(stack.address, token=TOKENS["detector"]) as channel:
                updates = orchestrator_pb2_grpc.OrchestratorStub(channel).Detect(
                    orchestrator_pb2.DetectRequest(source=source, texts=["bicycle"]))
                received = []
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    async for update in updates:
                        received.append(update.WhichOneof("update"))
                        if received.count("segment") == 1:
                            tokens_file(path, ("admin",))  # the detector's token is revoked
                            stack.lvlm.release()
            assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert received == ["started", "segment"]
        finally:
            stack.lvlm.release()
