"""Shared pytest fixtures: real gRPC servers on 127.0.0.1 with the tiny models."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from services.clip_service.config import ClipSettings
from services.clip_service.engine import ClipEngine
from services.clip_service.server import build_service as build_clip
from services.common.images import encode_png
from services.common.server import RunningServer, start_server
from services.context_service.config import ContextSettings
from services.context_service.server import build_service as build_context
from tests.helpers.fixtures import avenue_clip, read_video_frames


def clip_settings(**overrides: object) -> ClipSettings:
    settings = ClipSettings(host="127.0.0.1", port=0, models="tiny", log_format="text", grace_seconds=5.0)
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


async def start_clip(settings: ClipSettings | None = None) -> tuple[RunningServer, ClipEngine]:
    settings = settings or clip_settings()
    spec, engine = build_clip(settings)
    running = await start_server(spec, settings)
    await running.until_ready()
    return running, engine


async def start_context(clip_address: str, **overrides: object) -> RunningServer:
    settings = ContextSettings(host="127.0.0.1", port=0, clip_address=clip_address, log_format="text",
                               grace_seconds=5.0)
    for key, value in overrides.items():
        setattr(settings, key, value)
    spec, _ = build_context(settings)
    running = await start_server(spec, settings)
    await running.until_ready()
    return running


@pytest_asyncio.fixture
async def clip_server() -> AsyncIterator[tuple[RunningServer, ClipEngine]]:
    running, engine = await start_clip()
    yield running, engine
    await running.shutdown(1.0)


@pytest_asyncio.fixture
async def context_server(clip_server: tuple[RunningServer, ClipEngine]) -> AsyncIterator[RunningServer]:
    running = await start_context(clip_server[0].address)
    yield running
    await running.shutdown(1.0)


@pytest.fixture(scope="session")
def avenue21_frames() -> list[np.ndarray]:
    """The first 24 frames of Avenue test video 21 (a child running), RGB."""
    return read_video_frames(avenue_clip("21"), count=24)


@pytest.fixture(scope="session")
def avenue21_pngs(avenue21_frames: list[np.ndarray]) -> list[bytes]:
    return [encode_png(frame) for frame in avenue21_frames]
