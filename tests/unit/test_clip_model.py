"""clip_service's model code paths with the tiny random-weight CLIP (real open_clip)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from services.clip_service.config import ClipSettings
from services.clip_service.engine import ClipEngine, TextEncoding
from services.clip_service.model import TINY_MODEL_NAME, load_clip, register_tiny_config
from services.clip_service.preprocess import Mode, Preprocessor
from services.clip_service.templates import fill_templates
from services.common.errors import InvalidInput, ModelLoadError
from services.common.images import encode_png
from services.common.windows import layout_grids, strides_for


@pytest.fixture(scope="module")
def tiny_settings() -> ClipSettings:
    return ClipSettings(models="tiny", device="cpu")


async def loaded_engine(settings: ClipSettings) -> ClipEngine:
    engine = ClipEngine(settings)
    await engine.load()
    return engine


def test_tiny_profile_is_random_and_says_so(tiny_settings: ClipSettings) -> None:
    model = load_clip(tiny_settings)
    assert model.info.random_weights and model.info.name == TINY_MODEL_NAME
    assert (model.info.embed_dim, model.info.image_size, model.info.device) == (64, 224, "cpu")


async def test_text_embeddings_are_normalised_cached_and_template_ensembled(tiny_settings: ClipSettings) -> None:
    engine = await loaded_engine(tiny_settings)
    raw = await engine.embed_texts(["bicycle", "hand_truck"], TextEncoding.RAW)
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), 1.0, rtol=1e-5)
    encoded = engine.model.texts_encoded
    again = await engine.embed_texts(["hand_truck"], TextEncoding.RAW)
    assert engine.model.texts_encoded == encoded  # served from the cache
    np.testing.assert_array_equal(again[0], raw[1])

    ensemble = await engine.embed_texts(["bicycle"], TextEncoding.TEMPLATE_ENSEMBLE)
    features = engine.model.encode_texts(fill_templates("bicycle"))  # 21 un-normalised rows
    expected = features.mean(axis=0) / np.linalg.norm(features.mean(axis=0))
    np.testing.assert_allclose(ensemble[0], expected, atol=1e-6)
    assert not np.allclose(ensemble[0], raw[0], atol=1e-3)
    await engine.close()


async def test_text_validation(tiny_settings: ClipSettings) -> None:
    engine = await loaded_engine(tiny_settings)
    with pytest.raises(InvalidInput, match="no texts"):
        await engine.embed_texts([], TextEncoding.RAW)
    with pytest.raises(InvalidInput, match=r"texts\[1\] is empty"):
        await engine.embed_texts(["car", "  "], TextEncoding.RAW)
    with pytest.raises(InvalidInput, match="301 characters; the limit is 300"):
        await engine.embed_texts(["x" * 301], TextEncoding.RAW)
    await engine.close()


def test_center_crop_matches_open_clip_preprocessing() -> None:
    register_tiny_config()
    _, _, reference = open_clip.create_model_and_transforms(TINY_MODEL_NAME, pretrained=None)
    frame = np.random.default_rng(0).integers(0, 255, (360, 640, 3), dtype=np.uint8)
    ours = Preprocessor(224, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    np.testing.assert_allclose(ours.image(frame, Mode.CENTER_CROP), reference(Image.fromarray(frame)), atol=1e-6)


def test_window_crops_match_the_reference_unfold_path() -> None:
    """The authors' path: /255, F.unfold, bilinear to 224, no mean/std (SQUASH)."""
    squashed = np.random.default_rng(1).integers(0, 255, (240, 240, 3), dtype=np.uint8)
    tensor = torch.tensor(squashed.astype("float32") / 255).permute(2, 0, 1).unsqueeze(0)
    expected = []
    for size in (48, 80, 120):
        patches = F.unfold(tensor, kernel_size=(size, size), stride=(size, size))
        patches = patches.permute(0, 2, 1).reshape(-1, 3, size, size)
        expected.append(F.interpolate(patches, size=(224, 224), mode="bilinear"))
    grids = layout_grids(strides_for((48, 80, 120), False), 240, 240)
    ours = Preprocessor(224, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    crops, reference = ours.windows(squashed, grids, Mode.SQUASH), torch.cat(expected)
    assert [tuple(c.pixels.shape) for c in crops[:1] + crops[-1:]] == [(3, 48, 48), (3, 120, 120)]  # not resized yet
    assert torch.equal(ours.batch(crops), reference)
    # A batch mixes requests' rows, whole images and windows of every size: each keeps its place.
    whole = ours.image(squashed, Mode.CENTER_CROP)
    mixed = ours.batch([crops[37], whole, crops[0], crops[30]])
    assert torch.equal(mixed, torch.stack([reference[37], whole, reference[0], reference[30]]))
    normalized = ours.batch(ours.windows(squashed, grids, Mode.SQUASH_NORMALIZED))
    assert not torch.allclose(normalized, reference)


async def test_select_key_frames_uses_one_image_pass_for_all_texts(tiny_settings: ClipSettings) -> None:
    engine = await loaded_engine(tiny_settings)
    rng = np.random.default_rng(2)
    frames = [encode_png(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)) for _ in range(24)]
    before = engine.model.images_encoded
    result = await engine.select_key_frames(frames, ["running", "bicycle", "car"], joint=True)
    assert engine.model.images_encoded - before == 24
    for selection in [*result.selections, result.joint]:
        assert selection is not None
        best = int(np.argmax(selection.similarities))
        assert selection.representative == best
        assert selection.key_frames == tuple(best % 6 + 6 * j for j in range(4))
    stacked = np.stack([s.similarities for s in result.selections])
    assert result.joint is not None and result.joint.text == ""
    np.testing.assert_allclose(result.joint.similarities, stacked.max(axis=0))  # each frame's best text
    assert result.best_similarity == pytest.approx(float(stacked.max()))
    await engine.close()


