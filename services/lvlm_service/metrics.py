"""Prometheus metrics of lvlm_service (served on --metrics-port)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from services.lvlm_service.engine import Usage

CALLS = Counter("anyanomaly_lvlm_calls_total", "LVLM calls made (retries included)", ["backend", "mode"])
PROMPT_TOKENS = Counter("anyanomaly_lvlm_prompt_tokens_total", "prompt tokens sent", ["backend"])
COMPLETION_TOKENS = Counter("anyanomaly_lvlm_completion_tokens_total", "answer tokens received", ["backend"])
IMAGES = Counter("anyanomaly_lvlm_images_total", "images sent", ["backend"])
RETRIES = Counter("anyanomaly_lvlm_retries_total", "calls repeated (engine errors, unreadable answers)", ["backend"])
FAILURES = Counter("anyanomaly_lvlm_unscored_pairs_total", "(image, text) pairs left without a score",
                   ["backend", "reason"])
# The autoscaler's signal (k8s/components/autoscaling): vLLM's num_requests_waiting counts only
# what reached it; these count what lvlm_service holds back under --max-concurrency.
PENDING = Gauge("anyanomaly_lvlm_requests_pending", "requests accepted and not yet answered", ["backend"])
WAITING = Gauge("anyanomaly_lvlm_requests_waiting", "requests accepted but not yet sent to the LVLM server",
                ["backend"])
QUEUE_SECONDS = Histogram("anyanomaly_lvlm_queue_seconds", "time a call waited for an engine slot", ["backend"])
ENGINE_SECONDS = Histogram("anyanomaly_lvlm_engine_seconds", "time a call spent in the engine", ["backend"])


def watch_queue(backend: str, pending: Callable[[], float], waiting: Callable[[], float]) -> None:
    """Report a backend's queue on every scrape."""
    PENDING.labels(backend).set_function(pending)
    WAITING.labels(backend).set_function(waiting)


def _reason(error: str) -> str:
    for key in ("refused", "cut at max_tokens", "did not answer", "HTTP 429", "HTTP 5", "malformed", "JSON"):
        if key in error:
            return key.replace(" ", "_").lower()
    return "no_score"


def record(backend: str, mode: str, usage: Usage, calls: Sequence[Any]) -> None:
    CALLS.labels(backend, mode).inc(usage.calls)
    PROMPT_TOKENS.labels(backend).inc(usage.prompt_tokens)
    COMPLETION_TOKENS.labels(backend).inc(usage.completion_tokens)
    IMAGES.labels(backend).inc(usage.images)
    RETRIES.labels(backend).inc(usage.retries)
    for call in calls:
        QUEUE_SECONDS.labels(backend).observe(call.completion.queue_seconds)
        ENGINE_SECONDS.labels(backend).observe(call.completion.engine_seconds)
        for parsed in call.outcome.values():
            if not parsed.parsed:
                FAILURES.labels(backend, _reason(parsed.error)).inc()
