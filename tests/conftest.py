"""Shared pytest fixtures: real gRPC servers on 127.0.0.1 with the tiny models."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from services.clip_service.engine import ClipEngine
from services.common.images import encode_png
from services.common.server import RunningServer
from tests.helpers.fake_openai_server import FakeOpenAIServer
from tests.helpers.fixtures import avenue_clip, read_video_frames
from tests.helpers.postgres import fresh_database, postgres_server
from tests.helpers.scripted_lvlm import ScriptedLVLM
from tests.helpers.stack import Stack, lvlm_settings, start_clip, start_context, start_stack


@pytest_asyncio.fixture
async def stack() -> AsyncIterator[Stack]:
    running = await start_stack()
    yield running
    await running.shutdown()


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


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    """An OpenAI-compatible test server standing in for `vllm serve` (which needs a GPU)."""
    with FakeOpenAIServer() as server:
        yield server


@dataclass
class Scripted:
    """The four real services, with lvlm_service's openai backend in front of a ScriptedLVLM."""

    stack: Stack
    lvlm: ScriptedLVLM
    server: FakeOpenAIServer

    @property
    def address(self) -> str:
        return self.stack.orchestrator.address


@asynccontextmanager
async def scripted_stack(**orchestrator: object) -> AsyncIterator[Scripted]:
    answers = ScriptedLVLM()
    with FakeOpenAIServer(answer=answers) as server:
        stack = await start_stack(lvlm_settings(backend="openai", openai_url=server.url, openai_model=server.model,
                                                retry_backoff_seconds=0.01), **orchestrator)
        try:
            yield Scripted(stack, answers, server)
        finally:
            await stack.shutdown()


@pytest_asyncio.fixture
async def scripted() -> AsyncIterator[Scripted]:
    async with scripted_stack() as running:
        yield running


@pytest_asyncio.fixture
async def scripted_live(tmp_path: Path) -> AsyncIterator[Scripted]:
    """`scripted` with a data dir: Jobs, Monitors and Events on SQLite in tmp_path/data."""
    async with scripted_stack(data_dir=str(tmp_path / "data"), event_poll_seconds=0.2, reconnect_min_seconds=0.05,
                              reconnect_max_seconds=0.5, webhook_backoff_seconds=0.01) as running:
        yield running


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A PostgreSQL server for this test session (the machine's packages); its URL."""
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    """(data dir, database URL) for a fresh store on each backend ("" URL: SQLite in the data dir)."""
    if request.param == "sqlite":
        return tmp_path, ""
    url = request.getfixturevalue("postgres")
    return tmp_path, fresh_database(url, f"t{uuid.uuid4().hex[:12]}")