def test_local_weights_file_is_loaded(tmp_path: Path, tiny_settings: ClipSettings) -> None:
    tiny = load_clip(tiny_settings)
    path = tmp_path / "clip.pt"
    torch.save(tiny._model.state_dict(), path)
    loaded = load_clip(ClipSettings(models="default", model_name=TINY_MODEL_NAME, weights=str(path), device="cpu"))
    assert not loaded.info.random_weights and loaded.info.weights == str(path)
    np.testing.assert_allclose(loaded.encode_texts(["car"]), tiny.encode_texts(["car"]), atol=1e-6)


def test_missing_weights_fail_with_one_message_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="ANYANOMALY_CLIP_WEIGHTS") as caught:
        load_clip(ClipSettings(models="default", offline=True, cache_dir=str(tmp_path), device="cpu"))
    assert "--models tiny" in str(caught.value)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_clip(ClipSettings(models="default", weights=str(tmp_path / "nope.pt"), device="cpu"))


def test_bf16_precision_is_a_near_copy_of_fp32_and_fp16_needs_cuda(tiny_settings: ClipSettings) -> None:
    images = torch.rand(6, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    fp32 = load_clip(tiny_settings)
    bf16 = load_clip(ClipSettings(**{**vars(tiny_settings), "precision": "bf16"}))
    assert (fp32.info.dtype, bf16.info.dtype) == ("float32", "bfloat16")
    cosines = (fp32.encode_images(images) * bf16.encode_images(images)).sum(axis=1)
    assert 0.99 < cosines.min() < 1.0  # close, but not the same numbers: not the parity precision
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="--precision fp16 needs CUDA"):
            load_clip(ClipSettings(**{**vars(tiny_settings), "precision": "fp16"}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_window_crops_batched_on_cuda_equal_the_cpu_ones() -> None:
    """The model's device is "cuda", its tensors land on "cuda:0": normalisation must still work."""
    squashed = np.random.default_rng(4).integers(0, 255, (240, 240, 3), dtype=np.uint8)
    grids = layout_grids(strides_for((48, 80, 120), False), 240, 240)
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    for mode in (Mode.SQUASH, Mode.SQUASH_NORMALIZED):
        cpu = Preprocessor(224, mean, std).batch(Preprocessor.windows(squashed, grids, mode))
        cuda = Preprocessor(224, mean, std, "cuda").batch(Preprocessor.windows(squashed, grids, mode))
        torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-5, rtol=0)


async def test_requests_take_turns_on_the_preprocessing_threads(tiny_settings: ClipSettings) -> None:
    """A large request does not hold up a small one that comes just after it."""
    engine = await loaded_engine(ClipSettings(**{**vars(tiny_settings), "preprocess_threads": 1}))
    rng = np.random.default_rng(5)
    frames = [encode_png(rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)) for _ in range(4)]
    finished: list[str] = []
    start = threading.Barrier(2)

    def prepare(name: str, images: list[bytes]) -> None:
        start.wait()
        engine._prepare_images(images, Mode.CENTER_CROP)
        finished.append(name)

    large = threading.Thread(target=prepare, args=("large", frames * 30))
    small = threading.Thread(target=prepare, args=("small", frames))
    large.start()
    small.start()
    large.join()
    small.join()
    await engine.close()
    assert finished == ["small", "large"]
