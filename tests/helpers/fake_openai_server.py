"""FakeOpenAIServer: a small local HTTP server that speaks the OpenAI chat-completions
protocol like `vllm serve` does, for testing the lvlm_service `openai` backend on a
machine without a GPU. It records every request and checks it against the request
fields of the vLLM version we target (vllm_chat_protocol.json, exported from vLLM 0.33
by scripts/export_vllm_protocol.py); each test scripts the answers (text, JSON, log-probs,
malformed bodies, refusals, cut answers, 429s and other errors, delays, hang-ups)."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PROTOCOL = json.loads((Path(__file__).with_name("vllm_chat_protocol.json")).read_text())


@dataclass
class Reply:
    content: str = "Score: 0.7. Reason: a person runs across the plaza."
    status: int = 200
    raw_body: str | None = None  # sent instead of a well-formed completion
    hold: threading.Event | None = None  # wait for this before answering (a slow engine)
    finish_reason: str = "stop"
    refusal: str | None = None
    # (chosen token, [(candidate, logprob), ...]) per answer token, sent when logprobs are asked for
    logprobs: list[tuple[str, list[tuple[str, float]]]] | None = None
    retry_after: str | None = None
    close: bool = False  # hang up without an answer (a crashed engine, a proxy's idle cut)
    prompt_tokens: int = 100
    completion_tokens: int | None = None  # None: one per log-prob entry, else ~4 characters per token


@dataclass
class FakeOpenAIServer:
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    answer: Callable[[dict[str, Any]], Reply] = field(default=lambda request: Reply())
    requests: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # request-shape violations
    in_flight: int = 0
    max_in_flight: int = 0
    tls: tuple[str, str] | None = None  # (certificate, key): serve HTTPS

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        ThreadingHTTPServer.request_queue_size = 256  # many concurrent clients, as a real engine takes
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            # The handshake in each request's thread, not in accept(): a client that connects and never
            # finishes it would otherwise block serve_forever, and shutdown() with it.
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True,
                                                      do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def check(self, request: dict[str, Any]) -> None:
        """The request shape the backend must send (vLLM's chat-completions schema)."""
        problems = [f"field {key!r} is unknown to vLLM {PROTOCOL['vllm_version']}"
                    for key in request if key not in PROTOCOL["request_fields"]]
        problems += [f"removed field {key!r}" for key in request if key in PROTOCOL["removed_fields"]]
        structured = request.get("structured_outputs")
        if structured is not None and (set(structured) - set(PROTOCOL["structured_outputs_fields"])
                                       or not isinstance(structured.get("json"), dict)):
            problems.append(f"structured_outputs {structured!r}")
        if "top_logprobs" in request and (request.get("logprobs") is not True
                                          or not 0 < request["top_logprobs"] <= PROTOCOL["max_top_logprobs_default"]):
            problems.append(f"logprobs {request.get('logprobs')!r} / top_logprobs {request['top_logprobs']!r}")
        if request.get("model") != self.model:
            problems.append(f"model {request.get('model')!r}")
        if request.get("temperature") != 0:
            problems.append(f"temperature {request.get('temperature')!r}")
        if not isinstance(request.get("max_tokens"), int) or request["max_tokens"] <= 0:
            problems.append(f"max_tokens {request.get('max_tokens')!r}")
        user = [m for m in request.get("messages", []) if m.get("role") == "user"]
        if len(user) != 1 or not isinstance(user[0].get("content"), list):
            problems.append("one user message with a content list expected")
        else:
            parts = user[0]["content"]
            kinds = [p.get("type") for p in parts]
            if any(kind not in PROTOCOL["content_part_types"] for kind in kinds):
                problems.append(f"content part types {kinds} unknown to vLLM")
            if kinds != ["image_url", "text"]:
                problems.append(f"content parts {kinds} (image first, then text)")
            elif not parts[0]["image_url"]["url"].startswith(("data:image/png;base64,", "data:image/jpeg;base64,")):
                problems.append("image is not a base64 data URL")
        with self._lock:
            self.problems.extend(problems)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def do_POST(self) -> None:
                if self.path != "/v1/chat/completions":
                    self.send_error(404)
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server.check(body)
                    reply = server.answer(body)
                    if reply.hold is not None:
                        reply.hold.wait(timeout=30)
                    if reply.close:
                        self.close_connection = True
                        return
                    self._send(reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, reply: Reply) -> None:
                if reply.raw_body is not None:
                    payload = reply.raw_body.encode()
                elif reply.status != 200:
                    payload = json.dumps({"error": {"message": "engine error", "code": reply.status}}).encode()
                else:
                    choice: dict[str, Any] = {
                        "index": 0, "finish_reason": reply.finish_reason,
                        "message": {"role": "assistant", "content": reply.content, "refusal": reply.refusal},
                    }
                    if reply.logprobs is not None:
                        choice["logprobs"] = {"content": [
                            {"token": token, "logprob": dict(top).get(token, top[0][1]),
                             "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}
                            for token, top in reply.logprobs
                        ]}
                    completion_tokens = reply.completion_tokens
                    if completion_tokens is None:
                        completion_tokens = (len(reply.logprobs) if reply.logprobs is not None
                                             else max(1, -(-len(reply.content) // 4)))
                    payload = json.dumps({
                        "id": "chatcmpl-test", "object": "chat.completion", "model": server.model,
                        "choices": [choice],
                        "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": completion_tokens,
                                  "total_tokens": reply.prompt_tokens + completion_tokens},
                    }).encode()
                self.send_response(reply.status)
                if reply.retry_after is not None:
                    self.send_header("Retry-After", reply.retry_after)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


def prompt_text(request: dict[str, Any]) -> str:
    user = next(m for m in request["messages"] if m["role"] == "user")
    return str(user["content"][1]["text"])
