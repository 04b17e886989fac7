"""Real gRPC servers of the four services on 127.0.0.1 with the tiny models, for tests."""

from __future__ import annotations

from dataclasses import dataclass

from services.clip_service.config import ClipSettings
from services.clip_service.engine import ClipEngine
from services.clip_service.server import build_service as build_clip
from services.common.server import RunningServer, start_server
from services.context_service.config import ContextSettings
from services.context_service.server import build_service as build_context
from services.lvlm_service.config import LvlmSettings
from services.lvlm_service.server import build_service as build_lvlm
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.pipeline import Detector
from services.orchestrator.server import build_service as build_orchestrator


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


def lvlm_settings(**overrides: object) -> LvlmSettings:
    settings = LvlmSettings(host="127.0.0.1", port=0, backend="transformers", models="tiny", log_format="text",
                            grace_seconds=5.0)
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


async def start_lvlm(settings: LvlmSettings | None = None) -> RunningServer:
    settings = settings or lvlm_settings()
    spec, _ = build_lvlm(settings)
    running = await start_server(spec, settings)
    await running.until_ready()
    return running


async def start_orchestrator(clip: str, context: str, lvlm: str, **overrides: object) -> RunningServer:
    return await start_orchestrator_with(Detector(), clip, context, lvlm, **overrides)


async def start_orchestrator_with(detector: Detector, clip: str, context: str, lvlm: str,
                                  **overrides: object) -> RunningServer:
    """An orchestrator around the test's own `detector` (to look at the endpoints it calls)."""
    settings = OrchestratorSettings(host="127.0.0.1", port=0, clip_address=clip, context_address=context,
                                    lvlm_address=lvlm, log_format="text", grace_seconds=5.0)
    for key, value in overrides.items():
        setattr(settings, key, value)
    running = await start_server(build_orchestrator(settings, detector), settings)
    await running.until_ready()
    return running


@dataclass
class Stack:
    clip: RunningServer
    context: RunningServer
    lvlm: RunningServer
    orchestrator: RunningServer

    async def shutdown(self) -> None:
        for server in (self.orchestrator, self.lvlm, self.context, self.clip):
            await server.shutdown(1.0)


async def start_stack(lvlm: LvlmSettings | None = None, **orchestrator_overrides: object) -> Stack:
    clip, _ = await start_clip()
    context = await start_context(clip.address)
    lvlm_server = await start_lvlm(lvlm)
    orchestrator = await start_orchestrator(clip.address, context.address, lvlm_server.address,
                                            **orchestrator_overrides)
    return Stack(clip, context, lvlm_server, orchestrator)
