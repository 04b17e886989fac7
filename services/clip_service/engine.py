"""clip_service logic without gRPC: validation, text cache, batching, key frames."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

import numpy as np
import torch

from services.clip_service.config import ClipSettings
from services.clip_service.dense import pool_windows, pooling_weights
from services.clip_service.ksm import MIN_FRAMES, Strategy, select_key_frames
from services.clip_service.model import ClipInfo, ClipModel, load_clip
from services.clip_service.preprocess import Mode, Preprocessor, Row, WindowCrop
from services.clip_service.templates import WINCLIP_TEMPLATES, fill_templates
from services.common.batching import MicroBatcher
from services.common.errors import InvalidInput, NotReady
from services.common.images import check_pixel_budget, decode_image, header_size
from services.common.validation import validate_texts
from services.common.windows import WindowGrid, layout_grids

log = logging.getLogger("anyanomaly.clip")
T = TypeVar("T")


class TextEncoding(Enum):
    RAW = "raw"
    TEMPLATE_ENSEMBLE = "template_ensemble"


@dataclass(frozen=True)
class ImageEmbeddings:
    embeddings: np.ndarray  # (num_images, D), or (num_images, num_windows, D) with windows
    grids: list[WindowGrid]


@dataclass(frozen=True)
class Selection:
    text: str
    representative: int
    key_frames: tuple[int, int, int, int]
    similarities: np.ndarray  # (N,)


@dataclass(frozen=True)
class KeyFrameResult:
    selections: list[Selection]  # one per text
    joint: Selection | None  # all texts together (text ""), when asked for
    best_similarity: float  # the highest frame-text cosine of the segment


def _normalize_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return (features / norms).astype(np.float32)


class ClipEngine:
    def __init__(self, settings: ClipSettings) -> None:
        self.settings = settings
        # All model work runs on this one thread; the batcher keeps it busy with full batches.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="clip-model")
        self._model: ClipModel | None = None
        self._preprocessor: Preprocessor | None = None
        self._batcher: MicroBatcher[Row, np.ndarray] | None = None
        self._text_cache: OrderedDict[tuple[TextEncoding, str], np.ndarray] = OrderedDict()
        # Decoding and resizing release the GIL: a segment's frames are prepared side by side.
        self._threads = settings.preprocess_threads or min(8, len(os.sched_getaffinity(0)))
        self._preprocess_pool = concurrent.futures.ThreadPoolExecutor(self._threads,
                                                                      thread_name_prefix="clip-preprocess")

    # -- life cycle -----------------------------------------------------------------
    async def load(self) -> None:
        model = await asyncio.get_running_loop().run_in_executor(self._executor, load_clip, self.settings)
        self._preprocessor = Preprocessor(model.image_size, model.mean, model.std, model.info.device)
        self._batcher = MicroBatcher(
            self._encode_batch,
            max_batch_size=self.settings.max_batch_size,
            max_wait_s=self.settings.max_wait_ms / 1000,
            executor=self._executor,
            max_queued_rows=self.settings.max_queued_images,
        )
        self._model = model

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._preprocess_pool.shutdown(wait=True, cancel_futures=True)

    @property
    def model(self) -> ClipModel:
        if self._model is None:
            raise NotReady("clip_service is still loading its model; retry shortly")
        return self._model

    @property
    def info(self) -> ClipInfo:
        return self.model.info

    @property
    def batcher(self) -> MicroBatcher[Row, np.ndarray]:
        if self._batcher is None:
            raise NotReady("clip_service is still loading its model; retry shortly")
        return self._batcher

    def _encode_batch(self, rows: list[Row]) -> list[np.ndarray]:
        assert self._preprocessor is not None
        embeddings = self.model.encode_images(self._preprocessor.batch(rows))
        return list(embeddings)

    # -- texts ----------------------------------------------------------------------
    async def embed_texts(self, texts: Sequence[str], encoding: TextEncoding) -> np.ndarray:
        """(k, D) L2-normalised embeddings; cached per (encoding, text)."""
        texts = validate_texts(texts)
        found = {t: self._text_cache[(encoding, t)] for t in texts if (encoding, t) in self._text_cache}
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            computed = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._compute_texts, missing, encoding
            )
            found.update(zip(missing, computed, strict=True))
        for text, vector in found.items():
            self._remember(encoding, text, vector)
        return np.stack([found[text] for text in texts])

    def _compute_texts(self, texts: list[str], encoding: TextEncoding) -> np.ndarray:
        if encoding is TextEncoding.RAW:
            return _normalize_rows(self.model.encode_texts(texts))
        prompts = [prompt for text in texts for prompt in fill_templates(text)]
        features = self.model.encode_texts(prompts).reshape(len(texts), len(WINCLIP_TEMPLATES), -1)
        # Mean of the un-normalised template features, then normalised (as the reference).
        return _normalize_rows(features.mean(axis=1))

    def _remember(self, encoding: TextEncoding, text: str, vector: np.ndarray) -> None:
        self._text_cache[(encoding, text)] = vector
        self._text_cache.move_to_end((encoding, text))
        while len(self._text_cache) > max(1, self.settings.text_cache_size):
            self._text_cache.popitem(last=False)

    # -- images ---------------------------------------------------------------------
    def _check(self, images: Sequence[bytes], what: str) -> None:
        """Count and the request's pixel budget, from the headers, before anything is decoded."""
        if not images:
            raise InvalidInput(f"no {what} given")
        if len(images) > self.settings.max_images_per_request:
            raise InvalidInput(
                f"{len(images)} {what} in one request; the limit is {self.settings.max_images_per_request}"
            )
        check_pixel_budget(images, self.settings.max_request_pixels, what)

    def _in_parallel(self, prepare: Callable[[np.ndarray], T], images: Sequence[bytes], what: str,
                     first: np.ndarray | None = None) -> list[T]:
        """`prepare` of each decoded image, in order, on the shared preprocessing threads. A request
        keeps at most as many images in the pool's queue as there are threads, so concurrent
        requests take turns instead of a large one holding up the rest. `first`: images[0],
        decoded already."""
        def one(index: int) -> T:
            if index == 0 and first is not None:
                return prepare(first)
            return prepare(decode_image(images[index], f"{what}[{index}]", self.settings.max_image_pixels))

        results: list[T | None] = [None] * len(images)
        waiting = iter(range(len(images)))
        running = {self._preprocess_pool.submit(one, i): i for i in itertools.islice(waiting, self._threads)}
        try:
            while running:
                done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    results[running.pop(future)] = future.result()
                    following = next(waiting, None)
                    if following is not None:
                        running[self._preprocess_pool.submit(one, following)] = following
        finally:
            for future in running:
                future.cancel()
        return results  # type: ignore[return-value]  # every slot was filled

    def _prepare_images(self, images: Sequence[bytes], mode: Mode) -> list[torch.Tensor]:
        preprocessor = self._preprocessor
        assert preprocessor is not None
        self._check(images, "images")
        return self._in_parallel(lambda rgb: preprocessor.image(rgb, mode), images, "images")

    def _window_layout(self, images: Sequence[bytes], mode: Mode, specs: Sequence[tuple[int, int]]
                       ) -> tuple[np.ndarray, list[WindowGrid], Callable[[np.ndarray], None]]:
        """Checks shared by crops and dense windows: the first image decoded, the grids, and a
        check that a decoded image has the first one's size."""
        if mode is Mode.CENTER_CROP:
            raise InvalidInput("window crops are squashed, not centre-cropped: use PREPROCESS_SQUASH or "
                               "PREPROCESS_SQUASH_NORMALIZED with windows")
        self._check(images, "images")
        sizes = {header_size(data) for data in images}
        if len(sizes) > 1:
            raise InvalidInput(f"images cut into windows must all have the same size, got "
                               f"{sorted(s for s in sizes if s)}")
        first = decode_image(images[0], "images[0]", self.settings.max_image_pixels)
        height, width = first.shape[:2]
        grids = layout_grids(specs, height, width)
        total = sum(g.count for g in grids) * len(images)
        if total > self.settings.max_windows_per_request:
            raise InvalidInput(f"{total} window crops requested; the limit is "
                               f"{self.settings.max_windows_per_request} per request")

        def same_size(rgb: np.ndarray) -> None:
            if rgb.shape[:2] != (height, width):  # equal headers, other pixels (an EXIF rotation)
                raise InvalidInput(f"images cut into windows must all have the same size, got {width}x{height} "
                                   f"and {rgb.shape[1]}x{rgb.shape[0]}")

        return first, grids, same_size

    def _prepare_windows(
        self, images: Sequence[bytes], mode: Mode, specs: Sequence[tuple[int, int]]
    ) -> tuple[list[WindowCrop], list[WindowGrid]]:
        preprocessor = self._preprocessor
        assert preprocessor is not None
        first, grids, same_size = self._window_layout(images, mode, specs)

        def windows(rgb: np.ndarray) -> list[WindowCrop]:
            same_size(rgb)
            return preprocessor.windows(rgb, grids, mode)

        per_image = self._in_parallel(windows, images, "images", first)
        return [row for rows in per_image for row in rows], grids

    def _prepare_dense(
        self, images: Sequence[bytes], mode: Mode, specs: Sequence[tuple[int, int]]
    ) -> tuple[list[torch.Tensor], list[WindowGrid], np.ndarray]:
        """Whole images squashed to the model's input, the grids and their pooling weights."""
        preprocessor = self._preprocessor
        assert preprocessor is not None
        patches = self.model.patch_grid
        if patches is None:
            raise InvalidInput(f"dense window features need a ViT CLIP; {self.info.name} has no patch grid: "
                               "use window crops (WINDOW_FEATURES_CROPS)")
        first, grids, same_size = self._window_layout(images, mode, specs)

        def whole(rgb: np.ndarray) -> torch.Tensor:
            same_size(rgb)
            return preprocessor.image(rgb, mode)

        prepared = self._in_parallel(whole, images, "images", first)
        return prepared, grids, pooling_weights(grids, first.shape[0], first.shape[1], patches)

    def _encode_dense(self, prepared: list[torch.Tensor]) -> np.ndarray:
        step = max(1, self.settings.max_batch_size)
        return np.concatenate([self.model.encode_dense(torch.stack(prepared[i : i + step]))
                               for i in range(0, len(prepared), step)])

    async def embed_images(
        self, images: Sequence[bytes], mode: Mode, windows: Sequence[tuple[int, int]] = (), dense: bool = False
    ) -> ImageEmbeddings:
        batcher = self.batcher
        if dense:
            if not windows:
                raise InvalidInput("dense is a way of embedding windows: give the window grids too")
            prepared, grids, weights = await asyncio.to_thread(self._prepare_dense, images, mode, windows)
            patch_features = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._encode_dense, prepared)
            return ImageEmbeddings(pool_windows(patch_features, weights), grids)
        if windows:
            crops, grids = await asyncio.to_thread(self._prepare_windows, images, mode, windows)
            embeddings = np.stack(await batcher.submit(crops))
            per_image = sum(g.count for g in grids)
            return ImageEmbeddings(embeddings.reshape(len(images), per_image, -1), grids)
        prepared = await asyncio.to_thread(self._prepare_images, images, mode)
        return ImageEmbeddings(np.stack(await batcher.submit(prepared)), [])

    # -- key frames -----------------------------------------------------------------
    async def select_key_frames(
        self,
        frames: Sequence[bytes],
        texts: Sequence[str],
        strategy: Strategy = Strategy.CLIP_THEN_GROUPING,
        seed: int = 0,
        mode: Mode = Mode.CENTER_CROP,
        joint: bool = False,
    ) -> KeyFrameResult:
        """Key frames for every text from ONE embedding pass over the segment's frames; with
        `joint`, also one selection for all texts (each frame's best similarity over the texts)."""
        if not frames:
            raise InvalidInput("no frames given: send the N frames of a segment")
        if len(frames) < MIN_FRAMES:
            raise InvalidInput(
                f"{len(frames)} frames given; the key-frame rule needs at least {MIN_FRAMES} "
                "(it picks one frame in each quarter of the segment)"
            )
        texts = validate_texts(texts)
        if not 0 <= seed < 2**63:
            raise InvalidInput(f"seed must be 0 or a positive number, got {seed}")
        text_vectors, frame_vectors = await asyncio.gather(
            self.embed_texts(texts, TextEncoding.RAW),
            self.embed_images(frames, mode),
        )
        similarities = frame_vectors.embeddings @ text_vectors.T  # (N, k) cosines
        columns = [np.ascontiguousarray(similarities[:, i]) for i in range(len(texts))]
        if joint:
            columns.append(np.ascontiguousarray(similarities.max(axis=1)))
        chosen = []
        for text, column in zip([*texts, ""], columns, strict=False):
            picked = select_key_frames(column, strategy, seed)
            chosen.append(Selection(text, picked.representative, picked.key_frames, column))
        return KeyFrameResult(chosen[: len(texts)], chosen[-1] if joint else None, float(similarities.max()))
