"""`anyanomaly eval` end to end: a small C-Ave-style dataset built from the real Avenue clips
08, 20 and 21 with their real C-Ave labels, evaluated with the tiny CLIP and a ScriptedLVLM
(scores that vary per text, stream and segment); every AUROC is recomputed here from the
cached detections and the label files with numpy, scipy, h5py and scikit-learn."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d
from sklearn.metrics import roc_auc_score

from tests.helpers.cli import run
from tests.helpers.fake_openai_server import FakeOpenAIServer
from tests.helpers.fixtures import avenue_clip, fixtures_root
from tests.helpers.scripted_lvlm import ScriptedLVLM

pytestmark = pytest.mark.slow
VIDEOS = ["08", "20", "21"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The authors' layout: avenue/testing/frames/<video>/<0000>.jpg, decoded from the clips."""
    root = tmp_path_factory.mktemp("data")
    for video in VIDEOS:
        folder = root / "avenue" / "testing" / "frames" / video
        folder.mkdir(parents=True)
        capture = cv2.VideoCapture(str(avenue_clip(video)))
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            cv2.imwrite(str(folder / f"{index:04d}.jpg"), frame)
            index += 1
        capture.release()
    return root


def labels_root() -> str:
    return str(fixtures_root() / "labels" / "anyanomaly" / "ground_truth")


@pytest.fixture(scope="module")
def evaluated(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    output = tmp_path_factory.mktemp("eval")
    with FakeOpenAIServer(answer=ScriptedLVLM()) as server:
        done = run("eval", "--dataset", "c-avenue", "--data-root", str(data_root), "--labels-root", labels_root(),
                   "--videos", *VIDEOS, "--models", "tiny", "--lvlm-url", server.url, "--lvlm-model", server.model,
                   "--output-dir", str(output), "--quiet", timeout=600)
    assert done.returncode == 0, done.stderr
    assert "c-avenue: fixed hyperparameters" in done.stdout
    yield output


def recomputed_auroc(results: Path, text: str, weights: tuple[float, float, float], sigma: float) -> float:
    """Micro-AUROC of one class over the three videos, from the result JSONs and the h5 labels:
    per segment the text's fused score, copied to its frames (a short tail takes the last
    segment's score), smoothed per video, concatenated in video order."""
    scores, labels = [], []
    with h5py.File(Path(labels_root()) / "c-avenue_labels" / f"avenue_{text}_label.h5") as h5:
        for video in VIDEOS:
            result = json.loads((results / "classes" / f"{video}.json").read_text())
            frames = np.zeros(result["num_frames"])
            for segment in result["segments"]:
                streams = [segment["scores"][text][s] for s in ("frame", "position", "temporal")]
                frames[segment["start_frame"]:] = float(np.dot(weights, streams))
            scores.append(gaussian_filter1d(frames, sigma))
            labels.append(h5[video][:])
    return float(roc_auc_score(np.concatenate(labels), np.concatenate(scores)))


def test_eval_writes_the_report_the_table_and_the_plots(evaluated: Path) -> None:
    report = json.loads((evaluated / "report.json").read_text())
    assert report["mode"] == "fixed hyperparameters"
    assert report["settings"]["weights"] == [0.6, 0.3, 0.1] and report["settings"]["sigma"] == 15.0
    runs = {r["name"]: r for r in report["runs"]}
    assert list(runs) == ["too_close", "bicycle", "throwing", "running", "dancing"]
    for name in ("throwing", "running"):  # 20 is throwing, 08 and 21 are running
        assert runs[name]["auroc"] == pytest.approx(recomputed_auroc(evaluated / "results", name, (0.6, 0.3, 0.1),
                                                                     15.0), abs=1e-6)
        assert runs[name]["frames"] == 36 + 273 + 76
    assert runs["throwing"]["positive_frames"] == 154 and runs["running"]["positive_frames"] == 63
    for name in ("too_close", "bicycle", "dancing"):  # no positive frame in these three videos
        assert runs[name]["auroc"] == "undefined"
    assert runs["running"]["per_video"]["20"] == "undefined"  # no running in 20
    table = (evaluated / "report.md").read_text()
    assert "| Method | throwing | running | dancing | Action | too_close | bicycle | Appearance | Avg |" in table
    assert "90.27" in table  # the paper's number beside ours
    for png in ["roc.png", "scores/throwing.png", "scores/running.png"]:
        assert (evaluated / png).read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (evaluated / "results" / "classes").iterdir()) == [f"{v}.json" for v in VIDEOS]


