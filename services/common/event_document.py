"""An event as integrators receive it (webhooks, MQTT, JSON lines, `anyanomaly events --json`)."""

from __future__ import annotations

from typing import Any

from anyanomaly.v1 import events_pb2

PHASE_NAMES = {events_pb2.EVENT_PHASE_OPEN: "OPEN", events_pb2.EVENT_PHASE_UPDATE: "UPDATE",
               events_pb2.EVENT_PHASE_CLOSE: "CLOSE"}


def event_json(event: events_pb2.Event, monitor_name: str = "") -> dict[str, Any]:
    """The event as integrators receive it (webhooks, MQTT, JSON lines, `--json`)."""
    return {
        "event_id": event.event_id, "cursor": event.cursor, "phase": PHASE_NAMES.get(event.phase, "UNSPECIFIED"),
        "monitor_id": event.monitor_id, "monitor_name": monitor_name, "job_id": event.job_id, "text": event.text,
        "start_seconds": round(event.start_seconds, 3), "end_seconds": round(event.end_seconds, 3),
        "start_wall_ms": event.start_wall_ms, "end_wall_ms": event.end_wall_ms,
        "peak_score": round(float(event.peak_score), 6), "peak_seconds": round(event.peak_seconds, 3),
        "reason": event.reason, "has_evidence": event.has_evidence, "created_ms": event.created_ms,
    }
