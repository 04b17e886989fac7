"""`anyanomaly serve --data-dir` with `jobs`, `events` and `monitors` driven from the command
line as a script would (`--json`: one object per line). The LVLM is the scripted test server
behind the real lvlm_service, so scores vary and events open."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.certificates import Pki
from tests.helpers.cli import ANYANOMALY, run, serving
from tests.helpers.detect import frame_folder
from tests.helpers.fake_openai_server import FakeOpenAIServer
from tests.helpers.processes import die_with_this_process
from tests.helpers.scripted_lvlm import ScriptedLVLM

pytestmark = pytest.mark.slow


def listening_host(port: int) -> str:
    """The IPv4 address a TCP socket listens on at `port` ("0.0.0.0": any), from /proc/net/tcp
    and tcp6 (gRPC listens on IPv6 sockets, IPv4 addresses mapped)."""
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # LISTEN
                if len(address) == 32 and not address.startswith("0000000000000000FFFF0000"):
                    return "0.0.0.0" if set(address) == {"0"} else "an IPv6 address"
                return ".".join(str(int(address[-8:][i:i + 2], 16)) for i in (6, 4, 2, 0))
    return ""


def lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path_factory.mktemp("data")
    with FakeOpenAIServer(answer=ScriptedLVLM()) as lvlm, serving(
            "--models", "tiny", "--port", "0", "--data-dir", str(data_dir), "--lvlm-url", lvlm.url, "--lvlm-model",
            lvlm.model) as addresses:
        yield addresses["orchestrator"], data_dir


def test_jobs_and_their_events_from_the_command_line(served: tuple[str, Path], tmp_path: Path) -> None:
    address, _ = served
    folder = frame_folder(tmp_path, 72)
    submitted = run("jobs", "submit", str(folder), "-t", "person running", "--threshold", "0.05", "--name", "cli",
                    "--address", address, "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = lines(submitted.stdout)[0]["job_id"]
    watched = lines(run("jobs", "watch", job_id, "--address", address, "--json").stdout)
    assert "started" in watched[0] and "summary" in watched[-1]
    assert [u["segment"]["index"] for u in watched if "segment" in u] == [0, 1, 2]
    streamed = [u["event"] for u in watched if "event" in u]
    job = lines(run("jobs", "get", job_id, "--address", address, "--json").stdout)[0]
    assert job["state"] == "JOB_STATE_SUCCEEDED" and job["segments_done"] == 3
    listed = lines(run("events", "list", "--job", job_id, "--address", address, "--json").stdout)
    assert listed == streamed and listed[0]["phase"] == "OPEN" and listed[-1]["phase"] == "CLOSE"
    assert listed[0]["text"] == "person running" and set(listed[0]) >= {"event_id", "cursor", "peak_score", "reason"}
    human = run("jobs", "list", "--state", "succeeded", "--address", address)
    assert job_id in human.stdout and "SUCCEEDED" in human.stdout
    evidence = run("events", "evidence", listed[0]["event_id"], "--output-dir", str(tmp_path / "evidence"),
                   "--address", address, "--json")
    written = lines(evidence.stdout)[0]
    assert all(Path(written[name]).stat().st_size > 0
               for name in ("key_frame", "position_context", "temporal_context"))


def test_a_monitor_from_the_command_line(served: tuple[str, Path], tmp_path: Path) -> None:
    address, data_dir = served
    folder = frame_folder(tmp_path, 24)
    created = run("monitors", "create", "--source", str(folder), "-t", "bicycle", "--threshold", "0.05", "--name",
                  "door", "--json-lines", "events/door.jsonl", "--address", address, "--json")
    assert created.returncode == 0, created.stderr
    monitor_id = lines(created.stdout)[0]["monitor_id"]
    watcher = subprocess.Popen([ANYANOMALY, "events", "watch", "--monitor", monitor_id, "--since", "0", "--address",
                                address, "--json"], text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               preexec_fn=die_with_this_process)
    assert watcher.stdout is not None
    try:
        first = json.loads(watcher.stdout.readline())
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(30)
    assert first["phase"] == "OPEN" and first["monitor_id"] == monitor_id and first["monitor_name"] == ""
    listed = lines(run("monitors", "list", "--address", address, "--json").stdout)
    assert [m["monitor_id"] for m in listed] == [monitor_id] and listed[0]["state"] == "MONITOR_STATE_LIVE"
    paused = lines(run("monitors", "pause", monitor_id, "--address", address, "--json").stdout)[0]
    assert paused["state"] == "MONITOR_STATE_PAUSED"
    assert run("monitors", "delete", monitor_id, "--address", address).returncode == 0
    gone = run("monitors", "get", monitor_id, "--address", address)
    assert gone.returncode == 2 and "no monitor" in gone.stderr
    delivered = lines((data_dir / "exports" / "events" / "door.jsonl").read_text())
    assert delivered[0]["event_id"] == first["event_id"] and delivered[0]["monitor_name"] == "door"
    assert delivered[-1]["phase"] == "CLOSE"  # paused: the open event closed, and was delivered


def test_live_commands_say_when_the_orchestrator_is_unreachable() -> None:
    done = run("events", "list", "--address", "127.0.0.1:1")
    assert done.returncode == 1 and "cannot reach the orchestrator at 127.0.0.1:1" in done.stderr


def test_serve_passes_tls_tokens_and_media_roots_to_the_orchestrator(tmp_path: Path) -> None:
    """`anyanomaly serve --host 0.0.0.0` with TLS and tokens: the orchestrator listens on every
    address behind both, the other services only on 127.0.0.1."""
    pki = Pki(tmp_path / "pki")
    tls = pki.server("orchestrator", mutual=False)
    made = json.loads(run("token", "new", "--name", "me", "--scopes", "admin", "--json").stdout)
    (tmp_path / "tokens").write_text(made["line"] + "\n")
    (tmp_path / "token").write_text(made["token"] + "\n")
    media = tmp_path / "media"
    media.mkdir()
    frames = frame_folder(media, 24)
    outside = frame_folder(tmp_path, 24, name="outside")
    with FakeOpenAIServer(answer=ScriptedLVLM()) as lvlm, serving(
            "--models", "tiny", "--port", "0", "--lvlm-url", lvlm.url, "--lvlm-model", lvlm.model,
            "--auth-tokens-file", str(tmp_path / "tokens"), "--media-roots", str(media), "--host", "0.0.0.0",
            "--tls-cert", str(tls["tls_cert"]), "--tls-key", str(tls["tls_key"])) as addresses:
        address = addresses["orchestrator"]
        services = {name: addresses[name] for name in ("orchestrator", "clip_service", "context_service",
                                                       "lvlm_service")}
        assert all(a.startswith("127.0.0.1:") for a in services.values())
        assert {name: listening_host(int(a.rsplit(":", 1)[1])) for name, a in services.items()} == {
            "orchestrator": "0.0.0.0", "clip_service": "127.0.0.1", "context_service": "127.0.0.1",
            "lvlm_service": "127.0.0.1"}
        with_token = ["--address", address, "--token-file", str(tmp_path / "token"), "--tls-ca", str(pki.ca_file)]
        plaintext = run("detect", str(frames), "-t", "bicycle", "--address", address, "--token-file",
                        str(tmp_path / "token"))
        assert plaintext.returncode == 2 and "cannot reach the orchestrator" in plaintext.stderr
        assert run("detect", str(frames), "-t", "bicycle", *with_token).returncode == 0
        refused = run("detect", str(frames), "-t", "bicycle", "--address", address, "--tls-ca", str(pki.ca_file))
        assert refused.returncode == 2 and "needs a token" in refused.stderr
        outside_roots = run("detect", str(outside), "-t", "bicycle", *with_token)
        assert outside_roots.returncode == 2 and "outside the media folders" in outside_roots.stderr
