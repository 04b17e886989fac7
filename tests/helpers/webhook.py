"""A webhook receiver on 127.0.0.1: records every request, and answers 500 to the first
`fail_first` requests (or to all, with `always_fail`)."""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    fail_first: int = 0
    always_fail: bool = False
    requests: list[Received] = field(default_factory=list)  # every attempt, failed ones too
    delivered: list[Received] = field(default_factory=list)  # the ones answered 200

    def __post_init__(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = Received({k.lower(): v for k, v in self.headers.items()}, body)
                with receiver._lock:
                    receiver.requests.append(request)
                    failing = receiver.always_fail or len(receiver.requests) <= receiver.fail_first
                    if not failing:
                        receiver.delivered.append(request)
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
