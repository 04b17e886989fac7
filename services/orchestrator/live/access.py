"""What the Jobs, Monitors and Events services share, once the orchestrator has a data dir."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services.common.errors import FailedPrecondition
from services.orchestrator.live.notify import Changes
from services.orchestrator.store.store import Store

if TYPE_CHECKING:
    from services.orchestrator.live.jobs import JobRunner
    from services.orchestrator.live.monitors import MonitorRunners


@dataclass
class Live:
    store: Store
    changes: Changes
    jobs: JobRunner
    monitors: MonitorRunners
    background: list[asyncio.Task[None]] = field(default_factory=list)


class LiveAccess:
    """The live state, or why there is none (no data dir, still starting)."""

    def __init__(self, missing_reason: str) -> None:
        self.live: Live | None = None
        self.missing_reason = missing_reason

    def require(self) -> Live:
        if self.live is None:
            raise FailedPrecondition(self.missing_reason)
        return self.live
