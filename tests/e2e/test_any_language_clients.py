"""The contract from other languages, against a served stack (`anyanomaly serve`, tiny CLIP, a
ScriptedLVLM behind lvlm_service): the README's grpcurl and Node.js examples run exactly as they
are written there."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import serving
from tests.helpers.fake_openai_server import FakeOpenAIServer
from tests.helpers.fixtures import REPO_ROOT, avenue_clip
from tests.helpers.processes import die_with_this_process
from tests.helpers.scripted_lvlm import ScriptedLVLM

pytestmark = pytest.mark.slow
VIDEO = avenue_clip("21")  # 76 frames: 3 segments and a tail
NODE = REPO_ROOT / "clients" / "node"


def readme_example(name: str) -> str:
    """The bash block that follows `<!-- example: NAME ...-->` in the README."""
    found = re.search(rf"<!-- example: {name} .*?-->\n```bash\n(.*?)```", (REPO_ROOT / "README.md").read_text(),
                      re.S)
    assert found, f"the README has no '{name}' example"
    return found.group(1)


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    with FakeOpenAIServer(answer=ScriptedLVLM()) as lvlm, \
            serving("--models", "tiny", "--port", "0", "--lvlm-url", lvlm.url, "--lvlm-model", lvlm.model) as addresses:
        yield addresses["orchestrator"]


def run_block(block: str, address: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANYANOMALY_ADDRESS": address, "VIDEO": str(VIDEO),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # grpcurl is in the venv
    return subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=die_with_this_process)


def json_messages(text: str) -> list[dict[str, object]]:
    """grpcurl prints one pretty-printed JSON object per message."""
    decoder, position, messages = json.JSONDecoder(), 0, []
    text = text.strip()
    while position < len(text):
        message, position = decoder.raw_decode(text, position)
        messages.append(message)
        while position < len(text) and text[position].isspace():
            position += 1
    return messages


def test_the_readme_grpcurl_example(address: str) -> None:
    done = run_block(readme_example("grpcurl"), address)
    assert done.returncode == 0, done.stderr
    listing, rest = done.stdout.split("anyanomaly.v1.Orchestrator is a service:", 1)
    services = set(listing.split())
    assert {"anyanomaly.v1.Orchestrator", "anyanomaly.v1.Monitors", "anyanomaly.v1.Events", "anyanomaly.v1.Jobs",
            "grpc.health.v1.Health"} <= services
    description, _, updates = rest.partition("\n}\n")  # describe's service block, then the stream
    assert "rpc Detect ( .anyanomaly.v1.DetectRequest ) returns ( stream .anyanomaly.v1.DetectUpdate );" in description
    messages = json_messages(updates)
    kinds = [next(iter(m)) for m in messages]
    assert kinds[0] == "started" and kinds[-1] == "summary" and kinds.count("segment") == 4
    summary = messages[-1]["summary"]
    assert isinstance(summary, dict), summary
    assert summary["num_frames"] == 76 and len(summary["frame_scores"]) == 76  # grpcurl keeps the proto names


def test_the_readme_node_example(address: str) -> None:
    assert (NODE / "node_modules" / "@grpc" / "grpc-js").exists(), "run `make node-clients`"
    done = run_block(readme_example("node"), address)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    segments, summary = lines[:-1], lines[-1]["summary"]
    assert [s["segment"] for s in segments] == [0, 1, 2, 3]
    assert [(s["start_frame"], s["end_frame"]) for s in segments] == [(0, 24), (24, 48), (48, 72), (72, 76)]
    assert all(s["text"] in ("bicycle", "person running") for s in segments)
    assert summary["num_frames"] == 76 and 0 <= summary["max"] <= 1


def test_the_node_example_says_why_a_request_is_refused(address: str) -> None:
    done = subprocess.run(["node", str(NODE / "detect.js"), address, str(VIDEO), " "], capture_output=True,
                          text=True, timeout=120, preexec_fn=die_with_this_process)
    assert done.returncode == 2 and done.stderr.startswith("INVALID_ARGUMENT: "), done.stderr
