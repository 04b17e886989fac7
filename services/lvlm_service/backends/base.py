"""The interface every LVLM backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Prompt:
    image: bytes  # PNG or JPEG; sent before the text so engines can reuse it across texts
    text: str
    max_tokens: int


@dataclass
class Completion:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_seconds: float = 0.0  # waiting for a slot (concurrency limit or the worker thread)
    engine_seconds: float = 0.0  # inside the engine
    error: str = ""  # non-empty when this call failed (timeout, HTTP error, malformed reply)


@dataclass(frozen=True)
class BackendInfo:
    backend: str
    model: str
    device: str
    dtype: str
    random_weights: bool


class Backend(Protocol):
    async def start(self) -> None:
        """Load the model or check the server; raise ModelLoadError with an actionable message."""

    async def complete(self, prompts: Sequence[Prompt]) -> list[Completion]:
        """Answer all prompts (concurrently or batched); one Completion per prompt, in order.
        A failed call is a Completion with `error` set; an unreachable engine raises
        DependencyUnavailable."""

    async def close(self) -> None: ...

    def info(self) -> BackendInfo: ...
