"""Dense window features: pooling geometry, the last block's value path, and the engine's
dense EmbedImages path, with the tiny random-weight CLIP (real open_clip)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import cv2
import numpy as np
import pytest
import pytest_asyncio
import torch

from services.clip_service.config import ClipSettings
from services.clip_service.dense import pool_windows, pooling_weights
from services.clip_service.engine import ClipEngine
from services.clip_service.model import load_clip
from services.clip_service.preprocess import Mode
from services.common.errors import InvalidInput
from services.common.images import encode_png
from services.common.windows import layout_grids


def test_windows_on_patch_boundaries_take_exactly_their_patch() -> None:
    grids = layout_grids([(32, 32)], 224, 224)  # 7 x 7 windows, one per ViT-B-32 patch
    np.testing.assert_allclose(pooling_weights(grids, 224, 224, 7), np.eye(49), atol=1e-7)


def test_a_window_takes_the_patches_it_covers_by_area() -> None:
    grids = layout_grids([(48, 48), (240, 240)], 240, 240)
    weights = pooling_weights(grids, 240, 240, 7).reshape(-1, 7, 7)
    np.testing.assert_allclose(weights.sum(axis=(1, 2)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(weights[-1], 1 / 49, rtol=1e-5)  # the whole image: every patch alike
    # Window (0, 0) spans 0..48 of 240 pixels; patches are 240/7 = 34.29 wide: 34.29 + 13.71.
    first = weights[0]
    assert np.count_nonzero(first) == 4
    patch = 240 / 7
    share = np.array([patch, 48 - patch]) / 48
    np.testing.assert_allclose(first[:2, :2], np.outer(share, share), rtol=1e-5)


def test_pooled_features_are_normalised_area_means() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 7, 7, 16)).astype(np.float32)
    grids = layout_grids([(48, 48)], 240, 240)
    weights = pooling_weights(grids, 240, 240, 7)
    pooled = pool_windows(features, weights)
    assert pooled.shape == (2, 25, 16)
    expected = weights[7] @ features[1].reshape(49, 16)
    np.testing.assert_allclose(pooled[1, 7], expected / np.linalg.norm(expected), rtol=1e-5)


def test_dense_features_are_the_last_blocks_value_path() -> None:
    """Rebuilt with open_clip's own attention module: a mask that lets each token attend only to
    itself turns the attention output into out_proj(value); no residual, no MLP."""
    model = load_clip(ClipSettings(models="tiny", device="cpu"))
    batch = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    dense = model.encode_dense(batch)
    assert dense.shape == (2, 7, 7, 64)
    visual = model._model.visual
    with torch.no_grad():
        assert visual.transformer.batch_first
        x = visual._embeds(batch)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        last = visual.transformer.resblocks[-1]
        tokens = last.ln_1(x)
        only_itself = torch.full((50, 50), float("-inf")).fill_diagonal_(0)
        attended = last.attn(tokens, tokens, tokens, need_weights=False, attn_mask=only_itself)[0]
        expected = (visual.ln_post(attended)[:, 1:] @ visual.proj).reshape(2, 7, 7, -1)
    np.testing.assert_allclose(dense, expected.numpy(), atol=1e-5)
    # Not the full block's output: that one mixes every token in.
    full = visual.ln_post(visual.transformer(visual._embeds(batch)))[:, 1:] @ visual.proj
    assert not np.allclose(dense.reshape(2, 49, -1), full.detach().numpy(), atol=1e-3)


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[ClipEngine]:
    engine = ClipEngine(ClipSettings(models="tiny", device="cpu"))
    await engine.load()
    yield engine
    await engine.close()


async def test_the_engine_pools_one_forward_per_frame_in_window_order(
    engine: ClipEngine, avenue21_frames: list[np.ndarray]
) -> None:
    frames = [cv2.resize(f, (224, 224), interpolation=cv2.INTER_LINEAR) for f in avenue21_frames[:3]]
    before = engine.model.images_encoded
    result = await engine.embed_images([encode_png(f) for f in frames], Mode.SQUASH, [(32, 32)], dense=True)
    assert engine.model.images_encoded - before == 3
    assert result.embeddings.shape == (3, 49, 64)
    # Windows on the patch grid: window i (row-major) is patch i of the frame's dense features.
    pixels = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in frames])
    patches = engine.model.encode_dense(pixels).reshape(3, 49, -1)
    np.testing.assert_allclose(result.embeddings, patches / np.linalg.norm(patches, axis=-1, keepdims=True),
                               atol=1e-5)


async def test_dense_needs_windows_and_squashed_images(engine: ClipEngine, avenue21_pngs: list[bytes]) -> None:
    with pytest.raises(InvalidInput, match="give the window grids"):
        await engine.embed_images(avenue21_pngs[:2], Mode.SQUASH, [], dense=True)
    with pytest.raises(InvalidInput, match="not centre-cropped"):
        await engine.embed_images(avenue21_pngs[:2], Mode.CENTER_CROP, [(48, 48)], dense=True)
