"""The evaluation harness: real label files, re-fusion and AUROC against scikit-learn,
the authors' oracle grid, and the errors a user can act on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d
from sklearn.metrics import roc_auc_score

from anyanomaly.evaluation import datasets
from anyanomaly.evaluation.labels import load_labels
from anyanomaly.evaluation.report import ORACLE_MODE, build_report, markdown
from anyanomaly.evaluation.results import ResultConfig, check_config, load_result
from anyanomaly.evaluation.scoring import Scoring, oracle_search, oracle_weight_grid, score_run, segment_score
from services.common.errors import InvalidInput
from tests.helpers.fixtures import fixtures_root


def ground_truth() -> Path:
    return fixtures_root() / "labels" / "anyanomaly" / "ground_truth"


# -- labels -------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "videos", "frames"), [("shtech", 96, 36388), ("avenue", 18, 12394)])
def test_real_class_label_files_load_with_the_published_sizes(kind: str, videos: int, frames: int) -> None:
    plan = datasets.c_dataset(kind, ground_truth())
    assert [r.name for r in plan.runs] == list(datasets.CLASSES[kind])
    for run in plan.runs:
        assert len(run.labels) == videos
        assert sum(len(v) for v in run.labels.values()) == frames
    assert [g.name for g in plan.groups] == ["classes"]  # one detection per video serves every class
    assert plan.groups[0].texts == datasets.CLASSES[kind]


def test_multiple_scenario_files_load_despite_the_reference_name_typos() -> None:
    avenue = datasets.c_dataset("avenue", ground_truth(), multiple=True)
    assert {r.name: sorted(r.labels) for r in avenue.runs} == {
        "running-throwing": ["09"], "throwing-too_close": ["06", "11"]}  # JSON key "throwing_too-close"
    assert avenue.runs[1].texts == ("throwing", "too_close")
    shtech = datasets.c_dataset("shtech", ground_truth(), multiple=True)
    assert len(shtech.runs) == 9
    assert sorted(next(r for r in shtech.runs if r.name == "running-skateboarding").labels) == ["01_0064", "08_0044"]
    assert next(r for r in shtech.runs if r.name == "jumping-falling-pickup").texts == ("jumping", "falling",
                                                                                      "pickup")
    assert len(shtech.groups) == 9  # the class list differs per scenario (stroller, pickup): separate detections


def test_other_label_formats(tmp_path: Path) -> None:
    np.savez(tmp_path / "l.npz", a=np.array([0, 1, 1]), b=np.array([0, 0]))
    (tmp_path / "l.json").write_text(json.dumps({"a": [0, 1, 1], "b": [0, 0]}))
    for name in ("l.npz", "l.json"):
        labels = load_labels(tmp_path / name)
        assert {k: v.tolist() for k, v in labels.items()} == {"a": [0, 1, 1], "b": [0, 0]}
    (tmp_path / "bad.json").write_text(json.dumps({"a": [0, 2]}))
    with pytest.raises(InvalidInput, match=r"bad\.json: the labels of video 'a' must be 0 or 1"):
        load_labels(tmp_path / "bad.json")
    with pytest.raises(InvalidInput, match=r"label file not found: .*missing\.h5"):
        load_labels(tmp_path / "missing.h5")


def test_unknown_classes_and_missing_folders_are_named() -> None:
    with pytest.raises(InvalidInput, match=r"unknown class 'skating'; known: car, bicycle"):
        datasets.c_dataset("shtech", ground_truth(), classes=["skating"])
    with pytest.raises(InvalidInput, match=r"labels root not found: /nowhere"):
        datasets.c_dataset("avenue", Path("/nowhere"))


def make_frames(root: Path, videos: dict[str, int]) -> None:
    for name, count in videos.items():
        folder = root / "avenue" / "testing" / "frames" / name
        folder.mkdir(parents=True)
        for i in range(count):
            (folder / f"{i:04d}.jpg").write_bytes(b"")


def test_video_folders_must_match_the_labels(tmp_path: Path) -> None:
    make_frames(tmp_path, {"08": 1, "20": 1})
    with pytest.raises(InvalidInput, match=r"video\(s\) 21 have labels but are not under"):
        datasets.c_dataset("avenue", ground_truth(), tmp_path, videos=["08", "20", "21"])
    plan = datasets.c_dataset("avenue", ground_truth(), tmp_path, videos=["08", "20"])
    assert sorted(plan.sources) == ["08", "20"]
    with pytest.raises(InvalidInput, match=r"01, 02, .* have labels but are not under"):
        datasets.c_dataset("avenue", ground_truth(), tmp_path)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"08": [0], "99": [1]}))
    make_frames(tmp_path / "custom", {"07": 1})
    with pytest.raises(InvalidInput, match=r"99 have labels"):
        datasets.custom_dataset(labels, ["x"], tmp_path / "custom" / "avenue" / "testing" / "frames")
    (tmp_path / "custom" / "avenue" / "testing" / "frames" / "08").mkdir()
    (tmp_path / "custom" / "avenue" / "testing" / "frames" / "08" / "0.jpg").write_bytes(b"")
    (tmp_path / "custom" / "avenue" / "testing" / "frames" / "99").mkdir()
    (tmp_path / "custom" / "avenue" / "testing" / "frames" / "99" / "0.jpg").write_bytes(b"")
    with pytest.raises(InvalidInput, match=r"07 under .* have no labels"):
        datasets.custom_dataset(labels, ["x"], tmp_path / "custom" / "avenue" / "testing" / "frames")


# -- results, re-fusion and AUROC ---------------------------------------------------------
def write_result(path: Path, segments: list[tuple[int, int, dict[str, tuple[float, float, float]]]], frames: int,
                 scored: int | None = None, **extra: Any) -> Path:
    document = {
        "source": path.stem, "texts": sorted({t for _, _, s in segments for t in s}), "num_frames": frames,
        "scored_frames": frames if scored is None else scored, "segment_length": 4, "profile": "default",
        "preset": "custom",
        "segments": [{"index": i, "start_frame": a, "end_frame": b,
                      "scores": {t: {"frame": f, "position": p, "temporal": q, "fused": 0, "reason": ""}
                                 for t, (f, p, q) in s.items()}} for i, (a, b, s) in enumerate(segments)],
        **extra,
    }
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def two_videos(tmp_path: Path) -> tuple[datasets.Run, dict[str, Any]]:
    a = write_result(tmp_path / "a.json", [(0, 4, {"x": (0.1, 0.2, 0.3), "y": (0.0, 0.9, 0.0)}),
                                           (4, 8, {"x": (0.9, 0.8, 0.7), "y": (0.2, 0.1, 0.0)})], 8)
    b = write_result(tmp_path / "b.json", [(0, 4, {"x": (0.3, 0.3, 0.3), "y": (0.5, 0.0, 1.0)}),
                                           (4, 8, {"x": (0.0, 0.1, 0.0), "y": (0.0, 0.0, 0.1)})], 10, scored=8)
    labels = {"a": np.array([0, 0, 0, 0, 1, 1, 1, 1]), "b": np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 1])}
    run = datasets.Run("custom", ("x", "y"), labels, "custom", "custom")
    return run, {"a": load_result(a), "b": load_result(b)}


def expected_raw(weights: tuple[float, float, float], rule: str) -> dict[str, np.ndarray]:
    g = np.array(weights)
    streams = {"a": [({"x": (0.1, 0.2, 0.3), "y": (0.0, 0.9, 0.0)}), ({"x": (0.9, 0.8, 0.7), "y": (0.2, 0.1, 0.0)})],
               "b": [({"x": (0.3, 0.3, 0.3), "y": (0.5, 0.0, 1.0)}), ({"x": (0.0, 0.1, 0.0), "y": (0.0, 0.0, 0.1)})]}
    out = {}
    for video, segments in streams.items():
        values = []
        for segment in segments:
            matrix = np.array(list(segment.values()))  # texts x streams
            values.append(float((g * matrix.max(axis=0)).sum()) if rule == "max_then_fuse"
                          else float((matrix @ g).max()))
        out[video] = np.repeat(values, 4)
    return out


@pytest.mark.parametrize("rule", ["fuse_then_max", "max_then_fuse"])
@pytest.mark.parametrize("smoothing", ["per_video", "concatenated"])
def test_refusion_and_micro_auroc_match_scikit_learn(
    two_videos: tuple[datasets.Run, dict[str, Any]], rule: str, smoothing: str
) -> None:
    run, results = two_videos
    scoring = Scoring(weights=(0.5, 0.3, 0.2), sigma=1.5, rule=rule, smoothing=smoothing)
    got = score_run(run, results, scoring)
    raw = expected_raw(scoring.weights, rule)
    if smoothing == "per_video":
        scores = np.concatenate([gaussian_filter1d(raw["a"], 1.5), gaussian_filter1d(raw["b"], 1.5)])
    else:
        scores = gaussian_filter1d(np.concatenate([raw["a"], raw["b"]]), 1.5)
    labels = np.concatenate([run.labels["a"], run.labels["b"][:8]])  # b's unscored tail is not evaluated
    np.testing.assert_allclose(got.scores, scores)
    assert got.auroc == pytest.approx(roc_auc_score(labels, scores))
    assert got.per_video["a"] == pytest.approx(roc_auc_score(labels[:8], scores[:8]))


def test_the_two_multi_text_rules_differ_when_maxima_come_from_different_texts(
    two_videos: tuple[datasets.Run, dict[str, Any]]
) -> None:
    _, results = two_videos
    first = results["a"].segments[0]  # x: (0.1, 0.2, 0.3), y: (0.0, 0.9, 0.0)
    weights = (0.6, 0.3, 0.1)
    # The reference: x's frame, y's position, x's temporal; ours: the best single text (y).
    assert segment_score(first, ("x", "y"), weights, "max_then_fuse") == pytest.approx(0.06 + 0.27 + 0.03)
    assert segment_score(first, ("x", "y"), weights, "fuse_then_max") == pytest.approx(0.27)
    assert segment_score(first, ("x",), weights, "fuse_then_max") == pytest.approx(0.06 + 0.06 + 0.03)


def test_causal_smoothing_looks_only_back_and_is_reported_with_the_gaussian(
    two_videos: tuple[datasets.Run, dict[str, Any]]
) -> None:
    run, results = two_videos
    got = score_run(run, results, Scoring(sigma=2.0, smoothing="causal"))
    raw = expected_raw((0.6, 0.3, 0.1), "fuse_then_max")
    keep = np.exp(-1 / 2.0)
    expected_scores = []
    for video in ("a", "b"):  # an exponential moving average per video, from its first frame
        state = raw[video][0]
        for value in raw[video]:
            state = keep * state + (1 - keep) * value
            expected_scores.append(state)
    np.testing.assert_allclose(got.scores, expected_scores)
    labels = np.concatenate([run.labels["a"], run.labels["b"][:8]])
    assert got.auroc == pytest.approx(roc_auc_score(labels, expected_scores))
    gaussian = score_run(run, results, Scoring(sigma=2.0, smoothing="per_video"))
    assert got.gaussian_auroc == gaussian.auroc and gaussian.gaussian_auroc is None


def test_per_video_smoothing_does_not_leak_across_videos(two_videos: tuple[datasets.Run, dict[str, Any]]) -> None:
    run, results = two_videos
    per_video = score_run(run, results, Scoring(sigma=3, smoothing="per_video"))
    concatenated = score_run(run, results, Scoring(sigma=3, smoothing="concatenated"))
    # The first frame of b: per video it only sees b; concatenated it is pulled towards a's end.
    alone = gaussian_filter1d(expected_raw((0.6, 0.3, 0.1), "fuse_then_max")["b"], 3)[0]
    assert per_video.scores[8] == pytest.approx(alone)
    assert concatenated.scores[8] != pytest.approx(alone)


def test_all_one_labels_are_undefined_not_a_number(two_videos: tuple[datasets.Run, dict[str, Any]]) -> None:
    _, results = two_videos
    stroller_running = datasets.c_dataset("shtech", ground_truth(), multiple=True)
    labels = next(r for r in stroller_running.runs if r.name == "stroller-running").labels
    assert all(v.min() == 1 for v in labels.values())  # the real all-ones label of 04_0011
    ones = datasets.Run("ones", ("x",), {"a": np.ones(8, np.int8)}, "custom", "multiple")
    scores = score_run(ones, results, Scoring())
    assert scores.auroc is None and scores.per_video == {"a": None}
    report = build_report(datasets.Plan("custom", "custom", [], [ones]), [scores], {})
    assert report["runs"][0]["auroc"] == "undefined"


def test_the_oracle_grid_is_the_authors_including_the_six_dropped_points() -> None:
    grid = oracle_weight_grid()
    assert len(grid) == 60  # 66 simplex points minus 6 lost to float error
    rounded = {tuple(round(w, 1) for w in g) for g in grid}
    for dropped in [(0.3, 0.7, 0.0), (0.4, 0.6, 0.0), (0.6, 0.4, 0.0), (0.7, 0.3, 0.0), (0.8, 0.2, 0.0),
                    (0.9, 0.1, 0.0)]:
        assert dropped not in rounded
    assert (0.6, 0.3, 0.1) in rounded and (1.0, 0.0, 0.0) in rounded


def test_oracle_search_finds_the_informative_stream_and_says_so(tmp_path: Path) -> None:
    # Only the temporal stream follows the labels; the oracle must find weights (0, 0, 1).
    segments = [(4 * i, 4 * i + 4, {"x": (0.5, 0.5, float(i % 2))}) for i in range(6)]
    result = load_result(write_result(tmp_path / "v.json", segments, 24))
    labels = {"v": np.repeat([0, 1, 0, 1, 0, 1], 4)}
    run = datasets.Run("custom", ("x",), labels, "custom", "custom")
    fixed = score_run(run, {"v": result}, Scoring())
    oracle = oracle_search(run, {"v": result}, Scoring())
    assert oracle.oracle and oracle.auroc is not None and fixed.auroc is not None
    assert oracle.auroc >= fixed.auroc
    assert oracle.scoring.weights[2] > 0.9 and oracle.scoring.sigma == 1.0
    report = build_report(datasets.Plan("custom", "custom", [], [run]), [oracle],
                          {"profile": "default", "fusion_rule": "fuse_then_max", "smoothing": "per_video",
                           "weights": [0.6, 0.3, 0.1], "sigma": 15.0})
    assert report["mode"] == ORACLE_MODE and ORACLE_MODE in markdown(report)


def test_results_from_another_configuration_are_refused_by_name(tmp_path: Path) -> None:
    path = write_result(tmp_path / "08.json", [(0, 4, {"running": (0.1, 0.1, 0.1)})], 4)
    result = load_result(path)
    with pytest.raises(InvalidInput, match=r"08\.json comes from another configuration: segment length 4, expected 24"):
        check_config(result, ResultConfig(24, ("running",), "default", ""))
    with pytest.raises(InvalidInput, match=r"lack \['bicycle'\]"):
        check_config(result, ResultConfig(4, ("running", "bicycle"), "default", ""))
    with pytest.raises(InvalidInput, match=r"profile 'default', expected 'parity'"):
        check_config(result, ResultConfig(4, ("running",), "parity", ""))
    run = datasets.Run("r", ("running",), {"08": np.zeros(5, np.int8)}, "custom", "custom")
    with pytest.raises(InvalidInput, match=r"08\.json has 4 frames but the labels of video 08 have 5"):
        score_run(run, {"08": result}, Scoring())
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(InvalidInput, match=r"junk\.json: not a detection result"):
        load_result(tmp_path / "junk.json")
    # The scoring configuration: recorded, or for an older result the defaults unless it was gated.
    check_config(result, ResultConfig(4, ("running",), "default", ""))
    cascaded = load_result(write_result(tmp_path / "c.json", [(0, 4, {"running": (0.1, 0.1, 0.1)})], 4, scoring={
        "mode": "standard", "multi_text": False, "gate_threshold": None, "cascade_threshold": 0.5}))
    with pytest.raises(InvalidInput, match=r"c\.json comes from another configuration: cascade_threshold 0\.5, "
                                           r"expected None"):
        check_config(cascaded, ResultConfig(4, ("running",), "default", ""))
    gated = load_result(write_result(tmp_path / "g.json", [(0, 4, {"running": (0.1, 0.1, 0.1)})], 4,
                                     gated_segments=1))
    with pytest.raises(InvalidInput, match=r"gate_threshold 'unknown', expected None"):
        check_config(gated, ResultConfig(4, ("running",), "default", ""))
