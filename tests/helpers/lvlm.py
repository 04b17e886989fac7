"""Calling lvlm_service from tests, and starting it in front of an OpenAI-compatible test server."""

from __future__ import annotations

from typing import Any

import numpy as np

from anyanomaly.v1 import common_pb2, lvlm_pb2, lvlm_pb2_grpc
from services.common.clients import open_channel
from services.common.images import encode_png
from services.common.server import RunningServer
from tests.helpers.fake_openai_server import FakeOpenAIServer
from tests.helpers.stack import lvlm_settings, start_lvlm

IMAGE = encode_png(np.full((64, 96, 3), 120, np.uint8))


def segment_items(texts: list[str]) -> list[lvlm_pb2.ScoreItem]:
    image = common_pb2.Image(data=IMAGE)
    return [
        lvlm_pb2.ScoreItem(image=image, kind=lvlm_pb2.CONTEXT_KIND_FRAME, texts=texts),
        *(lvlm_pb2.ScoreItem(image=image, kind=kind, texts=[t])
          for t in texts for kind in (lvlm_pb2.CONTEXT_KIND_POSITION, lvlm_pb2.CONTEXT_KIND_TEMPORAL)),
    ]


async def score(address: str, items: list[lvlm_pb2.ScoreItem], **options: Any) -> lvlm_pb2.ScoreResponse:
    async with open_channel(address) as channel:
        return await lvlm_pb2_grpc.LvlmServiceStub(channel).Score(
            lvlm_pb2.ScoreRequest(items=items, options=lvlm_pb2.ScoreOptions(**options))
        )


async def openai_lvlm(server: FakeOpenAIServer, **overrides: Any) -> RunningServer:
    settings: dict[str, Any] = {"max_tokens": 128, "retry_backoff_seconds": 0.01, **overrides}
    return await start_lvlm(lvlm_settings(backend="openai", openai_url=server.url, openai_model=server.model,
                                          **settings))