def test_rescoring_cached_results_needs_no_model_and_changes_the_auroc(evaluated: Path, tmp_path: Path) -> None:
    done = run("eval", "--dataset", "c-avenue", "--labels-root", labels_root(), "--videos", *VIDEOS,
               "--results", str(evaluated / "results"), "--weights", "0", "0", "1", "--sigma", "2",
               "--output-dir", str(tmp_path), "--quiet")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["weights"] == [0.0, 0.0, 1.0] and report["settings"]["sigma"] == 2.0
    assert not (tmp_path / "results").exists()  # nothing was detected again
    fixed = {r["name"]: r["auroc"] for r in json.loads((evaluated / "report.json").read_text())["runs"]}
    for run_ in report["runs"]:
        if run_["name"] in ("throwing", "running"):
            again = recomputed_auroc(evaluated / "results", run_["name"], (0.0, 0.0, 1.0), 2.0)
            assert run_["auroc"] == pytest.approx(again, abs=1e-6)
            assert abs(run_["auroc"] - fixed[run_["name"]]) > 1e-3  # other weights, another number
    oracle = run("eval", "--dataset", "c-avenue", "--labels-root", labels_root(), "--videos", *VIDEOS,
                 "--results", str(evaluated / "results"), "--oracle-search", "--output-dir", str(tmp_path / "o"))
    assert oracle.returncode == 0, oracle.stderr
    assert "oracle (tuned on test labels)" in (tmp_path / "o" / "report.md").read_text()
    tuned = {r["name"]: r["auroc"] for r in json.loads((tmp_path / "o" / "report.json").read_text())["runs"]}
    assert tuned["running"] >= fixed["running"] and tuned["throwing"] >= fixed["throwing"]


def test_results_of_another_configuration_and_bad_datasets_fail_clearly(evaluated: Path, tmp_path: Path) -> None:
    parity = run("eval", "--dataset", "c-avenue", "--labels-root", labels_root(), "--videos", *VIDEOS,
                 "--results", str(evaluated / "results"), "--profile", "parity", "--output-dir", str(tmp_path))
    assert parity.returncode == 2
    assert "08.json comes from another configuration: profile 'default', expected 'parity'" in parity.stderr
    missing = run("eval", "--dataset", "c-avenue", "--data-root", str(tmp_path / "nothing"),
                  "--labels-root", labels_root(), "--models", "tiny", "--output-dir", str(tmp_path))
    assert missing.returncode == 2 and "data root not found" in missing.stderr
    unknown = run("eval", "--dataset", "c-avenue", "--labels-root", labels_root(), "--classes", "juggling",
                  "--results", str(evaluated / "results"), "--output-dir", str(tmp_path))
    assert unknown.returncode == 2 and "unknown class 'juggling'" in unknown.stderr


