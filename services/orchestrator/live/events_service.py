"""The Events service: stored events, listed, watched from a cursor, and their evidence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from anyanomaly.v1 import common_pb2, events_pb2, events_pb2_grpc
from services.common.errors import InvalidInput, NotFound, NotReady, echo
from services.common.server import RpcContext
from services.orchestrator.live.access import LiveAccess
from services.orchestrator.live.recorder import EVIDENCE_FILES
from services.orchestrator.store.store import EventFilter

MAX_PAGE = 1000
WATCH_BATCH = 500


def _cursor_token(token: str) -> int:
    if token and not (token.isascii() and token.isdigit() and len(token) <= 18):
        raise InvalidInput(f"page_token {echo(token)} is not one this service returned")
    return int(token or 0)


class EventsServicer(events_pb2_grpc.EventsServicer):
    def __init__(self, live: LiveAccess) -> None:
        self._live = live

    async def ListEvents(self, request: events_pb2.ListEventsRequest, context: RpcContext
                         ) -> events_pb2.ListEventsResponse:
        store = self._live.require().store
        if not 0 <= request.page_size <= MAX_PAGE:
            raise InvalidInput(f"page_size must be 0 (100) to {MAX_PAGE}, got {request.page_size}")
        if request.since_ms < 0 or request.until_ms < 0:
            raise InvalidInput("since_ms and until_ms are Unix times in milliseconds (0: no bound)")
        size = request.page_size or 100
        events = await store.list_events(EventFilter(request.monitor_id, request.job_id, request.text),
                                         request.since_ms, request.until_ms, _cursor_token(request.page_token),
                                         size + 1)
        token = str(events[size - 1].cursor) if len(events) > size else ""
        return events_pb2.ListEventsResponse(events=events[:size], next_page_token=token)

    async def WatchEvents(self, request: events_pb2.WatchEventsRequest, context: RpcContext
                          ) -> AsyncIterator[events_pb2.Event]:
        live = self._live.require()
        if request.after_cursor < -1:
            raise InvalidInput(f"after_cursor must be -1 (only new events), 0 (all) or a cursor seen, got "
                               f"{request.after_cursor}")
        where = EventFilter(request.monitor_id, request.job_id, request.text)
        cursor = await live.store.last_cursor() if request.after_cursor == -1 else request.after_cursor
        while True:
            mark = live.changes.mark()
            events = await live.store.events_after(cursor, where, WATCH_BATCH)
            for event in events:
                yield event
            if events:
                cursor = events[-1].cursor
            elif live.changes.closed:  # stopping: the subscriber reconnects (elsewhere) from its cursor
                raise NotReady(f"the orchestrator is stopping; watch again after cursor {cursor}")
            else:
                await live.changes.wait(mark)

    async def GetEvidence(self, request: events_pb2.GetEvidenceRequest, context: RpcContext) -> events_pb2.Evidence:
        exists, evidence = await self._live.require().store.event_evidence(request.event_id)
        if not exists:
            raise NotFound(f"no event {echo(request.event_id)}")
        if evidence is None:
            raise NotFound(f"event {request.event_id} has no evidence: none was taken, or the retention budget "
                           "removed it")
        def read() -> dict[str, bytes]:  # off the event loop: the evidence volume may be slow
            try:
                return {p.stem: p.read_bytes() for p in evidence.directory.iterdir() if p.stem in EVIDENCE_FILES}
            except FileNotFoundError:  # removed by the retention budget since the query
                return {}

        images = await asyncio.to_thread(read)
        if EVIDENCE_FILES[0] not in images:  # the key frame is always kept; the contexts unless screened out
            raise NotFound(f"the evidence of event {request.event_id} was removed")
        key, position, temporal = (common_pb2.Image(data=images.get(name, b"")) for name in EVIDENCE_FILES)
        return events_pb2.Evidence(event_id=request.event_id, key_frame=key, position_context=position,
                                   temporal_context=temporal, segment_start_seconds=evidence.start_seconds,
                                   segment_end_seconds=evidence.end_seconds)
