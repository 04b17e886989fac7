"""The committed generated code must be what scripts/gen_protos.py produces now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.fixtures import REPO_ROOT

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def test_committed_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "scripts/gen_protos.py", "--out", str(tmp_path)], cwd=REPO_ROOT, check=True)
    committed_dir = REPO_ROOT / "anyanomaly" / "v1"
    protos = sorted(p.stem for p in committed_dir.glob("*.proto"))
    assert protos == ["clip", "common", "context", "events", "jobs", "lvlm", "monitors", "orchestrator"]
    for stem in protos:
        for suffix in GENERATED_SUFFIXES:
            fresh = (tmp_path / "anyanomaly" / "v1" / f"{stem}{suffix}").read_text()
            committed = committed_dir / f"{stem}{suffix}"
            assert committed.exists(), f"{committed} is missing: run `make protos`"
            assert committed.read_text() == fresh, f"{committed.name} is stale: run `make protos` and commit"


def test_the_contract_declares_every_service() -> None:
    from anyanomaly.v1 import clip_pb2, context_pb2, lvlm_pb2, orchestrator_pb2

    assert set(clip_pb2.DESCRIPTOR.services_by_name["ClipService"].methods_by_name) == {
        "EmbedTexts", "EmbedImages", "SelectKeyFrames", "GetModelInfo"}
    assert set(context_pb2.DESCRIPTOR.services_by_name["ContextService"].methods_by_name) == {"BuildContexts"}
    assert "Score" in lvlm_pb2.DESCRIPTOR.services_by_name["LvlmService"].methods_by_name
    detect = orchestrator_pb2.DESCRIPTOR.services_by_name["Orchestrator"].methods_by_name["Detect"]
    assert detect.server_streaming and not detect.client_streaming
