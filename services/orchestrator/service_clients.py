"""The orchestrator's calls to clip_service, context_service and lvlm_service."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from anyanomaly.v1 import (
    clip_pb2,
    clip_pb2_grpc,
    common_pb2,
    context_pb2,
    context_pb2_grpc,
    lvlm_pb2,
    lvlm_pb2_grpc,
)
from services.common.balancing import EndpointPool, open_pool
from services.common.clients import KEEPALIVE_SECONDS
from services.common.enums import CONTEXT_KIND
from services.common.tls import ClientTls


@dataclass(frozen=True)
class KeyFrameChoice:
    text: str
    representative: int  # index within the segment
    key_frames: tuple[int, ...]  # 4 indices within the segment
    more_texts: tuple[str, ...] = ()  # a joint choice shared by several texts

    @property
    def texts(self) -> tuple[str, ...]:
        return (self.text, *self.more_texts)


@dataclass(frozen=True)
class KeyFrames:
    choices: list[KeyFrameChoice]  # one per text
    joint: KeyFrameChoice | None  # one for all texts, when asked for
    best_similarity: float


@dataclass(frozen=True)
class TextContexts:
    position: bytes  # PNG
    temporal: bytes  # PNG


@dataclass(frozen=True)
class StreamScore:
    score: float
    reason: str
    parsed: bool
    error: str


class ServiceClients:
    """Calls to the three services, each spread over its endpoints (services/common/balancing.py)."""

    def __init__(self, clip: EndpointPool[clip_pb2_grpc.ClipServiceAsyncStub],
                 context: EndpointPool[context_pb2_grpc.ContextServiceAsyncStub],
                 lvlm: EndpointPool[lvlm_pb2_grpc.LvlmServiceAsyncStub], timeout_seconds: float) -> None:
        self.clip, self.context, self.lvlm = clip, context, lvlm
        self._timeout = timeout_seconds

    @classmethod
    async def open(cls, clip: str, context: str, lvlm: str, timeout_seconds: float, max_message_mb: int = 64,
                   keepalive_seconds: float = KEEPALIVE_SECONDS, tls: ClientTls | None = None) -> ServiceClients:
        pools: list[EndpointPool[Any]] = []
        try:
            for name, address, stub in (("clip_service", clip, clip_pb2_grpc.ClipServiceStub),
                                        ("context_service", context, context_pb2_grpc.ContextServiceStub),
                                        ("lvlm_service", lvlm, lvlm_pb2_grpc.LvlmServiceStub)):
                pools.append(await open_pool(name, address, stub, max_message_mb, timeout_seconds,
                                             keepalive_seconds, tls))
        except BaseException:
            for pool in pools:
                await pool.close()
            raise
        clip_pool, context_pool, lvlm_pool = pools
        return cls(clip_pool, context_pool, lvlm_pool, timeout_seconds)

    async def close(self) -> None:
        for pool in (self.clip, self.context, self.lvlm):
            await pool.close()

    async def model_infos(self) -> tuple[common_pb2.ModelInfo, common_pb2.ModelInfo]:
        request = common_pb2.GetModelInfoRequest()
        clip = await self.clip.call(lambda s: s.GetModelInfo, request, self._timeout)
        lvlm = await self.lvlm.call(lambda s: s.GetModelInfo, request, self._timeout)
        return clip, lvlm

    async def select_key_frames(
        self, frames: Sequence[bytes], texts: Sequence[str], strategy: common_pb2.KeyFrameStrategy.ValueType,
        seed: int, joint: bool = False,
    ) -> KeyFrames:
        request = clip_pb2.SelectKeyFramesRequest(
            frames=[common_pb2.Image(data=f) for f in frames], texts=list(texts), strategy=strategy, seed=seed,
            joint=joint,
        )
        response = await self.clip.call(lambda s: s.SelectKeyFrames, request, self._timeout)
        choices = [KeyFrameChoice(s.text, s.representative, tuple(s.key_frames)) for s in response.selections]
        shared = None
        if joint:
            j = response.joint
            shared = KeyFrameChoice(texts[0], j.representative, tuple(j.key_frames), tuple(texts[1:]))
        return KeyFrames(choices, shared, response.best_similarity)

    async def build_contexts(
        self, frames: Sequence[bytes], choices: Sequence[KeyFrameChoice], options: context_pb2.ContextOptions,
        class_names: Sequence[str] = (),
    ) -> list[TextContexts]:
        """Contexts per choice; only the frames the choices use are sent. `class_names`: the
        position context's classes (default: the preset's, with the choices' texts)."""
        used = sorted({i for c in choices for i in (*c.key_frames, c.representative)})
        position = {index: slot for slot, index in enumerate(used)}
        request = context_pb2.BuildContextsRequest(
            frames=[common_pb2.Image(data=frames[i]) for i in used],
            queries=[
                context_pb2.ContextQuery(
                    text=c.text, key_frames=[position[k] for k in c.key_frames],
                    representative=position[c.representative], more_texts=list(c.more_texts),
                )
                for c in choices
            ],
            class_names=list(class_names),
            options=options,
        )
        response = await self.context.call(lambda s: s.BuildContexts, request, self._timeout)
        return [TextContexts(c.position_context.data, c.temporal_context.data) for c in response.contexts]

    async def _score(self, items: list[lvlm_pb2.ScoreItem], options: lvlm_pb2.ScoreOptions) -> lvlm_pb2.ScoreResponse:
        request = lvlm_pb2.ScoreRequest(items=items, options=options)
        return await self.lvlm.call(lambda s: s.Score, request, self._timeout)

    async def score(
        self, frames: Sequence[bytes], choices: Sequence[KeyFrameChoice], contexts: Sequence[TextContexts],
        options: lvlm_pb2.ScoreOptions, known_frames: Collection[str] = (),
    ) -> tuple[dict[str, dict[str, StreamScore]], lvlm_pb2.Usage]:
        """All images x texts of a segment in one request: {text: {stream: score}}. Texts that
        share their representative frame share one FRAME item (the engine sees the image once);
        a joint choice puts all its texts on each of its three images. `known_frames`: texts whose
        key-frame score the caller has already (no FRAME call for them)."""
        by_frame: dict[int, list[str]] = {}
        for choice in choices:
            texts = [t for t in choice.texts if t not in known_frames]
            if texts:
                by_frame.setdefault(choice.representative, []).extend(texts)
        items = [lvlm_pb2.ScoreItem(image=common_pb2.Image(data=frames[index]), kind=lvlm_pb2.CONTEXT_KIND_FRAME,
                                    texts=texts) for index, texts in by_frame.items()]
        for choice, context in zip(choices, contexts, strict=True):
            items.append(lvlm_pb2.ScoreItem(image=common_pb2.Image(data=context.position),
                                            kind=lvlm_pb2.CONTEXT_KIND_POSITION, texts=choice.texts))
            items.append(lvlm_pb2.ScoreItem(image=common_pb2.Image(data=context.temporal),
                                            kind=lvlm_pb2.CONTEXT_KIND_TEMPORAL, texts=choice.texts))
        response = await self._score(items, options)
        per_text: dict[str, dict[str, StreamScore]] = {t: {} for c in choices for t in c.texts}
        for item in response.items:
            for s in item.scores:
                per_text[s.text][CONTEXT_KIND.names[item.kind]] = StreamScore(s.score, s.reason, s.parsed, s.error)
        return per_text, response.usage

    async def key_frame_scores(
        self, frames: Sequence[bytes], choices: Sequence[tuple[str, int]], options: lvlm_pb2.ScoreOptions
    ) -> tuple[dict[str, StreamScore], lvlm_pb2.Usage]:
        """Each (text, representative frame) scored on its key frame alone: one call each, in
        `options`' mode (the reasons of fast-mode texts; the cascade's screening)."""
        items = [lvlm_pb2.ScoreItem(image=common_pb2.Image(data=frames[index]), kind=lvlm_pb2.CONTEXT_KIND_FRAME,
                                    texts=[text]) for text, index in choices]
        response = await self._score(items, options)
        return ({s.text: StreamScore(s.score, s.reason, s.parsed, s.error) for item in response.items
                 for s in item.scores}, response.usage)

