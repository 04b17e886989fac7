"""Every difference between the parity and default profiles is a named option with the
reference's value under parity and the production value by default (README table)."""

from __future__ import annotations

import tomllib

import pytest

from anyanomaly.v1 import common_pb2, lvlm_pb2, orchestrator_pb2
from services.clip_service.engine import TextEncoding
from services.clip_service.ksm import Strategy
from services.clip_service.preprocess import Mode as Preprocess
from services.common.enums import (
    CONTEXT_KIND,
    KEY_FRAME_STRATEGY,
    PREPROCESS,
    PROFILE,
    SCORE_MODE,
    SCORE_PARSER,
    TAIL_POLICY,
    TEMPORAL_SELECTION,
    TEXT_ENCODING,
)
from services.common.errors import InvalidInput
from services.context_service.params import TemporalSelection, resolve_params
from services.lvlm_service.engine import Parser, ScoreParams
from services.lvlm_service.prompts import Kind, Mode
from services.orchestrator.options import resolve
from tests.helpers.fixtures import REPO_ROOT


def test_context_choices_per_profile_and_overrides() -> None:
    parity, default = resolve_params("parity").choices, resolve_params("default").choices
    assert (parity.normalize_windows, parity.logit_scale, parity.minmax_epsilon) == (False, 1.0, 0.0)
    assert (default.normalize_windows, default.logit_scale, default.minmax_epsilon) == (True, 100.0, 1e-8)
    assert parity.class_adaptive and default.class_adaptive
    mixed = resolve_params("parity", normalize_windows=True, logit_scale=50.0).choices
    assert (mixed.normalize_windows, mixed.logit_scale, mixed.minmax_epsilon) == (True, 50.0, 0.0)
    assert resolve_params("parity", preset="avenue").window_sizes == (48, 80, 240)


def test_lvlm_choices_per_profile_and_overrides() -> None:
    parity, default = ScoreParams(profile="parity", preset="shtech"), ScoreParams(preset="shtech")
    assert (parity.effective_parser, parity.retries, parity.style().output_label) == (
        Parser.FIRST_NUMBER, False, "Response")
    assert parity.style().reproduce_tc_typo and not default.style().reproduce_tc_typo
    assert ScoreParams(profile="parity", preset="avenue").style().output_label == "Output"
    assert (default.effective_parser, default.retries, default.style().output_label) == (
        Parser.ROBUST, True, "Output")
    assert ScoreParams(profile="parity", parser=Parser.ROBUST, retry_unparsed=True).retries


def test_detect_choices_per_profile() -> None:
    parity = resolve(orchestrator_pb2.DetectOptions(profile=common_pb2.PROFILE_PARITY), 2)
    default = resolve(orchestrator_pb2.DetectOptions(), 2)
    assert (parity.tail_policy, parity.multi_text_fusion) == ("drop", "max_then_fuse")
    assert (default.tail_policy, default.multi_text_fusion) == ("score", "fuse_then_max")
    assert parity.context_options.profile == parity.score_options.profile == common_pb2.PROFILE_PARITY
    assert default.context_options.preset == default.score_options.preset == "shtech"
    # The service's own --profile decides for requests that name none.
    assert resolve(orchestrator_pb2.DetectOptions(), 2, "parity").tail_policy == "drop"


def test_contract_enums_map_both_ways_and_refuse_unknown_values() -> None:
    assert PROFILE.name(common_pb2.PROFILE_UNSPECIFIED, "parity") == "parity"
    assert PROFILE.name(common_pb2.PROFILE_PARITY, "default") == "parity"
    with pytest.raises(InvalidInput, match="unknown Profile value 9; use one of default, parity"):
        PROFILE.name(9, "default")
    assert TAIL_POLICY.value("drop") == orchestrator_pb2.TAIL_POLICY_DROP
    assert KEY_FRAME_STRATEGY.member(common_pb2.KEY_FRAME_STRATEGY_CLIP_TOP4, Strategy,
                                     Strategy.CLIP_THEN_GROUPING) is Strategy.CLIP_TOP4
    assert KEY_FRAME_STRATEGY.member(0, Strategy, Strategy.CLIP_THEN_GROUPING) is Strategy.CLIP_THEN_GROUPING
    # Every service enum that mirrors a contract enum uses its names as values.
    for contract, service in ((KEY_FRAME_STRATEGY, Strategy), (SCORE_MODE, Mode), (CONTEXT_KIND, Kind),
                              (SCORE_PARSER, Parser), (TEXT_ENCODING, TextEncoding), (PREPROCESS, Preprocess),
                              (TEMPORAL_SELECTION, TemporalSelection)):
        assert set(contract.choices) == {member.value for member in service}, contract.what


def test_every_python_package_is_packaged() -> None:
    """A service image built with `pip install .[extra]` (not editable) must get every module:
    each folder of modules is a package (has __init__.py), so the package search finds it."""
    import setuptools  # type: ignore[import-untyped]

    include = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    declared = set(setuptools.find_packages(str(REPO_ROOT), include=include["include"]))
    found = {".".join(module.parent.relative_to(REPO_ROOT).parts)
             for top in ("anyanomaly", "services") for module in (REPO_ROOT / top).rglob("*.py")
             if "__pycache__" not in module.parts}
    assert found == declared and {"anyanomaly.v1", "anyanomaly.cli", "services.common"} <= declared


def test_option_combinations_that_cannot_work_are_refused() -> None:
    fast_multi = orchestrator_pb2.DetectOptions(multi_text=True)
    fast_multi.scoring.mode = lvlm_pb2.SCORE_MODE_FAST
    with pytest.raises(InvalidInput, match="fast mode reads one score per call"):
        resolve(fast_multi, 2)
    with pytest.raises(InvalidInput, match="reason_threshold applies to the fast scoring mode"):
        resolve(orchestrator_pb2.DetectOptions(reason_threshold=0.5), 2)
    multi = resolve(orchestrator_pb2.DetectOptions(multi_text=True), 2)
    assert multi.multi_text and multi.score_options.multi_text
