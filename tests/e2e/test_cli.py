"""The `anyanomaly` command as a user runs it: subprocesses, tiny models, real clips."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from anyanomaly.pictures import spans_above
from tests.helpers import expected
from tests.helpers.cli import run, serving
from tests.helpers.fake_openai_server import FakeOpenAIServer
from tests.helpers.fixtures import REPO_ROOT, avenue_clip
from tests.helpers.scripted_lvlm import ScriptedLVLM

ARTIFACTS = REPO_ROOT / "out" / "test-artifacts"
SEGMENT_KEYS = {"index", "start_frame", "end_frame", "key_frames", "scores", "max_fused"}
pytestmark = pytest.mark.slow
SCORE_KEYS = {"frame", "position", "temporal", "fused", "reason"}
TOP_KEYS = {"source", "texts", "models", "fps", "num_frames", "segment_length", "tail_policy", "fusion_weights",
            "sigma", "segments", "frame_scores"}


def check_schema(result: dict[str, object], frames: int, texts: list[str]) -> None:
    assert set(result) >= TOP_KEYS
    assert result["texts"] == texts and result["num_frames"] == frames
    assert result["segment_length"] == 24 and result["tail_policy"] == "score"
    assert result["fusion_weights"] == [0.6, 0.3, 0.1] and result["sigma"] == 15.0
    frame_scores = result["frame_scores"]
    assert isinstance(frame_scores, list) and len(frame_scores) == frames
    assert all(isinstance(v, float) for v in frame_scores)
    segments = result["segments"]
    assert isinstance(segments, list) and segments
    for segment in segments:
        assert set(segment) >= SEGMENT_KEYS
        assert set(segment["key_frames"]) == set(texts) and all(len(k) == 4 for k in segment["key_frames"].values())
        for scores in segment["scores"].values():
            assert set(scores) >= SCORE_KEYS and isinstance(scores["reason"], str)
    assert "meaningless" in result["models"]["warning"]  # type: ignore[index]


def test_detect_with_the_embedded_stack_writes_the_result_json(tmp_path: Path) -> None:
    """`make detect ... MODELS=tiny`: the real transformers path, the flow and the schema."""
    output = tmp_path / "out" / "result.json"
    done = run("detect", str(avenue_clip("21")), "-t", "running", "-t", "bicycle", "--models", "tiny",
               "--output", str(output))
    assert done.returncode == 0, done.stderr
    result = json.loads(output.read_text())
    check_schema(result, 76, ["running", "bicycle"])
    assert result["complete"] is True
    assert (result["models"]["lvlm"]["max_image_pixels"], result["models"]["lvlm"]["max_tokens"]) == (224 * 224, 8)
    assert [(s["start_frame"], s["end_frame"]) for s in result["segments"]] == [(0, 24), (24, 48), (48, 72),
                                                                                (72, 76)]
    assert "result written to" in done.stdout and "meaningless" in done.stdout


def test_detect_writes_evidence_pictures_and_a_self_contained_report(tmp_path: Path) -> None:
    """--evidence and --report with a ScriptedLVLM: a picture for each of the 3 best segments and
    each span's peak (the images the LVLM judged, with text, score and reason), and one HTML page
    that holds the plot and the pictures inline."""
    evidence, report = tmp_path / "evidence", tmp_path / "report.html"
    with FakeOpenAIServer(answer=ScriptedLVLM()) as server:
        done = run("detect", str(avenue_clip("21")), "-t", "running", "-t", "bicycle", "--models", "tiny",
                   "--lvlm-url", server.url, "--lvlm-model", server.model, "--quiet", "--output",
                   str(tmp_path / "r.json"), "--evidence", str(evidence), "--report", str(report),
                   "--threshold", "0.7")
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    segments = result["segments"]
    chosen = {s["index"] for s in sorted(segments, key=lambda s: s["score"], reverse=True)[:3]}
    for span in spans_above(result["frame_scores"], 0.7):  # each span's best segment (kept: >= 0.7 or top 5)
        inside = [s for s in segments if s["start_frame"] < span.end and s["end_frame"] > span.start]
        chosen.add(max(inside, key=lambda s: s["score"])["index"])
    pictures = sorted(evidence.glob("*.jpg"))
    assert [int(p.name.split("-")[1]) for p in pictures] == sorted(chosen)
    assert f"{len(chosen)} evidence pictures written to {evidence}" in done.stdout
    for picture in pictures:
        image = cv2.imread(str(picture))
        assert image is not None and image.shape[0] > 224 and image.shape[1] > 3 * 224  # 3 panels, a caption
    page = report.read_text()
    assert page.count("data:image/png;base64,") == 1 and page.count("data:image/jpeg;base64,") == len(chosen)
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained
    best = max(segments, key=lambda s: s["score"])
    assert f"<td>{best['start_frame']}-{best['end_frame'] - 1}</td><td>{best['score']:.3f}</td>" in page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(pictures[0], ARTIFACTS / "evidence.jpg")
    shutil.copy(report, ARTIFACTS / "report.html")


def test_detect_flags_reach_the_pipeline_and_the_numbers_hold(tmp_path: Path) -> None:
    """Weights, sigma and the multi-text rule given on the command line, on scores that vary
    (a ScriptedLVLM behind lvlm_service), recomputed here with numpy/scipy."""
    output = tmp_path / "result.json"
    answers = ScriptedLVLM()
    with FakeOpenAIServer(answer=answers) as server:
        done = run("detect", str(avenue_clip("21")), "-t", "running-bicycle", "--models", "tiny",
                   "--lvlm-url", server.url, "--lvlm-model", server.model, "--weights", "0.5", "0.2", "0.3",
                   "--sigma", "5", "--fusion-rule", "max_then_fuse", "--output", str(output), "--quiet",
                   "--plot", str(tmp_path / "plot.png"), "--threshold", "0.7")
    assert done.returncode == 0, done.stderr
    result = json.loads(output.read_text())
    assert (result["fusion_weights"], result["sigma"], result["multi_text_fusion"]) == (
        [0.5, 0.2, 0.3], 5.0, "max_then_fuse")
    segments = result["segments"]
    assert expected.answered(segments) == answers.counts()
    scores = expected.check_segments(segments, (0.5, 0.2, 0.3), "max_then_fuse")
    assert expected.distinct(scores) >= 3
    np.testing.assert_allclose(result["frame_scores"], expected.frame_scores(segments, scores, 76, 5.0), atol=1e-5)
    usage = result["lvlm_usage"]
    assert usage["calls"] == len(answers.answers) == 4 * 6 and usage["retries"] == usage["failures"] == 0
    # The plot: drawn from these scores, its spans those of the smoothed frame score at 0.7.
    spans = spans_above(result["frame_scores"], 0.7)
    assert f"plot written to {tmp_path / 'plot.png'} ({len(spans)} spans at or above 0.7)" in done.stdout
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # kept for a look (README's picture comes from here)
    shutil.copy(tmp_path / "plot.png", ARTIFACTS / "detect-plot.png")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["detect", "/no/such/video.mp4", "-t", "car", "--models", "tiny"], "no such file or folder"),
        (["detect", str(REPO_ROOT / "README.md"), "-t", "car", "--address", "127.0.0.1:9"],
         "cannot reach the orchestrator at 127.0.0.1:9"),
        (["detect", "x.mp4", "-t", "car", "--lvlm-url", "http://gpu:8000/v1"], "--lvlm-url and --lvlm-model"),
        (["detect", str(avenue_clip("21")), "-t", "car", "--plot", "p.png", "--threshold", "2"],
         "--threshold is a score, 0..1"),
        (["detect", str(avenue_clip("21")), "-t", "car", "--models", "tiny", "--evidence", "/proc/no/evidence"],
         "cannot write pictures to /proc/no/evidence"),
    ],
)
def test_bad_command_lines_fail_with_one_clear_line(args: list[str], message: str) -> None:
    done = run(*args, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anyanomaly: error:") and message in lines[0], done.stderr


def test_detect_without_texts_is_a_usage_error() -> None:
    done = run("detect", str(avenue_clip("21")))
    assert done.returncode == 2 and "-t/--text" in done.stderr


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """`anyanomaly serve --models tiny` in the background; yields the orchestrator address."""
    with serving("--models", "tiny", "--port", "0") as addresses:
        yield addresses["orchestrator"]


def test_detect_against_a_served_stack(served: str, tmp_path: Path) -> None:
    output = tmp_path / "r.json"
    folder = REPO_ROOT.parent / "shared" / "fixtures" / "real" / "ucsd_ped2" / "testing" / "frames" / "01"
    done = run("detect", str(folder), "-t", "cyclist", "--address", served, "--output", str(output), "--quiet")
    assert done.returncode == 0, done.stderr
    check_schema(json.loads(output.read_text()), 180, ["cyclist"])


def test_served_stack_rejects_bad_sources_and_keeps_serving(served: str, tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(1000))
    empty = tmp_path / "empty"
    empty.mkdir()
    for source, message in ((corrupt, "broken.mp4"), (empty, "no frames in this folder")):
        done = run("detect", str(source), "-t", "car", "--address", served)
        assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    done = run("detect", str(avenue_clip("08")), "-t", "running", "--address", served, "--quiet")
    assert done.returncode == 0 and "36 frames" in done.stdout
