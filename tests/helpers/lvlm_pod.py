"""An LVLM "pod" for tests: a real lvlm_service process in front of its own scripted engine, so
every answer is known and traceable to the pod that gave it, and the pod can be killed."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from tests.helpers.fake_openai_server import FakeOpenAIServer
from tests.helpers.scripted_lvlm import Answer, ScriptedLVLM, request_image
from tests.helpers.service_process import ServiceProcess


class Pod:
    """An lvlm_service process in front of its own scripted LVLM server."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name, self.lvlm, self.killed = name, ScriptedLVLM(), False
        self.engine = FakeOpenAIServer(answer=self.lvlm).__enter__()
        self.service = ServiceProcess("services.lvlm_service", [
            "--backend", "openai", "--openai-url", self.engine.url, "--openai-model", self.engine.model,
            "--retry-backoff-seconds", "0.01"], folder / name)

    def delivered(self) -> list[Answer]:
        """The answers that reached lvlm_service: a pod killed while its engine held calls never
        got those answers (they are recorded after the release, at the end)."""
        if self.killed and self.lvlm.hold_after is not None:
            return self.lvlm.answers[:self.lvlm.hold_after]
        return self.lvlm.answers

    def images(self, start: int = 0, stop: int | None = None) -> set[str]:
        """The images of the requests this pod's engine received, [start:stop] in order."""
        return {hashlib.sha256(request_image(r)).hexdigest() for r in self.engine.requests[start:stop]}

    def close(self) -> None:
        self.service.stop()
        self.lvlm.release()
        self.engine.__exit__()


async def held(pod: Pod) -> None:
    assert await asyncio.to_thread(pod.lvlm.holding.wait, 120), f"no call reached pod {pod.name}"
