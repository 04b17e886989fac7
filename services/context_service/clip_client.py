"""The calls context_service makes to clip_service."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anyanomaly.v1 import clip_pb2, clip_pb2_grpc, common_pb2
from services.common.balancing import EndpointPool, open_pool
from services.common.clients import KEEPALIVE_SECONDS
from services.common.tensors import from_tensor
from services.common.tls import ClientTls
from services.common.windows import WindowGrid


class ClipClient:
    def __init__(self, pool: EndpointPool[clip_pb2_grpc.ClipServiceAsyncStub], timeout_seconds: float) -> None:
        self.pool = pool
        self._timeout = timeout_seconds

    @classmethod
    async def open(cls, address: str, timeout_seconds: float, max_message_mb: int = 64,
                   keepalive_seconds: float = KEEPALIVE_SECONDS, tls: ClientTls | None = None) -> ClipClient:
        pool = await open_pool("clip_service", address, clip_pb2_grpc.ClipServiceStub, max_message_mb,
                               timeout_seconds, keepalive_seconds, tls)
        return cls(pool, timeout_seconds)

    async def close(self) -> None:
        await self.pool.close()

    async def embed_windows(
        self, images: Sequence[bytes], specs: Sequence[tuple[int, int]], normalize: bool, dense: bool = False
    ) -> tuple[np.ndarray, list[WindowGrid]]:
        """(num_images, L, D) window embeddings and the grid layouts; `dense`: pooled from one
        forward per image instead of one per window crop."""
        request = clip_pb2.EmbedImagesRequest(
            images=[common_pb2.Image(data=data) for data in images],
            preprocess=clip_pb2.PREPROCESS_SQUASH_NORMALIZED if normalize else clip_pb2.PREPROCESS_SQUASH,
            windows=[clip_pb2.WindowGrid(size=size, stride=stride) for size, stride in specs],
            dense=dense,
        )
        response = await self.pool.call(lambda s: s.EmbedImages, request, self._timeout)
        grids = [WindowGrid(g.size, g.stride, g.rows, g.cols, g.offset) for g in response.layouts]
        return from_tensor(response.embeddings), grids

    async def embed_images(self, images: Sequence[bytes], normalize: bool) -> np.ndarray:
        """(num_images, D) embeddings of whole images, squashed to CLIP's input size."""
        request = clip_pb2.EmbedImagesRequest(
            images=[common_pb2.Image(data=data) for data in images],
            preprocess=clip_pb2.PREPROCESS_SQUASH_NORMALIZED if normalize else clip_pb2.PREPROCESS_SQUASH,
        )
        response = await self.pool.call(lambda s: s.EmbedImages, request, self._timeout)
        return from_tensor(response.embeddings)

    async def embed_texts(self, texts: Sequence[str], template_ensemble: bool) -> np.ndarray:
        encoding = clip_pb2.TEXT_ENCODING_TEMPLATE_ENSEMBLE if template_ensemble else clip_pb2.TEXT_ENCODING_RAW
        request = clip_pb2.EmbedTextsRequest(texts=list(texts), encoding=encoding)
        response = await self.pool.call(lambda s: s.EmbedTexts, request, self._timeout)
        return from_tensor(response.embeddings)
