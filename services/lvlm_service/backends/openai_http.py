"""Any OpenAI-compatible chat-completions server, above all `vllm serve`.

Each prompt is one request: the image first (a base64 data URL) then the text, so an
engine with prefix caching can reuse the image across texts; temperature 0; a bound on
output tokens; a per-request timeout; at most `max_concurrency` requests in flight.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from typing import Any

import httpx

from services.common.errors import DependencyUnavailable, ModelLoadError
from services.common.images import image_format
from services.lvlm_service.backends.base import BackendInfo, Completion, Prompt


def data_url(image: bytes) -> str:
    mime = "image/png" if image_format(image) == "png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"


def chat_request(model: str, prompt: Prompt, system_prompt: str = "") -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_url(prompt.image)}},
            {"type": "text", "text": prompt.text},
        ],
    })
    return {"model": model, "messages": messages, "temperature": 0.0, "max_tokens": prompt.max_tokens}


class OpenAIBackend:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "",
        timeout_seconds: float = 120.0,
        max_concurrency: int = 16,
        system_prompt: str = "",
    ) -> None:
        if not base_url:
            raise ModelLoadError("lvlm_service: the openai backend needs a server URL; set ANYANOMALY_LVLM_OPENAI_URL "
                                 "(--openai-url), e.g. http://gpu-node:8000/v1")
        if not model:
            raise ModelLoadError("lvlm_service: the openai backend needs the served model name; set "
                                 "ANYANOMALY_LVLM_OPENAI_MODEL (--openai-model)")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self._timeout = timeout_seconds
        self._system_prompt = system_prompt
        self._slots = asyncio.Semaphore(max_concurrency)
        self._limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(self._timeout), limits=self._limits
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def info(self) -> BackendInfo:
        return BackendInfo("openai", self.model, self.base_url, "", False)

    async def complete(self, prompts: Sequence[Prompt]) -> list[Completion]:
        return list(await asyncio.gather(*(self._one(p) for p in prompts)))

    async def _one(self, prompt: Prompt) -> Completion:
        assert self._client is not None, "start() was not called"
        queued = time.perf_counter()
        async with self._slots:
            started = time.perf_counter()
            result = Completion(queue_seconds=started - queued)
            try:
                response = await self._client.post(
                    "/chat/completions", json=chat_request(self.model, prompt, self._system_prompt)
                )
            except httpx.TimeoutException:
                result.error = f"the LVLM server did not answer within {self._timeout:g} s"
                return result
            except httpx.TransportError as exc:
                raise DependencyUnavailable(f"the LVLM server at {self.base_url} is unreachable: {exc}") from exc
            finally:
                result.engine_seconds = time.perf_counter() - started
        if response.status_code != 200:
            result.error = f"the LVLM server answered HTTP {response.status_code}: {response.text[:200]}"
            return result
        return _read_reply(response, result)


def _read_reply(response: httpx.Response, result: Completion) -> Completion:
    try:
        body = response.json()
        result.text = str(body["choices"][0]["message"]["content"] or "")
    except (ValueError, KeyError, IndexError, TypeError):
        result.error = f"the LVLM server sent a malformed reply: {response.text[:200]}"
        return result
    usage = body.get("usage") or {}
    result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    result.completion_tokens = int(usage.get("completion_tokens") or 0)
    return result
