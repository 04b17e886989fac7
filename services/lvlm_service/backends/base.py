"""The interface every LVLM backend implements."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Prompt:
    image: bytes  # PNG or JPEG; sent before the text so engines can reuse it across texts
    text: str
    max_tokens: int
    json_schema: dict[str, Any] | None = None  # constrain the answer where the engine can
    top_logprobs: int = 0  # > 0: return this many candidates (with log-probabilities) per answer token
    pixels: np.ndarray | None = field(default=None, compare=False)  # the image decoded (RGB), for local engines

    def rgb(self) -> Image.Image:
        """The image as PIL RGB (decoded already by the service; from the bytes otherwise)."""
        if self.pixels is not None:
            return Image.fromarray(self.pixels)
        return Image.open(io.BytesIO(self.image)).convert("RGB")


@dataclass
class Completion:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_seconds: float = 0.0  # waiting for a slot (concurrency limit or the worker thread)
    engine_seconds: float = 0.0  # inside the engine
    error: str = ""  # non-empty when this call failed (timeout, HTTP error, malformed reply)
    finish_reason: str = ""  # "stop", "length" (cut at max_tokens), ...
    refusal: str = ""  # the engine's refusal message, when it reports one
    tokens: list[str] = field(default_factory=list)  # the answer's tokens (with top_logprobs)
    top_logprobs: list[list[tuple[str, float]]] = field(default_factory=list)  # candidates per answer token
    retries: int = 0  # transient engine errors retried inside the backend


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
        DependencyUnavailable; a full queue raises Overloaded."""

    async def close(self) -> None: ...

    def info(self) -> BackendInfo: ...
