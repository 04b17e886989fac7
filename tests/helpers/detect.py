"""Calling Orchestrator.Detect from tests, and fixture frame folders."""

from __future__ import annotations

import shutil
from pathlib import Path

from anyanomaly.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from services.common.clients import open_channel
from tests.helpers.fixtures import fixtures_root


def ped2_frames(name: str = "04") -> Path:
    return fixtures_root() / "ucsd_ped2" / "testing" / "frames" / name


def frame_folder(tmp_path: Path, count: int, name: str = "frames", start: int = 0) -> Path:
    """`count` Ped2 test-04 frames from the `start`-th in a folder of their own (same file names)."""
    folder = tmp_path / name
    folder.mkdir()
    for source in sorted(ped2_frames().glob("*.jpg"))[start:start + count]:
        shutil.copy(source, folder / source.name)
    return folder


async def detect(
    address: str, source: orchestrator_pb2.VideoSource, texts: list[str], **options: object
) -> list[orchestrator_pb2.DetectUpdate]:
    request = orchestrator_pb2.DetectRequest(
        source=source, texts=texts, options=orchestrator_pb2.DetectOptions(**options)  # type: ignore[arg-type]
    )
    async with open_channel(address) as channel:
        return [u async for u in orchestrator_pb2_grpc.OrchestratorStub(channel).Detect(request)]


def split(updates: list[orchestrator_pb2.DetectUpdate]) -> tuple[
    orchestrator_pb2.DetectStarted, list[orchestrator_pb2.SegmentResult], orchestrator_pb2.Summary
]:
    kinds = [u.WhichOneof("update") for u in updates]
    assert kinds[0] == "started" and kinds[-1] == "summary" and set(kinds[1:-1]) <= {"segment"}
    return updates[0].started, [u.segment for u in updates[1:-1]], updates[-1].summary
