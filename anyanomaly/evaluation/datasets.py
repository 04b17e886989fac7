"""Evaluation plans for the datasets in the authors' layouts, and for custom data.

- C-ShT / C-Ave (`c-shtech`, `c-avenue`): one run per class (the class name is the text;
  all test videos except the multiple-scenario ones), or with `multiple` one run per
  multiple-scenario string ("jumping-falling-pickup" -> three texts) on its own videos.
- ShanghaiTech / Avenue (`shtech`, `avenue`): one run with all classes of the dataset as
  texts, scored by the max over texts, against the full VAD labels.
- `custom`: a folder of videos or frame folders, a label file, the user's texts.

Frames in the authors' layout: `<root>/avenue/testing/frames/<01..21>/` and
`<root>/shanghai/testing/<01_0014..>/`; a folder of video files (`<root>/avenue/testing_videos/
01.avi`) works too. Labels: the authors' `ground_truth/` folder (`c-{dataset}_labels/*.h5`,
`c-{dataset}-multiple.json`) or any label file (`labels.py`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anyanomaly.evaluation.labels import Labels, load_labels
from services.common.errors import InvalidInput
from services.common.presets import AVENUE_CLASSES, SHTECH_CLASSES

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".webm")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

# The paper's Tables 1-2 split the classes into action and appearance anomalies.
CATEGORIES = {
    "shtech": {"action": ("skateboarding", "throwing", "running", "loitering", "jumping", "falling", "fighting"),
               "appearance": ("car", "hand_truck", "bicycle", "motorcycle")},
    "avenue": {"action": ("throwing", "running", "dancing"), "appearance": ("too_close", "bicycle")},
}
CLASSES = {"shtech": SHTECH_CLASSES, "avenue": AVENUE_CLASSES}
# Where the authors' files disagree with their own names (METHOD.md section 11).
SCENARIO_KEY_FIXES = {"throwing_too-close": "throwing-too_close"}
SCENARIO_FILE_ALIASES = {"running-skateboarding": "run-skateboarding"}
FRAME_FOLDERS = {"shtech": ("shanghai/testing", "shanghaitech/testing/frames"),
                 "avenue": ("avenue/testing/frames",)}
VIDEO_FOLDERS = {"shtech": ("shanghai/testing_videos", "shanghaitech/testing/videos"),
                 "avenue": ("avenue/testing_videos",)}


@dataclass(frozen=True)
class Group:
    """One detection per video with these texts; several runs may share it."""

    name: str
    texts: tuple[str, ...]
    videos: tuple[str, ...]


@dataclass(frozen=True)
class Run:
    """One AUROC: texts scored against labels on some videos."""

    name: str
    texts: tuple[str, ...]
    labels: Labels
    group: str
    category: str  # "action", "appearance", "multiple", "benchmark" or "custom"


@dataclass
class Plan:
    dataset: str
    preset: str
    groups: list[Group]
    runs: list[Run]
    sources: dict[str, Path] = field(default_factory=dict)  # video -> file or frame folder


def _known(values: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise InvalidInput(f"unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(allowed)}")
    return list(values)


def _restrict(runs: list[Run], videos: Sequence[str]) -> list[Run]:
    if not videos:
        return runs
    covered = {v for run in runs for v in run.labels}
    missing = [v for v in videos if v not in covered]
    if missing:
        raise InvalidInput(f"video(s) {', '.join(missing)} are in none of the label files of this evaluation")
    return [Run(r.name, r.texts, {v: r.labels[v] for v in r.labels if v in videos}, r.group, r.category)
            for r in runs if any(v in videos for v in r.labels)]


def _groups(runs: list[Run]) -> list[Group]:
    """One detection group per distinct `Run.group`, with the union of its runs' texts and videos."""
    groups = []
    for name in dict.fromkeys(r.group for r in runs):
        members = [r for r in runs if r.group == name]
        texts = tuple(dict.fromkeys(t for r in members for t in r.texts))
        groups.append(Group(name, texts, tuple(sorted({v for r in members for v in r.labels}))))
    return groups


def _video_entries(folder: Path) -> dict[str, Path]:
    """Video files and frame folders directly inside `folder`, by name (file stem)."""
    entries: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and any(p.suffix.lower() in FRAME_SUFFIXES for p in entry.iterdir()):
            entries[entry.name] = entry
        elif entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES:
            entries.setdefault(entry.stem, entry)
    return entries


def _dataset_sources(kind: str, data_root: Path) -> dict[str, Path]:
    if not data_root.is_dir():
        raise InvalidInput(f"data root not found: {data_root}")
    candidates = [data_root / p for p in (*FRAME_FOLDERS[kind], *VIDEO_FOLDERS[kind])]
    for folder in candidates:
        if folder.is_dir():
            entries = _video_entries(folder)
            if entries:
                return entries
    looked = ", ".join(str(c.relative_to(data_root)) for c in candidates)
    raise InvalidInput(f"no {kind} test videos under {data_root} (looked in {looked})")