def test_the_cascade_is_evaluated_with_the_calls_it_saves(evaluated: Path, data_root: Path, tmp_path: Path) -> None:
    """The same detections with the cascade: fewer LVLM calls, counted in the report, and an AUROC
    recomputed from its own results (what it costs in accuracy is the difference)."""
    with FakeOpenAIServer(answer=ScriptedLVLM()) as server:
        done = run("eval", "--dataset", "c-avenue", "--data-root", str(data_root),
                   "--labels-root", labels_root(), "--videos", *VIDEOS, "--models", "tiny", "--lvlm-url", server.url,
                   "--lvlm-model", server.model, "--cascade", "0.5", "--output-dir", str(tmp_path), "--quiet",
                   timeout=600)
    assert done.returncode == 0, done.stderr
    plain, cascaded = (json.loads((folder / "report.json").read_text()) for folder in (evaluated, tmp_path))
    texts, segments = len(plain["runs"]), plain["lvlm_work"]["segments"]
    assert plain["lvlm_work"] == {"lvlm_calls": 3 * texts * segments, "segments": segments, "screened_out": 0}
    out = cascaded["lvlm_work"]["screened_out"]
    assert 0 < out < texts * segments
    assert cascaded["lvlm_work"]["lvlm_calls"] == texts * segments + 3 * (texts * segments - out)
    assert cascaded["settings"]["scoring"]["cascade_threshold"] == 0.5
    assert f"cascade at 0.5 ({out} segment-texts screened out)" in (tmp_path / "report.md").read_text()
    calls = (plain["lvlm_work"]["lvlm_calls"], cascaded["lvlm_work"]["lvlm_calls"])
    print(f"\ncascade at 0.5 (ScriptedLVLM, c-avenue 08/20/21): {calls[0]} -> {calls[1]} LVLM calls "
          f"({1 - calls[1] / calls[0]:.0%} fewer), {out} of {texts * segments} segment-texts screened out; "
          f"pooled AUROC {plain['pooled_auroc']:.4f} -> {cascaded['pooled_auroc']:.4f}")
    for run_ in cascaded["runs"]:
        if run_["name"] in ("throwing", "running"):
            again = recomputed_auroc(tmp_path / "results", run_["name"], (0.6, 0.3, 0.1), 15.0)
            assert run_["auroc"] == pytest.approx(again, abs=1e-6)
    # Results made with the cascade are not taken for results without it.
    other = run("eval", "--dataset", "c-avenue", "--labels-root", labels_root(), "--videos", *VIDEOS,
                "--results", str(tmp_path / "results"), "--output-dir", str(tmp_path / "o"))
    assert other.returncode == 2 and "cascade_threshold 0.5, expected None" in other.stderr


def test_dense_window_features_are_evaluated_against_the_crops(
    evaluated: Path, data_root: Path, tmp_path: Path
) -> None:
    """The same detections with dense window features: the same key frames and LVLM calls, other
    contexts, and an AUROC from its own results next to the crops' (its accuracy cost)."""
    with FakeOpenAIServer(answer=ScriptedLVLM()) as server:
        done = run("eval", "--dataset", "c-avenue", "--data-root", str(data_root),
                   "--labels-root", labels_root(), "--videos", *VIDEOS, "--models", "tiny", "--lvlm-url", server.url,
                   "--lvlm-model", server.model, "--window-features", "dense", "--output-dir", str(tmp_path),
                   "--quiet", timeout=600)
    assert done.returncode == 0, done.stderr
    crops, dense = (json.loads((folder / "report.json").read_text()) for folder in (evaluated, tmp_path))
    assert dense["settings"]["scoring"]["window_features"] == "dense"
    assert dense["lvlm_work"] == crops["lvlm_work"]
    moved = same = 0
    for video in VIDEOS:
        plain, other = (json.loads((folder / "results" / "classes" / f"{video}.json").read_text())["segments"]
                        for folder in (evaluated, tmp_path))
        for a, b in zip(plain, other, strict=True):
            assert a["key_frames"] == b["key_frames"]
            for text, scores in a["scores"].items():
                assert b["scores"][text]["frame"] == scores["frame"]  # the key frame is not a context
                changed = (b["scores"][text]["position"], b["scores"][text]["temporal"]) != \
                    (scores["position"], scores["temporal"])
                moved, same = moved + changed, same + (not changed)
    assert moved > 0
    print(f"\ndense window features (ScriptedLVLM, c-avenue 08/20/21): contexts' scores moved in {moved} of "
          f"{moved + same} segment-texts; pooled AUROC crops {crops['pooled_auroc']:.4f}, dense "
          f"{dense['pooled_auroc']:.4f}")
    other = run("eval", "--dataset", "c-avenue", "--labels-root", labels_root(), "--videos", *VIDEOS,
                "--results", str(tmp_path / "results"), "--output-dir", str(tmp_path / "o"))
    assert other.returncode == 2 and "window_features 'dense', expected 'crops'" in other.stderr
