"""AnyAnomaly's Python package: the client (`Client`, `AsyncClient`), the `anyanomaly` command,
the embedded stack launcher, the evaluation harness, and the contract (`anyanomaly.v1`).

    from anyanomaly import Client

The names below are loaded on first use, so that importing the contract (`anyanomaly.v1`, which
every service does) loads nothing else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anyanomaly.client import AsyncClient, Client, Detection, Segment, Summary, TextScore
    from anyanomaly.errors import AnyAnomalyError, FieldViolation

_EXPORTS = {
    "Client": "anyanomaly.client", "AsyncClient": "anyanomaly.client", "Detection": "anyanomaly.client",
    "Segment": "anyanomaly.client", "Summary": "anyanomaly.client", "TextScore": "anyanomaly.client",
    "AnyAnomalyError": "anyanomaly.errors", "FieldViolation": "anyanomaly.errors",
}
__all__ = ["AnyAnomalyError", "AsyncClient", "Client", "Detection", "FieldViolation", "Segment", "Summary",
           "TextScore"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'anyanomaly' has no attribute {name!r}")
