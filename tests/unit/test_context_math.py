"""Position and temporal context building blocks (METHOD.md sections 4-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from services.common.windows import layout_grids, strides_for
from services.context_service.grid import compose_grid, locate, select_position
from services.context_service.resize import resize_bilinear
from services.context_service.winclip import attention_map, class_list, minmax, position_context


@pytest.mark.parametrize(
    ("shape", "out"),
    [((5, 5), (224, 224)), ((3, 3), (224, 224)), ((2, 2), (224, 224)), ((48, 48, 3), (224, 224)),
     ((224, 224, 3), (112, 112)), ((7, 13), (31, 5))],
)
def test_resize_matches_torch_bilinear(shape: tuple[int, ...], out: tuple[int, int]) -> None:
    data = np.random.default_rng(1).random(shape, dtype=np.float32)
    tensor = torch.from_numpy(data if data.ndim == 3 else data[..., None]).permute(2, 0, 1)[None]
    expected = F.interpolate(tensor, size=out, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    got = resize_bilinear(data, *out)
    np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=1e-5)


def test_one_by_one_map_upsamples_to_an_exact_constant() -> None:
    assert np.unique(resize_bilinear(np.array([[0.3]], np.float32), 224, 224)).size == 1


def test_minmax_guard_turns_a_constant_map_into_ones_not_nan() -> None:
    mask = minmax(np.full((224, 224), 0.2, np.float32), epsilon=0.0)
    assert not np.isnan(mask).any()
    assert (mask == 1).all()


def test_minmax_spans_zero_to_one_and_epsilon_shrinks_the_top() -> None:
    data = np.linspace(0.1, 0.3, 224 * 224, dtype=np.float32).reshape(224, 224)
    exact = minmax(data, 0.0)
    assert exact.min() == 0 and exact.max() == pytest.approx(1.0)
    assert minmax(data, 0.2).max() == pytest.approx(0.5, rel=1e-3)


def test_position_context_truncates_like_astype_uint8() -> None:
    frame = np.full((224, 224, 3), 200, np.uint8)
    mask = np.full((224, 224), 0.9999, np.float32)
    assert (position_context(frame, mask) == 199).all()  # 199.98 truncates, not rounds


def test_class_list_appends_missing_texts_once() -> None:
    assert class_list(("car", "bicycle"), (), ["bicycle", "stroller", "stroller"]) == ["car", "bicycle", "stroller"]
    assert class_list(("car",), ("dog",), ["cat"]) == ["dog", "cat"]


def unit_rows(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray:
    rows = rng.normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_attention_map_highlights_the_window_that_matches_the_class() -> None:
    rng = np.random.default_rng(0)
    grids = layout_grids(strides_for((48, 80, 120), False), 240, 240)
    classes = unit_rows(rng, 3)
    windows = np.tile(classes[0], (sum(g.count for g in grids), 1))  # every window shows class 0 ...
    windows[12] = classes[1]  # ... except the centre window of the 5x5 scale
    score_map = attention_map(windows, grids, classes, 1, logit_scale=100.0, class_adaptive=True)
    assert score_map.shape == (224, 224)
    peak = np.unravel_index(np.argmax(score_map), score_map.shape)
    assert abs(peak[0] - 112) < 30 and abs(peak[1] - 112) < 30


def test_parity_softmax_without_logit_scale_is_near_uniform() -> None:
    rng = np.random.default_rng(0)
    grids = layout_grids([(48, 48)], 240, 240)
    classes, windows = unit_rows(rng, 11), unit_rows(rng, 25)
    score_map = attention_map(windows, grids, classes, 0, logit_scale=1.0, class_adaptive=True)
    assert abs(float(score_map.mean()) - 1 / 11) < 0.02  # 1/C +- small


def test_select_position_takes_max_over_frames_then_first_argmax() -> None:
    text = np.array([1.0, 0.0], np.float32)
    windows = np.zeros((4, 3, 2), np.float32)
    windows[2, 1] = [0.9, 0.1]  # only key frame 2 matches at position 1
    windows[0, 2] = [0.9, 0.1]  # and key frame 0 equally at position 2 -> tie -> first
    candidate, score = select_position(windows, text)
    assert candidate == 1 and score == pytest.approx(0.9)


def test_grid_tile_order_is_k0_tl_k1_tr_k2_bl_k3_br() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    frames = [np.full((240, 240, 3), c, np.uint8) for c in colours]
    grids = layout_grids(strides_for((48, 80, 120), False), 240, 240)
    grid, index = locate(grids, 34 + 3)  # the large scale, bottom-right window
    assert (grid.size, index) == (120, 3)
    mosaic = compose_grid(frames, grid, index)
    assert mosaic.shape == (224, 224, 3)
    assert tuple(mosaic[50, 50]) == colours[0]
    assert tuple(mosaic[50, 170]) == colours[1]
    assert tuple(mosaic[170, 50]) == colours[2]
    assert tuple(mosaic[170, 170]) == colours[3]


def test_grid_crops_the_chosen_window() -> None:
    frame = np.zeros((240, 240, 3), np.uint8)
    frame[0:48, 48:96] = 255  # small-scale window 1 (row 0, col 1) is white
    grids = layout_grids(strides_for((48,), False), 240, 240)
    white = compose_grid([frame] * 4, grids[0], 1)
    black = compose_grid([frame] * 4, grids[0], 0)
    assert white.min() == 255 and black.max() == 0
