"""Orchestrator.Detect end to end over the four real services on real clips. The numbers are
checked on scores that vary (the LVLM behind lvlm_service is a ScriptedLVLM, whose answers
differ per text, stream and segment) and recomputed with numpy/scipy (tests/helpers/expected.py);
the tiny random LVLM runs the real transformers path where only the flow is checked."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import pytest

from anyanomaly.v1 import common_pb2, orchestrator_pb2
from tests.conftest import Scripted
from tests.helpers import expected
from tests.helpers.detect import detect, frame_folder, ped2_frames, split
from tests.helpers.fixtures import avenue_clip
from tests.helpers.stack import Stack, start_stack


@pytest.mark.parametrize(("options", "weights", "sigma", "rule"), [
    ({}, (0.6, 0.3, 0.1), 15.0, "fuse_then_max"),
    ({"fusion_weights": [0.2, 0.5, 0.3], "sigma": 4.0,
      "multi_text_fusion": orchestrator_pb2.MULTI_TEXT_FUSION_MAX_THEN_FUSE}, (0.2, 0.5, 0.3), 4.0, "max_then_fuse"),
])
async def test_avenue_video_scores_fuse_max_and_smooth_as_recomputed(
    scripted: Scripted, options: dict[str, object], weights: tuple[float, float, float], sigma: float, rule: str
) -> None:
    updates = await detect(scripted.address, orchestrator_pb2.VideoSource(path=str(avenue_clip("20"))),
                           ["running-throwing"], **options)
    started, results, summary = split(updates)
    assert list(started.texts) == ["running", "throwing"]
    assert (started.num_frames, started.fps, started.segment_length) == (273, 25.0, 24)
    assert [s.index for s in results] == list(range(12))
    assert [(s.start_frame, s.end_frame) for s in results] == [(24 * i, 24 * i + 24) for i in range(11)] + [
        (264, 273)]
    for result in results:
        assert [t.text for t in result.scores] == ["running", "throwing"]
        for text in result.scores:
            assert len(text.key_frames) == 4
            assert all(result.start_frame <= k < result.end_frame for k in text.key_frames)
    segments = expected.segments_of(results)
    assert expected.answered(segments) == scripted.lvlm.counts()  # every stream score is the LVLM's answer
    scores = expected.check_segments(segments, weights, rule)
    assert expected.distinct(scores) >= 4  # the scores vary: the checks above can tell right from wrong
    assert (summary.num_frames, summary.scored_frames, len(summary.frame_scores)) == (273, 273, 273)
    np.testing.assert_allclose(summary.frame_scores, expected.frame_scores(segments, scores, 273, sigma), atol=1e-5)
    assert list(summary.fusion_weights) == pytest.approx(weights) and summary.sigma == pytest.approx(sigma)
    assert summary.tail_policy == orchestrator_pb2.TAIL_POLICY_SCORE
    assert summary.lvlm_usage.calls == 12 * 6 == len(scripted.lvlm.answers)  # 3 images x 2 texts per segment
    assert summary.clip_model.random_weights and summary.parse_failures == 0


async def test_ped2_frame_folder_gives_180_frame_scores(stack: Stack) -> None:
    updates = await detect(stack.orchestrator.address,
                           orchestrator_pb2.VideoSource(frame_folder=str(ped2_frames("04"))), ["cart"])
    started, segments, summary = split(updates)
    assert started.num_frames == 180 and started.fps == 0
    assert [(s.start_frame, s.end_frame) for s in segments][-2:] == [(144, 168), (168, 180)]
    assert len(summary.frame_scores) == 180 and summary.scored_frames == 180


@pytest.mark.parametrize(
    ("count", "options", "spans", "scored", "extension"),
    [
        (29, {}, [(0, 24), (24, 29)], 29, 0),  # a tail of 5 frames is scored on its own
        (26, {}, [(0, 24)], 26, 2),  # a tail of 2 frames takes the last segment's score
        (29, {"tail_policy": orchestrator_pb2.TAIL_POLICY_DROP}, [(0, 24)], 24, 0),
        (29, {"profile": common_pb2.PROFILE_PARITY}, [(0, 24)], 24, 0),  # parity drops the tail, as the reference
        (20, {"tail_policy": orchestrator_pb2.TAIL_POLICY_DROP}, [], 0, 0),  # shorter than a segment: nothing
    ],
)
async def test_tail_policies(
    scripted: Scripted, tmp_path: Path, count: int, options: dict[str, object], spans: list[tuple[int, int]],
    scored: int, extension: int,
) -> None:
    folder = frame_folder(tmp_path, count)
    updates = await detect(scripted.address, orchestrator_pb2.VideoSource(frame_folder=str(folder)),
                           ["bicycle", "cart"], sigma=2.0, **options)
    _, results, summary = split(updates)
    assert [(s.start_frame, s.end_frame) for s in results] == spans
    assert summary.scored_frames == scored and len(summary.frame_scores) == count
    segments = expected.segments_of(results)
    rule = "max_then_fuse" if options.get("profile") == common_pb2.PROFILE_PARITY else "fuse_then_max"
    scores = expected.check_segments(segments, (0.6, 0.3, 0.1), rule)
    np.testing.assert_allclose(summary.frame_scores, expected.frame_scores(segments, scores, count, 2.0, extension),
                               atol=1e-5)
    assert all(v == 0 for v in summary.frame_scores[scored:])


async def test_bad_inputs_are_refused_and_the_stack_keeps_serving(stack: Stack, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.avi"
    corrupt.write_bytes(b"RIFF" + bytes(range(256)) * 40)
    empty = tmp_path / "empty"
    empty.mkdir()
    good_folder = frame_folder(tmp_path, 8, "good")
    source = orchestrator_pb2.VideoSource
    cases: list[tuple[orchestrator_pb2.VideoSource, list[str], dict[str, object], str]] = [
        (source(path=str(tmp_path / "missing.mp4")), ["car"], {}, "no such file or folder"),
        (source(path=str(corrupt)), ["car"], {}, "corrupt.avi"),
        (source(frame_folder=str(empty)), ["car"], {}, "no frames in this folder"),
        (source(frame_folder=str(good_folder)), [], {}, "no texts given"),
        (source(frame_folder=str(good_folder)), ["x" * 301], {}, "limit is 300"),
        (source(frame_folder=str(good_folder)), ["car"], {"fusion_weights": [1.0, -1.0, 0.0]}, "fusion_weights"),
        (source(frame_folder=str(good_folder)), ["car"], {"preset": "ucf"}, "unknown preset"),
        (source(), ["car"], {}, "no source given"),
    ]
    for bad_source, texts, options, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await detect(stack.orchestrator.address, bad_source, texts, **options)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert message in (caught.value.details() or "")
        _, segments, _ = split(await detect(stack.orchestrator.address, source(frame_folder=str(good_folder)),
                                            ["car"]))
        assert len(segments) == 1  # 8 frames: one scored partial segment


async def test_a_dead_lvlm_service_gives_unavailable(stack: Stack, tmp_path: Path) -> None:
    await stack.lvlm.shutdown(0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await detect(stack.orchestrator.address,
                     orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 8))), ["car"])
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "lvlm_service" in (caught.value.details() or "")


async def test_both_multi_text_rules_are_reported_and_parity_scores_with_the_reference_rule(
    scripted: Scripted, tmp_path: Path
) -> None:
    folder = orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 77)))
    texts = ["cart", "bicycle", "skateboard"]
    _, default_results, default_summary = split(await detect(scripted.address, folder, texts, sigma=0.0))
    _, parity_results, parity_summary = split(await detect(scripted.address, folder, texts, sigma=0.0,
                                                           profile=common_pb2.PROFILE_PARITY))
    default = expected.segments_of(default_results)
    parity = expected.segments_of(parity_results)
    default_scores = expected.check_segments(default, (0.6, 0.3, 0.1), "fuse_then_max")
    parity_scores = expected.check_segments(parity, (0.6, 0.3, 0.1), "max_then_fuse")
    # The rules differ on these scores (the maxima come from different texts), so each is tested.
    assert any(abs(s["max_then_fuse"] - s["max_fused"]) > 0.01 for s in default + parity)
    np.testing.assert_allclose(default_summary.frame_scores, expected.frame_scores(default, default_scores, 77, 0),
                               atol=1e-6)
    np.testing.assert_allclose(parity_summary.frame_scores, expected.frame_scores(parity, parity_scores, 77, 0),
                               atol=1e-6)
    assert default_summary.multi_text_fusion == orchestrator_pb2.MULTI_TEXT_FUSION_FUSE_THEN_MAX
    assert parity_summary.multi_text_fusion == orchestrator_pb2.MULTI_TEXT_FUSION_MAX_THEN_FUSE
    assert (parity_summary.profile, parity_summary.tail_policy) == (2, orchestrator_pb2.TAIL_POLICY_DROP)
    assert (len(default), len(parity)) == (4, 3)  # the 5-frame tail: scored vs dropped


async def test_key_frame_strategies_reach_clip_service(stack: Stack, tmp_path: Path) -> None:
    folder = orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 48)))
    runs = [split(await detect(stack.orchestrator.address, folder, ["car"], strategy=2))[1] for _ in range(2)]
    paper = split(await detect(stack.orchestrator.address, folder, ["car"]))[1]
    for segment in runs[0]:
        keys = list(segment.scores[0].key_frames)
        assert keys == sorted(set(keys)) and segment.scores[0].representative == keys[0]  # random: earliest
    assert [list(s.scores[0].key_frames) for s in runs[0]] == [list(s.scores[0].key_frames) for s in runs[1]]
    for segment in paper:  # CLIP then grouping: the same offset in each group of 6
        keys = [k - segment.start_frame for k in segment.scores[0].key_frames]
        assert [k - keys[0] for k in keys] == [0, 6, 12, 18]


async def test_sources_longer_than_max_frames_are_refused(tmp_path: Path) -> None:
    stack = await start_stack(max_frames=30)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await detect(stack.orchestrator.address,
                         orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 48))), ["car"])
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "more than 30 frames" in (caught.value.details() or "")
    finally:
        await stack.shutdown()


@pytest.fixture
def http_videos() -> Iterator[str]:
    """The fixture clips served over HTTP by a real web server on 127.0.0.1."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(avenue_clip("08").parent))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_a_stream_uri_gives_the_same_frames_and_scores_as_the_file(scripted: Scripted, http_videos: str) -> None:
    from_file = split(await detect(scripted.address, orchestrator_pb2.VideoSource(path=str(avenue_clip("08"))),
                                   ["running"]))
    from_stream = split(await detect(scripted.address, orchestrator_pb2.VideoSource(uri=f"{http_videos}/08.avi"),
                                     ["running"]))
    assert from_stream[0].fps == 25.0 and from_stream[0].num_frames == 0  # a stream's length is not known ahead
    assert [(s.start_frame, s.end_frame) for s in from_stream[1]] == [(0, 24), (24, 36)]
    assert expected.segments_of(from_stream[1]) == expected.segments_of(from_file[1])
    assert list(from_stream[2].frame_scores) == list(from_file[2].frame_scores)
