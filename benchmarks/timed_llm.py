"""TimedLLM: a benchmark device, not a model. An OpenAI-compatible chat-completions server
on 127.0.0.1 that answers every call after a fixed latency (plus an optional cost per answer
token), with a well-formed score and plausible token counts (about 4 characters per token,
plus a fixed number per image). It stands in for `vllm serve` so that the LVLM side can be
timed on a machine without a GPU."""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

IMAGE_TOKENS = 300  # about what Qwen2.5-VL makes of a 640x360 key frame
REASON = "a person runs across the square"
# The fast mode's answer "0.7" with its top candidates per token.
FAST_LOGPROBS = [("0", [("0", -0.3), ("1", -1.4)]), (".", [(".", 0.0)]), ("7", [("7", -0.2), ("6", -1.8)])]


def _answer(request: dict[str, Any], score: float) -> tuple[str, list[tuple[str, list[tuple[str, float]]]] | None]:
    required = ((request.get("structured_outputs") or {}).get("json") or {}).get("required", [])
    if request.get("top_logprobs"):
        return "0.7", FAST_LOGPROBS
    if required and set(required) != {"score", "reason"}:  # multi_text: one entry per text
        return json.dumps({t: {"score": score, "reason": REASON} for t in required}), None
    return json.dumps({"score": score, "reason": REASON}), None


def _prompt_chars(request: dict[str, Any]) -> int:
    user = next(m for m in request["messages"] if m["role"] == "user")
    return sum(len(part.get("text", "")) for part in user["content"])


def completion_body(request: dict[str, Any], score: float = 0.7) -> tuple[dict[str, Any], int]:
    """The chat-completions response for `request` and its number of answer tokens."""
    content, logprobs = _answer(request, score)
    answer_tokens = len(logprobs) if logprobs is not None else math.ceil(len(content) / 4)
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
    if logprobs is not None:
        choice["logprobs"] = {"content": [
            {"token": token, "logprob": top[0][1], "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}
            for token, top in logprobs]}
    prompt_tokens = math.ceil(_prompt_chars(request) / 4) + IMAGE_TOKENS
    body = {"id": "bench", "object": "chat.completion", "model": request.get("model", ""), "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": answer_tokens,
                      "total_tokens": prompt_tokens + answer_tokens}}
    return body, answer_tokens


class TimedLLM:
    """`with TimedLLM(latency=0.2) as engine: engine.url`. `scores`: the scores answered, in turn
    (one per call, cycled), e.g. to make a live monitor open and close events."""

    def __init__(self, latency: float, per_answer_token: float = 0.0, model: str = "timed-llm",
                 scores: tuple[float, ...] = (0.7,)) -> None:
        self.latency, self.per_answer_token, self.model = latency, per_answer_token, model
        self._scores = itertools.cycle(scores)
        self._turn = threading.Lock()
        ThreadingHTTPServer.request_queue_size = 256
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> TimedLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        device = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with device._turn:
                    score = next(device._scores)
                body, answer_tokens = completion_body(request, score)
                time.sleep(device.latency + device.per_answer_token * answer_tokens)  # the engine's time
                payload = json.dumps(body).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the caller gave up (a deleted monitor)
                    return

        return Handler
