"""context_service logic without gRPC: validate, decode once, embed all window crops
in one clip_service call, then build every text's position and temporal context."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from services.common.errors import InvalidInput, NotReady, echo
from services.common.images import check_pixel_budget, decode_image, encode_png
from services.common.validation import validate_texts
from services.common.windows import WindowGrid
from services.context_service.config import ContextSettings
from services.context_service.grid import all_grids, compose_grid, locate, select_grid, select_position
from services.context_service.params import (
    GRID_SIZE,
    OUTPUT_SIZE,
    ContextParams,
    TemporalSelection,
    WindowFeatures,
)
from services.context_service.winclip import attention_map, class_list, minmax, position_context


class WindowEmbedder(Protocol):
    async def embed_windows(
        self, images: Sequence[bytes], specs: Sequence[tuple[int, int]], normalize: bool, dense: bool = False
    ) -> tuple[np.ndarray, list[WindowGrid]]: ...

    async def embed_texts(self, texts: Sequence[str], template_ensemble: bool) -> np.ndarray: ...

    async def embed_images(self, images: Sequence[bytes], normalize: bool) -> np.ndarray: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Query:
    text: str
    key_frames: tuple[int, ...]  # 4 indices into the request's frames
    representative: int
    more_texts: tuple[str, ...] = ()  # a joint context for several texts

    @property
    def texts(self) -> tuple[str, ...]:
        return (self.text, *self.more_texts)


@dataclass(frozen=True)
class GridChoice:
    candidate: int
    window_size: int
    row: int
    col: int
    score: float


@dataclass(frozen=True)
class TextContext:
    text: str
    position_png: bytes
    temporal_png: bytes
    grid_choice: GridChoice
    attention_map: np.ndarray | None  # (224, 224) min-max normalised, when requested


@dataclass(frozen=True)
class _Embedded:
    """What clip_service computed for one request."""

    windows: np.ndarray  # (frames used, windows, D)
    grids: list[WindowGrid]
    row_of: dict[int, int]  # request frame index -> row of `windows`
    classes: list[str]
    class_matrix: np.ndarray  # (classes, D), template ensemble
    text_vectors: dict[str, np.ndarray]  # raw text embeddings


@dataclass(frozen=True)
class _Frame:
    squashed: np.ndarray  # 240x240 RGB uint8 (cv2 bilinear, aspect not kept)
    resized: np.ndarray  # 224x224 RGB uint8, the base of the position context


class ContextEngine:
    def __init__(self, settings: ContextSettings, clip: WindowEmbedder | None = None) -> None:
        self.settings = settings
        self._clip = clip

    def attach(self, clip: WindowEmbedder) -> None:
        self._clip = clip

    async def close(self) -> None:
        if self._clip is not None:
            await self._clip.close()

    @property
    def clip(self) -> WindowEmbedder:
        if self._clip is None:
            raise NotReady("context_service is starting; retry shortly")
        return self._clip

    def _validate(self, frames: Sequence[bytes], queries: Sequence[Query]) -> list[int]:
        """Check the request; return the frame indices the queries use, sorted."""
        if not frames:
            raise InvalidInput("no frames given: send the key frames the queries refer to")
        if len(frames) > self.settings.max_frames_per_request:
            raise InvalidInput(f"{len(frames)} frames in one request; the limit is "
                               f"{self.settings.max_frames_per_request}")
        if not queries:
            raise InvalidInput("no queries given: send at least one text with its 4 key frames")
        if len(queries) > self.settings.max_queries_per_request:
            raise InvalidInput(f"{len(queries)} queries in one request; the limit is "
                               f"{self.settings.max_queries_per_request}")
        validate_texts([q.text for q in queries], "query texts")
        for position, query in enumerate(queries):
            if query.more_texts:
                validate_texts(query.more_texts, f"queries[{position}].more_texts")
        used: set[int] = set()
        for position, query in enumerate(queries):
            if len(query.key_frames) != 4:
                raise InvalidInput(f"queries[{position}] ({echo(query.text)}) has {len(query.key_frames)} key frames; "
                                   "the temporal context needs exactly 4")
            for index in (*query.key_frames, query.representative):
                if not 0 <= index < len(frames):
                    raise InvalidInput(f"queries[{position}] ({echo(query.text)}) refers to frame {index}, but only "
                                       f"{len(frames)} frames were sent (indices 0..{len(frames) - 1})")
            used.update(query.key_frames)
            used.add(query.representative)
        return sorted(used)

    def _prepare(self, frames: Sequence[bytes], used: Sequence[int]) -> tuple[dict[int, _Frame], list[bytes]]:
        check_pixel_budget([frames[i] for i in used], self.settings.max_request_pixels, "frames")
        prepared: dict[int, _Frame] = {}  # one full-size frame decoded at a time
        for index in used:
            rgb = decode_image(frames[index], f"frames[{index}]", self.settings.max_image_pixels)
            prepared[index] = _Frame(
                squashed=cv2.resize(rgb, (GRID_SIZE, GRID_SIZE), interpolation=cv2.INTER_LINEAR),
                resized=cv2.resize(rgb, (OUTPUT_SIZE, OUTPUT_SIZE), interpolation=cv2.INTER_LINEAR),
            )
        # Lossless, so clip_service cuts windows from exactly these pixels.
        return prepared, [encode_png(prepared[i].squashed) for i in used]

    async def build(
        self, frames: Sequence[bytes], queries: Sequence[Query], class_names: Sequence[str], params: ContextParams
    ) -> tuple[list[TextContext], list[str]]:
        used = self._validate(frames, queries)
        if class_names:
            validate_texts(class_names, "class names")
        prepared, pngs = await asyncio.to_thread(self._prepare, frames, used)
        texts = list(dict.fromkeys(t for q in queries for t in q.texts))
        classes = class_list(params.preset.class_names, class_names, texts)
        # Everything CLIP must see for this request, in three concurrent calls:
        # all windows of all used frames (one batched call), the class matrix, the raw texts.
        (windows, grids), class_matrix, text_vectors = await asyncio.gather(
            self.clip.embed_windows(pngs, params.window_specs, params.choices.normalize_windows,
                                    dense=params.window_features is WindowFeatures.DENSE),
            self.clip.embed_texts(classes, template_ensemble=True),
            self.clip.embed_texts(texts, template_ensemble=False),
        )
        embedded = _Embedded(windows, grids, {index: row for row, index in enumerate(used)}, classes,
                             class_matrix, dict(zip(texts, text_vectors, strict=True)))
        chosen = None
        if params.temporal_selection is TemporalSelection.GRID_EMBEDDING:
            chosen = await self._choose_by_grid_embedding(queries, prepared, embedded, params)
        results = await asyncio.to_thread(self._compose_all, queries, prepared, embedded, params, chosen)
        return results, classes

    async def _choose_by_grid_embedding(
        self, queries: Sequence[Query], prepared: dict[int, _Frame], embedded: _Embedded, params: ContextParams
    ) -> list[tuple[int, float]]:
        """Embed every candidate grid of every query in one call; the most text-like grid wins."""
        def mosaics() -> list[bytes]:
            return [encode_png(m) for q in queries
                    for m in all_grids([prepared[k].squashed for k in q.key_frames], embedded.grids)]

        pngs = await asyncio.to_thread(mosaics)
        vectors = await self.clip.embed_images(pngs, params.choices.normalize_windows)
        per_query = len(pngs) // len(queries)
        return [
            max((select_grid(vectors[i * per_query : (i + 1) * per_query], embedded.text_vectors[t])
                 for t in q.texts), key=lambda choice: choice[1])
            for i, q in enumerate(queries)
        ]

    def _compose_all(
        self,
        queries: Sequence[Query],
        prepared: dict[int, _Frame],
        embedded: _Embedded,
        params: ContextParams,
        chosen: list[tuple[int, float]] | None,
    ) -> list[TextContext]:
        results = []
        for position, query in enumerate(queries):
            # A joint context highlights wherever any of its texts is (the max of their maps).
            score_map = np.maximum.reduce([
                attention_map(
                    embedded.windows[embedded.row_of[query.representative]], embedded.grids, embedded.class_matrix,
                    embedded.classes.index(text), params.choices.logit_scale, params.choices.class_adaptive,
                )
                for text in query.texts
            ])
            mask = minmax(score_map, params.choices.minmax_epsilon)
            pc = position_context(prepared[query.representative].resized, mask)
            if chosen is None:
                key_windows = embedded.windows[[embedded.row_of[k] for k in query.key_frames]]
                candidate, score = max((select_position(key_windows, embedded.text_vectors[t]) for t in query.texts),
                                       key=lambda choice: choice[1])
            else:
                candidate, score = chosen[position]
            grid, index = locate(embedded.grids, candidate)
            tc = compose_grid([prepared[k].squashed for k in query.key_frames], grid, index)
            row, col = divmod(index, grid.cols)
            results.append(TextContext(
                text=query.text,
                position_png=encode_png(pc),
                temporal_png=encode_png(tc),
                grid_choice=GridChoice(candidate, grid.size, row, col, score),
                attention_map=mask if params.include_attention_map else None,
            ))
        return results
