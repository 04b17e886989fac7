"""Any OpenAI-compatible chat-completions server, above all `vllm serve`.

Each prompt is one request: the image first (a base64 data URL) then the text, so an
engine with prefix caching can reuse the image across texts; temperature 0; a bound on
output tokens; structured outputs with the prompt's JSON schema (vLLM >= 0.12 reads
`structured_outputs: {"json": schema}`; OpenAI's `response_format` is the alternative);
log-probabilities when asked for. Connections are pooled, at most `max_concurrency`
requests are in flight, at most `max_queued` more may wait (beyond that the caller gets
Overloaded, i.e. RESOURCE_EXHAUSTED), and 429 / 5xx answers and timeouts are retried with
exponential backoff (honouring Retry-After).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import random
import re
import ssl
import time
from collections.abc import Sequence
from typing import Any

import httpx

from services.common.errors import DependencyUnavailable, ModelLoadError, Overloaded
from services.common.images import image_format
from services.lvlm_service.backends.base import BackendInfo, Completion, Prompt

RETRYABLE_STATUS = {429, 500, 502, 503, 504}
MAX_RETRY_AFTER_SECONDS = 30.0  # a longer wait is the caller's deadline's business, not a retry


def retry_after(value: str) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date; None if neither."""
    value = value.strip()
    if not value:
        return None
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return max(0.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # the asctime form carries no zone: HTTP dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())
STRUCTURED_FIELDS = ("vllm", "openai", "none")


def data_url(image: bytes) -> str:
    mime = "image/png" if image_format(image) == "png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"


def chat_request(model: str, prompt: Prompt, system_prompt: str = "", structured_field: str = "vllm"
                 ) -> dict[str, Any]:
    """The JSON body of one chat-completions request."""
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
    body: dict[str, Any] = {"model": model, "messages": messages, "temperature": 0.0, "max_tokens": prompt.max_tokens}
    if prompt.json_schema is not None and structured_field == "vllm":
        body["structured_outputs"] = {"json": prompt.json_schema}
    elif prompt.json_schema is not None and structured_field == "openai":
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "anyanomaly_score", "schema": prompt.json_schema}}
    if prompt.top_logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = prompt.top_logprobs
    return body


def read_reply(body: Any, result: Completion) -> Completion:
    """Fill `result` from a chat-completions response body; a malformed body sets `error`."""
    try:
        choice = body["choices"][0]
        message = choice["message"]
        result.text = str(message.get("content") or "")
        result.refusal = str(message.get("refusal") or "")
        result.finish_reason = str(choice.get("finish_reason") or "")
        for entry in (choice.get("logprobs") or {}).get("content") or []:
            result.tokens.append(str(entry["token"]))
            result.top_logprobs.append(
                [(str(c["token"]), float(c["logprob"])) for c in entry.get("top_logprobs") or []]
                or [(str(entry["token"]), float(entry["logprob"]))]
            )
        usage = body.get("usage") or {}
        result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        result.completion_tokens = int(usage.get("completion_tokens") or 0)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        result.error = f"the LVLM server sent a malformed reply ({type(exc).__name__}): {str(body)[:200]}"
    return result


