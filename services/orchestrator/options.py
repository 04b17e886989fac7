"""DetectOptions -> DetectParams: defaults, the profile's choices, validation."""

from __future__ import annotations

from typing import Any

from anyanomaly.v1 import common_pb2, context_pb2, lvlm_pb2, orchestrator_pb2
from services.common.enums import (
    KEY_FRAME_STRATEGY,
    MULTI_TEXT_FUSION,
    PROFILE,
    SCORE_MODE,
    SCORE_PARSER,
    TAIL_POLICY,
    TEMPORAL_SELECTION,
    WINDOW_FEATURES,
)
from services.common.errors import InvalidInput, echo
from services.common.fusion import DEFAULT_SIGMA, DEFAULT_WEIGHTS
from services.common.presets import get_preset
from services.common.validation import validate_max_tokens
from services.orchestrator.pipeline import MIN_SEGMENT_FRAMES, DetectParams

DEFAULT_SEGMENT_LENGTH = 24
MAX_SEGMENT_LENGTH = 1024
MAX_SIGMA = 1000.0  # frames; 40 s at 25 fps
MAX_WEIGHT = 100.0


def resolve(
    options: orchestrator_pb2.DetectOptions, max_in_flight: int, default_profile: str = "default"
) -> DetectParams:
    profile = PROFILE.name(options.profile, default_profile)
    preset = get_preset(options.preset).name
    length = options.segment_length or DEFAULT_SEGMENT_LENGTH
    if not MIN_SEGMENT_FRAMES <= length <= MAX_SEGMENT_LENGTH:
        raise InvalidInput(f"segment_length {length} is out of range; use {MIN_SEGMENT_FRAMES}..{MAX_SEGMENT_LENGTH} "
                           f"(the paper uses {DEFAULT_SEGMENT_LENGTH})", field="options.segment_length")
    weights = tuple(options.fusion_weights) or DEFAULT_WEIGHTS
    if len(weights) != 3 or not all(0 <= w <= MAX_WEIGHT for w in weights) or sum(weights) <= 0:
        raise InvalidInput(f"fusion_weights must be 3 numbers from 0 to {MAX_WEIGHT} (frame, position, temporal) "
                           f"with a positive sum, got {[echo(w, 20) for w in weights[:4]]}",
                           field="options.fusion_weights")
    sigma = options.sigma if options.HasField("sigma") else DEFAULT_SIGMA
    if not 0 <= sigma <= MAX_SIGMA:  # also refuses NaN; the filter's work and memory grow with sigma
        raise InvalidInput(f"sigma must be 0 (no smoothing) to {MAX_SIGMA} frames, got {echo(sigma, 20)}",
                           field="options.sigma")
    parity = profile == "parity"
    tail = TAIL_POLICY.name(options.tail_policy, "drop" if parity else "score")
    fusion_rule = MULTI_TEXT_FUSION.name(options.multi_text_fusion, "max_then_fuse" if parity else "fuse_then_max")
    KEY_FRAME_STRATEGY.name(options.strategy, "clip_then_grouping")  # refuses an unknown value
    in_flight = options.max_segments_in_flight or max_in_flight
    if not 1 <= in_flight <= max(max_in_flight, 1):
        raise InvalidInput(f"max_segments_in_flight must be 1..{max_in_flight}, got {in_flight}",
                           field="options.max_segments_in_flight")
    context, scoring = internal_options(options, PROFILE.value(profile), preset)
    if options.HasField("reason_threshold") and not 0 <= options.reason_threshold <= 1:
        raise InvalidInput(f"reason_threshold is a fused score, 0..1; got {echo(options.reason_threshold, 20)}",
                           field="options.reason_threshold")
    if options.HasField("gate_threshold") and not -1 <= options.gate_threshold <= 1:
        raise InvalidInput(f"gate_threshold is a cosine similarity, -1..1; got {echo(options.gate_threshold, 20)}",
                           field="options.gate_threshold")
    if options.HasField("cascade_threshold") and not 0 <= options.cascade_threshold <= 1:
        raise InvalidInput(f"cascade_threshold is a screening score, 0..1; got {echo(options.cascade_threshold, 20)}",
                           field="options.cascade_threshold")
    validate_max_tokens(scoring.max_tokens, "advanced.scoring.max_tokens")
    if scoring.multi_text and scoring.mode == lvlm_pb2.SCORE_MODE_FAST:
        raise InvalidInput("the fast mode reads one score per call from token probabilities; use multi_text with "
                           "the standard or reason_first mode")
    if options.HasField("cascade_threshold") and scoring.multi_text:
        raise InvalidInput("the cascade screens texts one by one, while multi_text scores all texts in three shared "
                           "calls (fewer than the screening itself); use one or the other")
    if options.HasField("reason_threshold") and scoring.mode != lvlm_pb2.SCORE_MODE_FAST:
        raise InvalidInput("reason_threshold applies to the fast scoring mode (scoring_mode = SCORE_MODE_FAST), "
                           "whose scores come without reasons")
    return DetectParams(
        profile=profile, segment_length=length, weights=(weights[0], weights[1], weights[2]), sigma=sigma,
        tail_policy=tail, multi_text_fusion=fusion_rule,
        strategy=options.strategy or common_pb2.KEY_FRAME_STRATEGY_CLIP_THEN_GROUPING,
        max_in_flight=in_flight, context_options=context, score_options=scoring,
        multi_text=scoring.multi_text,
        reason_threshold=options.reason_threshold if options.HasField("reason_threshold") else None,
        gate_threshold=options.gate_threshold if options.HasField("gate_threshold") else None,
        cascade_threshold=options.cascade_threshold if options.HasField("cascade_threshold") else None,
        keep_images=options.include_images,
    )


