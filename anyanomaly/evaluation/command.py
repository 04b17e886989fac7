"""`anyanomaly eval`: plan the runs, get (or reuse) detections, re-fuse, score, report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from anyanomaly.evaluation import datasets
from anyanomaly.evaluation.report import ORACLE_MODE, build_report, lvlm_work, write_report
from anyanomaly.evaluation.runner import check_cached, load_plan_results, missing_results, run_detections
from anyanomaly.evaluation.scoring import RunScores, Scoring, oracle_search, score_run
from anyanomaly.launcher import EmbeddedStack, StackOptions
from anyanomaly.results import scoring_config
from anyanomaly.v1 import common_pb2, orchestrator_pb2
from services.common.enums import SCORE_MODE, WINDOW_FEATURES
from services.common.errors import InvalidInput

DATASETS = ("c-shtech", "c-avenue", "shtech", "avenue", "custom")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=DATASETS, default="custom",
                        help="c-shtech / c-avenue (per class, or --multiple), shtech / avenue (all classes, max), "
                             "or custom (your videos, labels and texts)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="videos: the authors' layout (avenue/testing/frames/NN, shanghai/testing/NN_NNNN) or, "
                             "for custom, a folder of video files / frame folders")
    parser.add_argument("--labels-root", type=Path, default=None,
                        help="c-shtech / c-avenue: the authors' ground_truth folder (c-*_labels/, c-*-multiple.json)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="shtech / avenue / custom: a label file (.h5, .npz or .json) of per-video frame arrays")
    parser.add_argument("--classes", nargs="+", default=[], help="c-*: evaluate only these classes")
    parser.add_argument("--multiple", action="store_true", help="c-*: the multiple-scenario runs")
    parser.add_argument("--videos", nargs="+", default=[], help="evaluate only these videos (by name)")
    parser.add_argument("--texts", nargs="+", default=[], help="custom: the anomaly texts")
    parser.add_argument("--preset", default="", help="custom: dataset preset for windows and classes")
    parser.add_argument("--results", type=Path, default=None,
                        help="re-score result JSONs already in this folder (<group>/<video>.json or <video>.json) "
                             "without running any model")
    parser.add_argument("--output-dir", type=Path, default=Path("eval-out"),
                        help="report.json, report.md, plots, and the cached detections (results/)")
    parser.add_argument("--address", default="", help="an orchestrator HOST:PORT (default: the embedded stack)")
    parser.add_argument("--segment-length", type=int, default=0, help="frames per segment (default 24)")
    parser.add_argument("--weights", type=float, nargs=3, default=[0.6, 0.3, 0.1],
                        metavar=("FRAME", "POSITION", "TEMPORAL"), help="fusion weights (fixed mode)")
    parser.add_argument("--sigma", type=float, default=15.0, help="Gaussian smoothing sigma (fixed mode)")
    parser.add_argument("--oracle-search", action="store_true",
                        help="the authors' search of sigma 1..29 and the weight grid ON THE TEST LABELS; reports "
                             f"say '{ORACLE_MODE}'")
    parser.add_argument("--fusion-rule", choices=("fuse_then_max", "max_then_fuse"), default=None,
                        help="several texts: fuse_then_max (default) or max_then_fuse (parity)")
    parser.add_argument("--mode", choices=SCORE_MODE.choices, default="standard",
                        help="LVLM scoring mode of the detections (standard, fast or reason_first)")
    parser.add_argument("--gate", type=float, default=None, help="the detections' CLIP gate (see detect --gate)")
    parser.add_argument("--cascade", type=float, default=None, metavar="THRESHOLD",
                        help="the detections' cascade (see detect --cascade); the report gives the LVLM calls, to "
                             "set against a run without it")
    parser.add_argument("--window-features", choices=WINDOW_FEATURES.choices, default="crops",
                        help="the detections' window features: crops (parity) or dense (see detect "
                             "--window-features); compare the two reports for its accuracy cost")
    parser.add_argument("--smoothing", choices=("per_video", "concatenated", "causal"), default=None,
                        help="per_video (default), over the concatenation of all videos (parity), or causal (what "
                             "live monitors do: no look-ahead; the report also gives per_video's AUROC, to show "
                             "what causality costs)")


def build_plan(args: argparse.Namespace) -> datasets.Plan:
    data_root = None if args.results is not None and args.data_root is None else args.data_root
    if args.dataset in ("c-shtech", "c-avenue"):
        if args.labels_root is None:
            raise InvalidInput(f"--dataset {args.dataset} needs --labels-root (the authors' ground_truth folder)")
        return datasets.c_dataset(args.dataset.removeprefix("c-"), args.labels_root, data_root, args.classes,
                                  args.multiple, args.videos)
    if args.labels is None:
        raise InvalidInput(f"--dataset {args.dataset} needs --labels (a label file)")
    if args.dataset in ("shtech", "avenue"):
        return datasets.benchmark_dataset(args.dataset, args.labels, data_root, args.videos)
    return datasets.custom_dataset(args.labels, args.texts, data_root, args.preset, args.videos)


def _profile(args: argparse.Namespace) -> str:
    return str(args.profile or "default")


def detect_options(args: argparse.Namespace) -> orchestrator_pb2.DetectOptions:
    profile = common_pb2.PROFILE_PARITY if _profile(args) == "parity" else common_pb2.PROFILE_DEFAULT
    options = orchestrator_pb2.DetectOptions(profile=profile, segment_length=args.segment_length,
                                             scoring_mode=SCORE_MODE.value(args.mode),
                                             window_features=WINDOW_FEATURES.value(args.window_features))
    if args.gate is not None:
        options.gate_threshold = args.gate
    if args.cascade is not None:
        options.cascade_threshold = args.cascade
    return options


def scoring_for(args: argparse.Namespace) -> Scoring:
    parity = _profile(args) == "parity"
    weights = tuple(args.weights)
    if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
        raise InvalidInput(f"--weights must be 3 non-negative numbers with a positive sum, got {list(weights)}")
    if args.sigma < 0:
        raise InvalidInput(f"--sigma must be zero or positive, got {args.sigma}")
    return Scoring(
        weights=(weights[0], weights[1], weights[2]),
        sigma=args.sigma,
        rule=args.fusion_rule or ("max_then_fuse" if parity else "fuse_then_max"),
        smoothing=args.smoothing or ("concatenated" if parity else "per_video"),
    )


async def run_eval(args: argparse.Namespace, stack_options: StackOptions | None) -> dict[str, Any]:
    """Everything `anyanomaly eval` does; returns the report."""
    plan = build_plan(args)
    scoring = scoring_for(args)
    options = detect_options(args)
    results_dir = args.results if args.results is not None else args.output_dir / "results"
    check_cached(plan, results_dir, options, _profile(args))
    todo = missing_results(plan, results_dir)
    if todo and args.results is not None:
        _group, video = todo[0]
        raise InvalidInput(f"no result for video {video} under {results_dir} ({len(todo)} missing); "
                           "run the evaluation with --data-root to detect them")
    if todo:
        stack = None
        address = args.address
        if not address:
            assert stack_options is not None
            stack = EmbeddedStack(stack_options)
            await stack.start()
            address = stack.orchestrator_address
        try:
            await run_detections(plan, results_dir, address, options, args.quiet)
        finally:
            if stack is not None:
                await stack.stop()
    results = load_plan_results(plan, results_dir, options, _profile(args))
    evaluate = oracle_search if args.oracle_search else score_run
    scores: list[RunScores] = [evaluate(run, results[run.group], scoring) for run in plan.runs]
    report = build_report(plan, scores, {
        "profile": _profile(args), "fusion_rule": scoring.rule, "smoothing": scoring.smoothing,
        "weights": list(scoring.weights), "sigma": scoring.sigma, "segment_length": args.segment_length or 24,
        "results": str(results_dir), "scoring": scoring_config(options),
    }, lvlm_work(results))
    write_report(args.output_dir, report, scores)
    return report