class OpenAIBackend:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "",
        timeout_seconds: float = 120.0,
        max_concurrency: int = 16,
        system_prompt: str = "",
        max_queued: int = 512,
        retries: int = 3,
        backoff_seconds: float = 0.5,
        structured_field: str = "vllm",
        ca_file: str = "",
    ) -> None:
        if not base_url:
            raise ModelLoadError("lvlm_service: the openai backend needs a server URL; set ANYANOMALY_LVLM_OPENAI_URL "
                                 "(--openai-url), e.g. http://gpu-node:8000/v1")
        if not model:
            raise ModelLoadError("lvlm_service: the openai backend needs the served model name; set "
                                 "ANYANOMALY_LVLM_OPENAI_MODEL (--openai-model)")
        if structured_field not in STRUCTURED_FIELDS:
            raise ModelLoadError(f"lvlm_service: --structured-output-field must be one of {STRUCTURED_FIELDS}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self._timeout = timeout_seconds
        self._system_prompt = system_prompt
        self._concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._max_queued = max_queued
        self._retries = retries
        self._backoff = backoff_seconds
        self._structured_field = structured_field
        self._limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        self._client: httpx.AsyncClient | None = None
        self._ca_file = ca_file
        self.pending = 0  # prompts accepted and not yet answered (in flight + waiting)
        self.in_flight = 0  # requests at the LVLM server now

    async def start(self) -> None:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(self._timeout), limits=self._limits,
            verify=self._trust(),
        )

    def _trust(self) -> ssl.SSLContext | bool:
        """The CAs an https server's certificate is checked against: --openai-ca-file, else certifi's."""
        if not self._ca_file:
            return True
        try:
            return ssl.create_default_context(cafile=self._ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ModelLoadError(f"lvlm_service: cannot use --openai-ca-file {self._ca_file}: {exc}") from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    @property
    def waiting(self) -> int:
        """Accepted, not at the server: the queue the server's own waiting count never sees."""
        return self.pending - self.in_flight

    def info(self) -> BackendInfo:
        return BackendInfo("openai", self.model, self.base_url, "", False)

    async def complete(self, prompts: Sequence[Prompt]) -> list[Completion]:
        if self.pending + len(prompts) > self._concurrency + self._max_queued:
            raise Overloaded(
                f"the LVLM queue is full ({self.pending} requests pending, room for "
                f"{self._concurrency + self._max_queued}); retry later or add LVLM capacity"
            )
        self.pending += len(prompts)
        try:
            return list(await asyncio.gather(*(self._one(p) for p in prompts)))
        finally:
            self.pending -= len(prompts)

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        asked = retry_after(response.headers.get("retry-after", "")) if response is not None else None
        if asked is not None:
            return min(MAX_RETRY_AFTER_SECONDS, asked)
        return min(8.0, self._backoff * 2**attempt) * (0.5 + random.random() / 2)

    async def _one(self, prompt: Prompt) -> Completion:
        assert self._client is not None, "start() was not called"
        body = chat_request(self.model, prompt, self._system_prompt, self._structured_field)
        queued = time.perf_counter()
        result = Completion()
        for attempt in range(self._retries + 1):
            response: httpx.Response | None = None
            async with self._slots:
                started = time.perf_counter()
                result.queue_seconds += started - queued
                unreachable = False
                self.in_flight += 1
                try:
                    response = await self._client.post("/chat/completions", json=body)
                    error = "" if response.status_code == 200 else (
                        f"the LVLM server answered HTTP {response.status_code}: {response.text[:200]}")
                except httpx.TimeoutException:
                    error = f"the LVLM server did not answer within {self._timeout:g} s"
                except httpx.ConnectError as exc:
                    unreachable, error = True, f"the LVLM server at {self.base_url} is unreachable: {exc!r}"
                except httpx.TransportError as exc:  # e.g. a dropped keep-alive connection
                    error = f"the connection to the LVLM server broke: {exc!r}"
                finally:
                    self.in_flight -= 1
                    result.engine_seconds += time.perf_counter() - started
            transient = response is None or response.status_code in RETRYABLE_STATUS
            if not error or not transient or attempt == self._retries:
                if unreachable:
                    raise DependencyUnavailable(error)
                break
            result.retries += 1
            await asyncio.sleep(self._delay(attempt, response))
            queued = time.perf_counter()
        if error:
            result.error = error if result.retries == 0 else f"{error} (after {result.retries} retries)"
            return result
        assert response is not None
        try:
            payload = response.json()
        except ValueError:
            result.error = f"the LVLM server sent a malformed reply: {response.text[:200]}"
            return result
        return read_reply(payload, result)