def _one_place(name: str, public: Any, internal: Any, default: Any) -> Any:
    """A setting given at the top of DetectOptions, or (older clients) in the nested options:
    the value, refusing two different ones."""
    if public != default and internal != default and public != internal:
        raise InvalidInput(f"{name} is set twice with different values; set it once, as DetectOptions.{name}")
    return public if public != default else internal


def internal_options(options: orchestrator_pb2.DetectOptions, profile: common_pb2.Profile.ValueType, preset: str
                     ) -> tuple[context_pb2.ContextOptions, lvlm_pb2.ScoreOptions]:
    """The options context_service and lvlm_service get: `advanced` (or the deprecated fields it
    replaces) with the detection's own settings filled in; every enum checked here, before any
    frame is decoded."""
    context, scoring = context_pb2.ContextOptions(), lvlm_pb2.ScoreOptions()
    context.CopyFrom(options.advanced.context if options.advanced.HasField("context") else options.context)
    scoring.CopyFrom(options.advanced.scoring if options.advanced.HasField("scoring") else options.scoring)
    context.half_stride = _one_place("half_stride", options.half_stride, context.half_stride, False)
    context.temporal_selection = _one_place("temporal_selection", options.temporal_selection,
                                            context.temporal_selection, 0)
    context.window_features = _one_place("window_features", options.window_features, context.window_features, 0)
    scoring.mode = _one_place("scoring_mode", options.scoring_mode, scoring.mode, 0)
    scoring.multi_text = _one_place("multi_text", options.multi_text, scoring.multi_text, False)
    for nested in (context, scoring):
        nested.profile = _one_place("profile", profile, nested.profile, 0)
        nested.preset = _one_place("preset", preset, nested.preset, "")
    TEMPORAL_SELECTION.name(context.temporal_selection, "")
    WINDOW_FEATURES.name(context.window_features, "")
    SCORE_MODE.name(scoring.mode, "")
    SCORE_PARSER.name(scoring.parser, "")
    return context, scoring
