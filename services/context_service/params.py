"""Resolved BuildContexts options: the profile's choices plus explicit overrides."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from services.common.errors import InvalidInput, echo
from services.common.presets import DatasetPreset, get_preset
from services.common.windows import strides_for

GRID_SIZE = 240  # key frames are squashed to 240x240 before windows are cut (the reference's img_size)
OUTPUT_SIZE = 224  # context images sent to the LVLM
TILE_SIZE = OUTPUT_SIZE // 2
MAX_SCALES = 8


@dataclass(frozen=True)
class ProfileChoices:
    normalize_windows: bool  # CLIP mean/std on window crops
    logit_scale: float  # temperature of the class softmax
    minmax_epsilon: float  # added to the attention map's range
    class_adaptive: bool  # softmax over the class list (else raw cosine)


PROFILES = {
    # Window crops get the normalisation CLIP was trained with; CLIP's own logit
    # scale (100) makes the class softmax a real class posterior instead of a
    # near-uniform 1/C +- 1e-4; epsilon keeps min-max finite.
    "default": ProfileChoices(normalize_windows=True, logit_scale=100.0, minmax_epsilon=1e-8, class_adaptive=True),
    # The authors' code, quirks included (METHOD.md section 4).
    "parity": ProfileChoices(normalize_windows=False, logit_scale=1.0, minmax_epsilon=0.0, class_adaptive=True),
}


class WindowFeatures(Enum):
    CROPS = "crops"  # the reference: one CLIP forward per window crop
    DENSE = "dense"  # one forward per frame, windows pooled from its patch features (not parity)


class TemporalSelection(Enum):
    MAX_WINDOW = "max_window"  # the reference: max over the 4 key-frame windows of a position
    GRID_EMBEDDING = "grid_embedding"  # the paper's description: embed each composed grid


@dataclass(frozen=True)
class ContextParams:
    preset: DatasetPreset
    window_sizes: tuple[int, ...]
    half_stride: bool
    choices: ProfileChoices
    include_attention_map: bool = False
    temporal_selection: TemporalSelection = TemporalSelection.MAX_WINDOW
    window_features: WindowFeatures = WindowFeatures.CROPS

    @property
    def window_specs(self) -> list[tuple[int, int]]:
        return strides_for(self.window_sizes, self.half_stride)


def resolve_params(
    profile: str = "default",
    preset: str = "",
    window_sizes: tuple[int, ...] = (),
    half_stride: bool = False,
    normalize_windows: bool | None = None,
    logit_scale: float | None = None,
    minmax_epsilon: float | None = None,
    class_adaptive: bool | None = None,
    include_attention_map: bool = False,
    temporal_selection: TemporalSelection = TemporalSelection.MAX_WINDOW,
    window_features: WindowFeatures = WindowFeatures.CROPS,
) -> ContextParams:
    if profile not in PROFILES:
        raise InvalidInput(f"unknown profile {echo(profile)}; use one of: {', '.join(PROFILES)}")
    base = PROFILES[profile]
    resolved_preset = get_preset(preset)
    sizes = tuple(window_sizes) or resolved_preset.window_sizes
    if len(sizes) > MAX_SCALES:
        raise InvalidInput(f"{len(sizes)} window sizes given; at most {MAX_SCALES}")
    for size in sizes:
        if not 0 < size <= GRID_SIZE:
            raise InvalidInput(
                f"window size {size} does not fit the {GRID_SIZE}x{GRID_SIZE} grid image; "
                f"use sizes between 1 and {GRID_SIZE}"
            )
    if logit_scale is not None and not 0 < logit_scale <= 1000:
        raise InvalidInput(f"attention_logit_scale must be above 0 and at most 1000 (CLIP's is 100), got "
                           f"{echo(logit_scale, 20)}")
    if minmax_epsilon is not None and not 0 <= minmax_epsilon <= 1:
        raise InvalidInput(f"minmax_epsilon must be 0..1, got {echo(minmax_epsilon, 20)}")
    choices = ProfileChoices(
        normalize_windows=base.normalize_windows if normalize_windows is None else normalize_windows,
        logit_scale=base.logit_scale if logit_scale is None else logit_scale,
        minmax_epsilon=base.minmax_epsilon if minmax_epsilon is None else minmax_epsilon,
        class_adaptive=base.class_adaptive if class_adaptive is None else class_adaptive,
    )
    return ContextParams(resolved_preset, sizes, half_stride, choices, include_attention_map, temporal_selection,
                         window_features)
