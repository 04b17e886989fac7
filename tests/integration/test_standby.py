"""Restarts and standbys: two orchestrators on one store (one runs the jobs and monitors, the
other stands by and takes over when the first stops; SQLite and PostgreSQL), and what a crash
leaves open."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from anyanomaly.v1 import events_pb2, events_pb2_grpc, jobs_pb2, jobs_pb2_grpc, monitors_pb2, orchestrator_pb2
from services.common.clients import open_channel
from services.orchestrator.store.store import NewEvent, Store
from tests.conftest import scripted_stack
from tests.helpers.detect import frame_folder
from tests.helpers.stack import start_orchestrator


async def test_a_standby_orchestrator_takes_over_and_finishes_the_jobs(store_location: tuple[Path, str],
                                                                      tmp_path: Path) -> None:
    data_dir, url = store_location
    live = {"data_dir": str(data_dir), "database_url": url, "event_poll_seconds": 0.2, "holder_retry_seconds": 0.1}
    async with scripted_stack(**live) as stack:
        services = stack.stack
        standby = await start_orchestrator(services.clip.address, services.context.address, services.lvlm.address,
                                           **live)
        try:
            async with open_channel(stack.address) as active_channel, open_channel(standby.address) as channel:
                waiting: Any = jobs_pb2_grpc.JobsStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await waiting.ListJobs(jobs_pb2.ListJobsRequest())
                assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "another orchestrator runs" in (refused.value.details() or "")

                stack.lvlm.hold_after = stack.lvlm.calls + 6  # one segment, then the job waits
                job = await jobs_pb2_grpc.JobsStub(active_channel).SubmitJob(jobs_pb2.SubmitJobRequest(
                    source=orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 72))),
                    texts=["person running", "bicycle"], rules=[events_pb2.EventRule(threshold=0.05)]))
                assert await asyncio.to_thread(stack.lvlm.holding.wait, 120)
                await services.orchestrator.shutdown(1.0)  # the active one stops mid-job
                stack.lvlm.release()

                deadline = time.monotonic() + 60
                while True:  # the standby takes over within its retry interval
                    try:
                        finished = await waiting.GetJob(jobs_pb2.GetJobRequest(job_id=job.job_id))
                        if finished.state == jobs_pb2.JOB_STATE_SUCCEEDED:
                            break
                    except grpc.aio.AioRpcError as error:
                        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
                    assert time.monotonic() < deadline, "the standby did not finish the job"
                    await asyncio.sleep(0.1)
                assert finished.segments_done == 3 and finished.restarts == 1
        finally:
            await standby.shutdown(1.0)


async def test_an_event_a_crash_left_open_is_closed_when_its_monitor_starts_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = Store.open(data_dir)  # what a killed orchestrator left: a paused monitor with an OPEN event
    try:
        spec = monitors_pb2.MonitorSpec(source=orchestrator_pb2.VideoSource(uri="rtsp://127.0.0.1:1/cam"),
                                        texts=["bicycle"])
        await store.save_monitor("m1", spec, True, 1)
        opened = events_pb2.Event(event_id="e1", phase=events_pb2.EVENT_PHASE_OPEN, monitor_id="m1", text="bicycle",
                                  peak_score=0.9, created_ms=int(time.time() * 1000))
        await store.add_events([NewEvent(opened)])
    finally:
        store.close()
    async with scripted_stack(data_dir=str(data_dir)) as stack, open_channel(stack.address) as channel:
        listed = await events_pb2_grpc.EventsStub(channel).ListEvents(events_pb2.ListEventsRequest(monitor_id="m1"))
    assert [(e.event_id, e.phase) for e in listed.events] == [("e1", events_pb2.EVENT_PHASE_OPEN),
                                                               ("e1", events_pb2.EVENT_PHASE_CLOSE)]
    assert listed.events[1].peak_score == pytest.approx(0.9)