def _match_sources(sources: dict[str, Path], runs: list[Run], allowed_extra: set[str], where: Path,
                   strict: bool) -> dict[str, Path]:
    needed = sorted({v for run in runs for v in run.labels})
    missing = [v for v in needed if v not in sources]
    if missing:
        raise InvalidInput(f"video(s) {', '.join(missing)} have labels but are not under {where}")
    extra = sorted(set(sources) - set(needed) - allowed_extra)
    if strict and extra:
        raise InvalidInput(f"video(s) {', '.join(extra)} under {where} have no labels; remove them or choose "
                           "videos with --videos")
    return {v: sources[v] for v in needed}


def _scenarios(labels_root: Path, kind: str) -> dict[str, list[str]]:
    path = labels_root / f"c-{kind}-multiple.json"
    if not path.is_file():
        raise InvalidInput(f"multiple-scenario list not found: {path}")
    raw = json.loads(path.read_text())
    return {SCENARIO_KEY_FIXES.get(key, key): list(videos) for key, videos in raw.items()}


def c_dataset(
    kind: str, labels_root: Path, data_root: Path | None = None, classes: Sequence[str] = (),
    multiple: bool = False, videos: Sequence[str] = (),
) -> Plan:
    """C-ShT (`kind` "shtech") or C-Ave ("avenue") from the authors' ground_truth folder."""
    if not labels_root.is_dir():
        raise InvalidInput(f"labels root not found: {labels_root} (the authors' ground_truth folder)")
    folder = labels_root / f"c-{kind}_labels"
    scenarios = _scenarios(labels_root, kind)
    runs: list[Run] = []
    if multiple:
        for scenario, scenario_videos in scenarios.items():
            name = SCENARIO_FILE_ALIASES.get(scenario, scenario)
            labels = load_labels(folder / f"m_{kind}_{name}_label.h5")
            if sorted(labels) != sorted(scenario_videos):
                raise InvalidInput(f"{folder / f'm_{kind}_{name}_label.h5'}: videos {sorted(labels)} differ from "
                                   f"the scenario list {sorted(scenario_videos)}")
            runs.append(Run(scenario, tuple(scenario.split("-")), labels, f"multiple-{scenario}", "multiple"))
    else:
        chosen = _known(classes, CLASSES[kind], "class") if classes else list(CLASSES[kind])
        category = {c: cat for cat, names in CATEGORIES[kind].items() for c in names}
        for name in chosen:
            runs.append(Run(name, (name,), load_labels(folder / f"{kind}_{name}_label.h5"), "classes", category[name]))
    runs = _restrict(runs, videos)
    plan = Plan(f"c-{kind}", kind, _groups(runs), runs)
    if data_root is not None:
        if multiple:  # the single-class videos are not evaluated here
            others = set(load_labels(folder / f"{kind}_{CLASSES[kind][0]}_label.h5"))
        else:  # the multiple-scenario videos are not evaluated here
            others = {v for scenario_videos in scenarios.values() for v in scenario_videos}
        plan.sources = _match_sources(_dataset_sources(kind, data_root), runs, others, data_root, strict=not videos)
    return plan


def benchmark_dataset(kind: str, labels_file: Path, data_root: Path | None = None, videos: Sequence[str] = ()) -> Plan:
    """ShanghaiTech or Avenue as a VAD benchmark: every class of the dataset is a text."""
    texts = tuple(CLASSES[kind])
    runs = _restrict([Run("all classes", texts, load_labels(labels_file), "benchmark", "benchmark")], videos)
    plan = Plan(kind, kind, _groups(runs), runs)
    if data_root is not None:
        plan.sources = _match_sources(_dataset_sources(kind, data_root), runs, set(), data_root, strict=not videos)
    return plan


def custom_dataset(
    labels_file: Path, texts: Sequence[str], data_root: Path | None = None, preset: str = "custom",
    videos: Sequence[str] = (),
) -> Plan:
    """Your own videos (files or frame folders in `data_root`) and labels."""
    if not texts:
        raise InvalidInput("a custom evaluation needs the anomaly texts (--texts)")
    runs = _restrict([Run("custom", tuple(texts), load_labels(labels_file), "custom", "custom")], videos)
    plan = Plan("custom", preset, _groups(runs), runs)
    if data_root is not None:
        if not data_root.is_dir():
            raise InvalidInput(f"data root not found: {data_root}")
        plan.sources = _match_sources(_video_entries(data_root), runs, set(), data_root, strict=not videos)
    return plan
