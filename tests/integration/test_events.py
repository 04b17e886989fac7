"""The Events service over real jobs' events: listing, watching from a cursor, idle streams."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from anyanomaly.v1 import events_pb2, events_pb2_grpc, jobs_pb2, jobs_pb2_grpc, orchestrator_pb2
from services.common.clients import open_channel
from tests.conftest import Scripted, scripted_stack
from tests.helpers.detect import frame_folder

TEXTS = ["person running", "bicycle"]


async def _run_job(stub: Any, folder: Path) -> str:  # the stubs' types describe the sync API
    job = await stub.SubmitJob(jobs_pb2.SubmitJobRequest(
        source=orchestrator_pb2.VideoSource(frame_folder=str(folder)), texts=TEXTS,
        rules=[events_pb2.EventRule(threshold=0.05)]))
    async for _ in stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.job_id)):
        pass
    return job.job_id


async def _take(watch: Any, count: int) -> list[events_pb2.Event]:
    return [await asyncio.wait_for(watch.read(), 60) for _ in range(count)]


async def test_watching_resumes_from_a_cursor_without_loss_or_repeats(scripted_live: Scripted,
                                                                      tmp_path: Path) -> None:
    async with open_channel(scripted_live.address) as channel:
        jobs, events = jobs_pb2_grpc.JobsStub(channel), events_pb2_grpc.EventsStub(channel)
        first_job = await _run_job(jobs, frame_folder(tmp_path, 72, "first"))
        first = list((await events.ListEvents(events_pb2.ListEventsRequest())).events)
        assert first and [e.cursor for e in first] == list(range(1, len(first) + 1))
        assert {e.job_id for e in first} == {first_job}

        only_new = events.WatchEvents(events_pb2.WatchEventsRequest(after_cursor=-1))
        everything = events.WatchEvents(events_pb2.WatchEventsRequest(after_cursor=0))
        assert await _take(everything, len(first)) == first
        second_job = await _run_job(jobs, frame_folder(tmp_path, 96, "second"))
        second = list((await events.ListEvents(events_pb2.ListEventsRequest(job_id=second_job))).events)
        assert second and second[0].cursor == first[-1].cursor + 1
        assert await _take(only_new, len(second)) == second  # nothing from before it started

        # A subscriber that dropped after a few events reconnects with the last cursor it saw.
        part = await _take(everything, 2)
        everything.cancel()
        resumed = events.WatchEvents(events_pb2.WatchEventsRequest(after_cursor=part[-1].cursor))
        assert part + await _take(resumed, len(second) - 2) == second
        only_new.cancel()
        resumed.cancel()

        filtered = events.WatchEvents(events_pb2.WatchEventsRequest(job_id=second_job, text=TEXTS[1]))
        wanted = [e for e in second if e.text == TEXTS[1]]
        assert await _take(filtered, len(wanted)) == wanted
        filtered.cancel()

        paged = await events.ListEvents(events_pb2.ListEventsRequest(page_size=3))
        rest = await events.ListEvents(events_pb2.ListEventsRequest(page_token=paged.next_page_token))
        assert list(paged.events) + list(rest.events) == first + second and not rest.next_page_token
        for bad in (events_pb2.ListEventsRequest(page_token="x"), events_pb2.ListEventsRequest(page_size=5000)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await events.ListEvents(bad)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await events.GetEvidence(events_pb2.GetEvidenceRequest(event_id="nope"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_quiet_watch_survives_client_keepalive_pings(scripted_live: Scripted) -> None:
    # grpcio ends a quiet stream after three pings unless the server lifts the strike limit.
    async with open_channel(scripted_live.address, keepalive_seconds=1) as channel:
        watch = events_pb2_grpc.EventsStub(channel).WatchEvents(events_pb2.WatchEventsRequest(after_cursor=-1))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(watch.read(), 6)


async def test_without_a_data_dir_live_services_say_how_to_get_them() -> None:
    async with scripted_stack() as stack, open_channel(stack.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await events_pb2_grpc.EventsStub(channel).ListEvents(events_pb2.ListEventsRequest())
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--data-dir" in (refused.value.details() or "")
