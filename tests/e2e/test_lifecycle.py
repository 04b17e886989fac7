"""The `anyanomaly` command under failure and interruption, as a user meets them: a service
killed mid-run, the command itself stopped with SIGTERM or killed with SIGKILL, the stack
bound to an address other than 127.0.0.1. Nothing may be left running afterwards, and what
was computed before a failure is kept."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import expected
from tests.helpers.cli import run, start
from tests.helpers.fake_openai_server import FakeOpenAIServer
from tests.helpers.fixtures import avenue_clip
from tests.helpers.processes import children, service_pid, wait_until_gone
from tests.helpers.scripted_lvlm import ScriptedLVLM
from tests.helpers.stack import start_stack

pytestmark = pytest.mark.slow
SERVICES = ("clip_service", "context_service", "lvlm_service", "orchestrator")
GONE_WITHIN_SECONDS = 15.0


@pytest.fixture
def held() -> Iterator[tuple[ScriptedLVLM, FakeOpenAIServer]]:
    """A ScriptedLVLM that answers the first 6 calls and then holds every call until released:
    the detection is reliably mid-run while it holds, with the first segment scored. (With one
    text a segment makes 3 calls, and with the orchestrator's default of 2 segments in flight
    the third segment starts only once the first is done, so the first 6 calls include all of
    the first segment's.)"""
    answers = ScriptedLVLM(hold_after=6)
    with FakeOpenAIServer(answer=answers) as server:
        try:
            yield answers, server
        finally:
            answers.release()


def detect_args(server: FakeOpenAIServer, output: Path) -> list[str]:
    return ["detect", str(avenue_clip("20")), "-t", "running", "--models", "tiny", "--lvlm-url", server.url,
            "--lvlm-model", server.model, "--output", str(output), "--quiet"]


def stack_of(process: subprocess.Popen[str]) -> dict[str, int]:
    return {name: service_pid(process.pid, name) for name in SERVICES}


def mid_run(process: subprocess.Popen[str], answers: ScriptedLVLM, log: Path) -> dict[str, int]:
    pids = stack_of(process)
    assert answers.holding.wait(timeout=240), log.read_text()
    return pids


@pytest.mark.parametrize("victim", ["lvlm_service", "clip_service"])
def test_a_service_killed_mid_run_is_named_and_the_segments_so_far_are_kept(
    held: tuple[ScriptedLVLM, FakeOpenAIServer], tmp_path: Path, victim: str
) -> None:
    answers, server = held
    output, log = tmp_path / "result.json", tmp_path / "log"
    process = start(*detect_args(server, output), log=log)
    try:
        pids = mid_run(process, answers, log)
        os.kill(pids[victim], signal.SIGKILL)
        answers.release()
        assert process.wait(timeout=120) == 1, log.read_text()
    finally:
        process.kill()
    message = log.read_text().strip().splitlines()[-1]
    assert message.startswith(f"anyanomaly: error: {victim} (killed by SIGKILL) failed:"), message
    assert "cannot reach the orchestrator" not in message and str(output) in message
    partial = json.loads(output.read_text())
    assert partial["complete"] is False
    assert (partial["error"]["service"], partial["error"]["exit"]) == (victim, "killed by SIGKILL")
    assert partial["error"]["code"] == "UNAVAILABLE"
    assert 1 <= len(partial["segments"]) < 12
    assert [s["index"] for s in partial["segments"]] == list(range(len(partial["segments"])))
    expected.check_segments(partial["segments"], (0.6, 0.3, 0.1), "fuse_then_max")
    assert wait_until_gone(list(pids.values()), GONE_WITHIN_SECONDS) == []


def test_sigterm_stops_the_command_like_ctrl_c_and_every_service_with_it(
    held: tuple[ScriptedLVLM, FakeOpenAIServer], tmp_path: Path
) -> None:
    answers, server = held
    output, log = tmp_path / "result.json", tmp_path / "log"
    process = start(*detect_args(server, output), log=log)
    try:
        pids = mid_run(process, answers, log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM, log.read_text()
    finally:
        process.kill()
    assert wait_until_gone(list(pids.values()), GONE_WITHIN_SECONDS) == []
    assert "interrupted (SIGTERM)" in log.read_text()
    partial = json.loads(output.read_text())
    assert partial["complete"] is False and partial["error"]["code"] == "CANCELLED" and partial["segments"]


def test_sigkill_of_the_command_takes_every_service_with_it(
    held: tuple[ScriptedLVLM, FakeOpenAIServer], tmp_path: Path
) -> None:
    answers, server = held
    log = tmp_path / "log"
    process = start(*detect_args(server, tmp_path / "result.json"), log=log)
    try:
        pids = mid_run(process, answers, log)
    finally:
        process.kill()  # SIGKILL: the command gets no chance to stop anything
    process.wait(timeout=30)
    assert wait_until_gone(list(pids.values()), GONE_WITHIN_SECONDS) == []


def wait_for_line(process: subprocess.Popen[str], log: Path, start: str) -> list[str]:
    """The command's output once a line starting with `start` appears (the stack loads its models)."""
    for _ in range(2400):
        lines = log.read_text().splitlines()
        if any(line.startswith(start) for line in lines) or process.poll() is not None:
            break
        wait_until_gone([process.pid], 0.1)
    assert any(line.startswith(start) for line in lines), log.read_text()
    return lines


def test_serve_on_another_address_becomes_ready_and_dies_with_its_command(tmp_path: Path) -> None:
    log = tmp_path / "log"
    process = start("serve", "--models", "tiny", "--host", "127.0.0.2", "--port", "0", log=log)
    try:
        pids = stack_of(process)
        lines = wait_for_line(process, log, "ready")
        addresses = dict(line.split() for line in lines if line.split()[0] in SERVICES)
        # The orchestrator on the address asked for; the services only it calls stay on loopback.
        assert {name: address.rsplit(":", 1)[0] for name, address in addresses.items()} == {
            "orchestrator": "127.0.0.2", "clip_service": "127.0.0.1", "context_service": "127.0.0.1",
            "lvlm_service": "127.0.0.1"}, addresses
        done = run("detect", str(avenue_clip("08")), "-t", "running", "--address", addresses["orchestrator"],
                   "--quiet")
        assert done.returncode == 0 and "36 frames" in done.stdout, done.stderr
        assert set(children(process.pid)) == set(pids.values())
    finally:
        process.kill()
    process.wait(timeout=30)
    assert wait_until_gone(list(pids.values()), GONE_WITHIN_SECONDS) == []


def test_eval_stops_on_sigterm_with_every_service(held: tuple[ScriptedLVLM, FakeOpenAIServer], tmp_path: Path) -> None:
    answers, server = held
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(avenue_clip("20"), videos / "20.avi")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"20": [0] * 100 + [1] * 173}))
    log = tmp_path / "log"
    process = start("eval", "--dataset", "custom", "--data-root", str(videos), "--labels", str(labels), "--texts",
                    "running", "--models", "tiny", "--lvlm-url", server.url, "--lvlm-model", server.model,
                    "--output-dir", str(tmp_path / "eval"), "--quiet", log=log)
    try:
        pids = mid_run(process, answers, log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM, log.read_text()
    finally:
        process.kill()
    assert wait_until_gone(list(pids.values()), GONE_WITHIN_SECONDS) == []
    assert not list((tmp_path / "eval").rglob("*.json"))  # no half-finished result is cached


def test_serve_stops_its_services_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "log"
    process = start("serve", "--models", "tiny", "--port", "0", log=log)
    try:
        pids = stack_of(process)
        wait_for_line(process, log, "ready")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        process.kill()
    assert log.read_text().splitlines()[-1] == "stopped"
    assert wait_until_gone(list(pids.values()), GONE_WITHIN_SECONDS) == []


async def test_a_service_down_behind_a_remote_orchestrator_is_named(tmp_path: Path) -> None:
    """With --address the command talks to a remote orchestrator; when a service behind it is down
    the message names that service, not "cannot reach the orchestrator"."""
    stack = await start_stack()
    try:
        await stack.lvlm.shutdown(0)
        done = await asyncio.to_thread(run, "detect", str(avenue_clip("08")), "-t", "running", "--address",
                                       stack.orchestrator.address, "--output", str(tmp_path / "r.json"))
    finally:
        await stack.shutdown()
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("anyanomaly: error: lvlm_service failed: lvlm_service:"), done.stderr
    assert "cannot reach the orchestrator" not in done.stderr
    partial = json.loads((tmp_path / "r.json").read_text())
    assert (partial["complete"], partial["error"]["service"], partial["segments"]) == (False, "lvlm_service", [])
