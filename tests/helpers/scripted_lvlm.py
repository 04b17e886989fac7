"""ScriptedLVLM: answers for FakeOpenAIServer that are a deterministic function of the request,
so that scores differ per text, per stream and per segment.

The tiny random LVLM answers the same to everything, so every stream parses to the same
score and a test of fusion, the max over texts, smoothing or AUROC cannot tell right from
wrong. Here the score of a call is taken from a hash of (anomaly text, prompt kind P / P*,
image bytes): the key frame, the position context and the temporal context are different
images, and every segment has its own. Every answer is recorded, so a test can check that
each reported stream score is the one the server gave, then recompute everything built on
them with numpy/scipy on its own.

The answer has the shape the request asks for: JSON `{"score", "reason"}` under a JSON
schema, a JSON object keyed by text for multi-text schemas, the score as tokens with
log-probabilities in the fast mode, free text ("0.7. Reason: ...") otherwise (parity).
`hold_after=N` makes every call after the first N wait until `release()`; `holding` is set
once one waits, which is how a test knows a run is under way mid-video.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tests.helpers.fake_openai_server import Reply, prompt_text

_TEXT = re.compile(r"\*\*([^*]+)\*\*")


@dataclass(frozen=True)
class Answer:
    text: str
    kind: str  # "P" (key frame, position context) or "P*" (temporal context)
    image: str  # sha256 of the image bytes the server received
    score: float


def scripted_score(text: str, kind: str, image: bytes) -> float:
    """One decimal in [0, 1], from the text, the prompt kind and the image."""
    digest = hashlib.sha256(f"{text}\x00{kind}\x00".encode() + image).digest()
    return int.from_bytes(digest[:4], "big") % 11 / 10


def request_image(request: dict[str, Any]) -> bytes:
    user = next(m for m in request["messages"] if m["role"] == "user")
    url = str(user["content"][0]["image_url"]["url"])
    return base64.b64decode(url.split(",", 1)[1])


def _texts(prompt: str, schema: dict[str, Any]) -> list[str]:
    required = schema.get("required", [])
    if required and set(required) - {"score", "reason"}:
        return list(required)  # multi_text: the schema is keyed by the texts
    task = next(line for line in prompt.splitlines() if line.startswith("- **Task**"))
    return list(dict.fromkeys(_TEXT.findall(task)[1:]))  # "**Task**", then each text in bold


class ScriptedLVLM:
    def __init__(self, hold_after: int | None = None) -> None:
        self.answers: list[Answer] = []
        self.hold_after = hold_after
        self.holding = threading.Event()  # set once a call waits for release()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._calls = 0

    @property
    def calls(self) -> int:
        """Requests answered or waiting so far."""
        with self._lock:
            return self._calls

    def release(self) -> None:
        self._released.set()

    def __call__(self, request: dict[str, Any]) -> Reply:
        with self._lock:
            self._calls += 1
            held = self.hold_after is not None and self._calls > self.hold_after
        if held:
            self.holding.set()
            self._released.wait(timeout=120)
        prompt = prompt_text(request)
        kind = "P*" if "**Context**" in prompt else "P"
        image = request_image(request)
        schema = (request.get("structured_outputs") or {}).get("json") or {}
        texts = _texts(prompt, schema)
        scores = {t: scripted_score(t, kind, image) for t in texts}
        with self._lock:
            self.answers += [Answer(t, kind, hashlib.sha256(image).hexdigest(), s) for t, s in scores.items()]
        if len(texts) > 1:
            return Reply(json.dumps({t: {"score": s, "reason": f"{t}: scripted {s}"} for t, s in scores.items()}))
        text, score = texts[0], scores[texts[0]]
        if request.get("top_logprobs"):
            return Reply(f"{score:.1f}", logprobs=_score_tokens(score))
        if schema:
            return Reply(json.dumps({"score": score, "reason": f"{text}: scripted {score}"}))
        return Reply(f"{score:.1f}. Reason: {text}: scripted {score}.")

    def counts(self) -> Counter[tuple[str, str, float]]:
        """How often each (text, kind, score) was answered."""
        return Counter((a.text, a.kind, a.score) for a in self.answers)


def _score_tokens(score: float) -> list[tuple[str, list[tuple[str, float]]]]:
    """The greedy tokens of `score` with all probability on them (the expected value is exact)."""
    if score >= 1.0:
        return [("1", [("1", 0.0)])]
    digit = str(round(score * 10))
    return [("0", [("0", 0.0)]), (".", [(".", 0.0)]), (digit, [(digit, 0.0)])]
