"""Getting a detection result for every (group, video) of a plan: reuse a cached result
JSON when there is one (it must match the configuration), else run Orchestrator.Detect
and cache the result under `<results dir>/<group>/<video>.json`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm import tqdm

from anyanomaly.evaluation.datasets import Plan
from anyanomaly.evaluation.results import ResultConfig, VideoResult, check_config, load_result, result_path
from anyanomaly.results import detect_document, scoring_config
from anyanomaly.v1 import orchestrator_pb2
from services.common.errors import InvalidInput


def missing_results(plan: Plan, results_dir: Path) -> list[tuple[str, str]]:
    """(group, video) pairs without a cached result."""
    return [(g.name, v) for g in plan.groups for v in g.videos
            if not result_path(results_dir, g.name, v).exists()]


def expected_config(plan: Plan, group: str, options: orchestrator_pb2.DetectOptions, profile: str) -> ResultConfig:
    texts = next(g.texts for g in plan.groups if g.name == group)
    return ResultConfig(options.segment_length or 24, texts, profile, plan.preset, scoring_config(options))


async def run_detections(
    plan: Plan, results_dir: Path, address: str, options: orchestrator_pb2.DetectOptions, quiet: bool = False
) -> None:
    """Detect every (group, video) that has no cached result yet."""
    todo = missing_results(plan, results_dir)
    for group_name, video in tqdm(todo, desc="videos", unit="video", disable=quiet or not todo):
        if video not in plan.sources:
            raise InvalidInput(f"no result for video {video} in {results_dir / group_name} and no --data-root "
                               "to run the detection")
        group = next(g for g in plan.groups if g.name == group_name)
        source = plan.sources[video]
        request = orchestrator_pb2.DetectRequest(
            source=orchestrator_pb2.VideoSource(**({"frame_folder": str(source)} if source.is_dir()
                                                   else {"path": str(source)})),
            texts=list(group.texts), options=options,
        )
        request.options.preset = plan.preset
        request.options.keep_hyphenated_texts = True  # the plan's texts are already split
        document = await detect_document(address, request, None if quiet else video, leave=False)
        path = results_dir / group_name / f"{video}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
        os.replace(partial, path)  # a cancelled run never leaves a half-written result


def check_cached(plan: Plan, results_dir: Path, options: orchestrator_pb2.DetectOptions, profile: str) -> None:
    """Refuse cached results of another configuration before any detection runs (not after hours
    of detecting the missing ones)."""
    for group in plan.groups:
        config = expected_config(plan, group.name, options, profile)
        for video in group.videos:
            path = result_path(results_dir, group.name, video)
            if path.exists():
                check_config(load_result(path), config)


def load_plan_results(plan: Plan, results_dir: Path, options: orchestrator_pb2.DetectOptions, profile: str
                      ) -> dict[str, dict[str, VideoResult]]:
    """{group: {video: result}}, each checked against the configuration."""
    loaded: dict[str, dict[str, VideoResult]] = {}
    for group in plan.groups:
        config = expected_config(plan, group.name, options, profile)
        loaded[group.name] = {}
        for video in group.videos:
            result = load_result(result_path(results_dir, group.name, video))
            check_config(result, config)
            loaded[group.name][video] = result
    return loaded
