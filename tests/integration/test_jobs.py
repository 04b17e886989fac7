"""Jobs end to end: real services, the scripted LVLM, SQLite in a temp data dir; and an
orchestrator process killed with SIGKILL mid-job, restarted on the same data dir."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from anyanomaly.v1 import events_pb2, events_pb2_grpc, jobs_pb2, jobs_pb2_grpc, orchestrator_pb2
from services.common.clients import open_channel
from services.orchestrator.live.events import PHASES, EventEngine, rules_from_proto
from services.orchestrator.messages import outcome_from_proto
from services.orchestrator.store.store import Store
from tests.conftest import Scripted, scripted_stack
from tests.helpers.detect import detect, frame_folder, split
from tests.helpers.fixtures import REPO_ROOT
from tests.helpers.processes import die_with_this_process

TEXTS = ["person running", "bicycle"]
RULES = [events_pb2.EventRule(text="", threshold=0.05)]  # every text; low, so the scripted scores open events


def _submit(source: Path, name: str = "") -> jobs_pb2.SubmitJobRequest:
    return jobs_pb2.SubmitJobRequest(source=orchestrator_pb2.VideoSource(frame_folder=str(source)), texts=TEXTS,
                                     rules=RULES, name=name)


async def _watch(address: str, job_id: str, from_segment: int = 0) -> list[orchestrator_pb2.DetectUpdate]:
    async with open_channel(address) as channel:
        stub = jobs_pb2_grpc.JobsStub(channel)
        return [u async for u in stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id, from_segment=from_segment))]


def _without_events(updates: list[orchestrator_pb2.DetectUpdate]) -> list[orchestrator_pb2.DetectUpdate]:
    return [u for u in updates if u.WhichOneof("update") != "event"]


def _same_results(job: list[orchestrator_pb2.DetectUpdate], reference: list[orchestrator_pb2.DetectUpdate]) -> None:
    _, job_segments, job_summary = split(_without_events(job))
    _, segments, summary = split(_without_events(reference))
    assert [s.index for s in job_segments] == list(range(len(segments)))
    for ours, theirs in zip(job_segments, segments, strict=True):
        ours.ClearField("lvlm_usage")
        theirs.ClearField("lvlm_usage")
        assert ours == theirs
    assert list(job_summary.frame_scores) == list(summary.frame_scores)


async def test_a_job_stores_its_segments_and_events_and_matches_detect(scripted_live: Scripted,
                                                                       tmp_path: Path) -> None:
    folder = frame_folder(tmp_path, 120)  # 5 segments
    async with open_channel(scripted_live.address) as channel:
        jobs = jobs_pb2_grpc.JobsStub(channel)
        events = events_pb2_grpc.EventsStub(channel)
        job = await jobs.SubmitJob(_submit(folder, "five segments"))
        assert job.state == jobs_pb2.JOB_STATE_QUEUED and job.name == "five segments"
        updates = await _watch(scripted_live.address, job.job_id)
        reference = await detect(scripted_live.address, orchestrator_pb2.VideoSource(frame_folder=str(folder)), TEXTS)
        _same_results(updates, reference)

        done = await jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.job_id))
        assert (done.state, done.segments_done, done.num_frames, done.restarts) == (
            jobs_pb2.JOB_STATE_SUCCEEDED, 5, 120, 0)
        listed = await jobs.ListJobs(jobs_pb2.ListJobsRequest(state=jobs_pb2.JOB_STATE_SUCCEEDED))
        assert [j.job_id for j in listed.jobs] == [job.job_id]

        streamed = [u.event for u in updates if u.WhichOneof("update") == "event"]
        stored = (await events.ListEvents(events_pb2.ListEventsRequest(job_id=job.job_id))).events
        assert streamed and list(stored) == streamed
        assert {e.phase for e in streamed} >= {events_pb2.EVENT_PHASE_OPEN, events_pb2.EVENT_PHASE_CLOSE}
        opened = next(e for e in streamed if e.phase == events_pb2.EVENT_PHASE_OPEN)
        assert opened.has_evidence and opened.event_id.startswith(job.job_id)
        evidence = await events.GetEvidence(events_pb2.GetEvidenceRequest(event_id=opened.event_id))
        # The evidence of the event's latest peak. A frame folder's files travel as they are: the key
        # frame is the file at the peak segment's representative frame.
        latest = [e for e in streamed if e.event_id == opened.event_id][-1]
        peak_segment = next(u.segment for u in updates if u.WhichOneof("update") == "segment"
                            and u.segment.start_seconds == latest.peak_seconds)
        representative = next(s.representative for s in peak_segment.scores if s.text == opened.text)
        assert evidence.key_frame.data == sorted(folder.iterdir())[representative].read_bytes()
        assert evidence.position_context.data and evidence.temporal_context.data

        later = await _watch(scripted_live.address, job.job_id, from_segment=3)
        kinds = [u.WhichOneof("update") for u in later]
        assert kinds[0] == "started" and kinds[-1] == "summary"
        assert [u.segment.index for u in later if u.WhichOneof("update") == "segment"] == [3, 4]

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.job_id))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        for bad in (jobs_pb2.SubmitJobRequest(texts=TEXTS),
                    jobs_pb2.SubmitJobRequest(source=orchestrator_pb2.VideoSource(uri="rtsp://x/y"), texts=TEXTS),
                    _submit(folder).__class__(source=_submit(folder).source, texts=["ok"],
                                              rules=[events_pb2.EventRule(text="other")])):
            with pytest.raises(grpc.aio.AioRpcError) as rejected:
                await jobs.SubmitJob(bad)
            assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await jobs.GetJob(jobs_pb2.GetJobRequest(job_id="nope"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_cancelled_job_stops_and_says_so(tmp_path: Path) -> None:
    # One segment at a time, so the first calls are all segment 0's.
    async with scripted_stack(data_dir=str(tmp_path / "data"), event_poll_seconds=0.2,
                              max_segments_in_flight=1) as stack:
        stack.lvlm.hold_after = 3 * len(TEXTS)  # the first segment's calls, then every call waits
        async with open_channel(stack.address) as channel:
            jobs: Any = jobs_pb2_grpc.JobsStub(channel)  # the stubs' types describe the sync API
            job = await jobs.SubmitJob(_submit(frame_folder(tmp_path, 120)))
            watch = jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.job_id))
            seen = [await watch.read(), await watch.read()]  # started, segment 0
            assert [u.WhichOneof("update") for u in seen] == ["started", "segment"]
            cancelled = await jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.job_id))
            stack.lvlm.release()
            assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED and cancelled.segments_done == 1
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while True:  # segment 0's events, then the end
                    assert (await watch.read()).WhichOneof("update") == "event"
            assert ended.value.code() == grpc.StatusCode.CANCELLED


def _start_orchestrator(stack: Scripted, data_dir: Path, port_file: Path) -> subprocess.Popen[bytes]:
    port_file.unlink(missing_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "services.orchestrator", "--host", "127.0.0.1", "--port", "0", "--port-file",
         str(port_file), "--data-dir", str(data_dir), "--clip-address", stack.stack.clip.address,
         "--context-address", stack.stack.context.address, "--lvlm-address", stack.stack.lvlm.address,
         "--event-poll-seconds", "0.2", "--log-format", "text"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_this_process)


async def _serving(process: subprocess.Popen[bytes], port_file: Path) -> str:
    """The orchestrator's address once it answers SERVING."""
    deadline = time.monotonic() + 120
    while not port_file.exists():
        assert process.poll() is None, "the orchestrator exited"
        assert time.monotonic() < deadline, "no port file"
        await asyncio.sleep(0.05)  # polling for the file; the services of this test run on this loop
    address = f"127.0.0.1:{port_file.read_text().strip()}"
    async with open_channel(address) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        while (await health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=60)
               ).status != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline
    return address


async def test_a_job_killed_mid_run_resumes_on_restart_with_each_segment_once(tmp_path: Path) -> None:
    folder = frame_folder(tmp_path, 144)  # 6 segments
    data_dir, port_file = tmp_path / "data", tmp_path / "port"
    async with scripted_stack() as stack:
        reference = await detect(stack.address, orchestrator_pb2.VideoSource(frame_folder=str(folder)), TEXTS)
        calls_per_segment = len(stack.lvlm.answers) // 6
        stack.lvlm.answers.clear()
        stack.lvlm.hold_after = stack.lvlm.calls + 2 * calls_per_segment + 1  # two segments, then the third waits
        first = _start_orchestrator(stack, data_dir, port_file)
        try:
            address = await _serving(first, port_file)
            async with open_channel(address) as channel:
                job = await jobs_pb2_grpc.JobsStub(channel).SubmitJob(_submit(folder))
            assert await asyncio.to_thread(stack.lvlm.holding.wait, 120)
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
        finally:
            first.kill()
            stack.lvlm.release()
        second = _start_orchestrator(stack, data_dir, port_file)
        try:
            address = await _serving(second, port_file)
            updates = await _watch(address, job.job_id)
            async with open_channel(address) as channel:
                finished = await jobs_pb2_grpc.JobsStub(channel).GetJob(jobs_pb2.GetJobRequest(job_id=job.job_id))
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(60)
    _same_results(updates, reference)
    assert finished.state == jobs_pb2.JOB_STATE_SUCCEEDED and finished.restarts == 1
    store = Store.open(data_dir)
    try:
        rows = store.database.call(lambda t: t.all("SELECT segment FROM job_segments WHERE job_id = ? ORDER BY 1",
                                                   (job.job_id,)))
        stored = [e for e in store.database.call(lambda t: t.all(
            "SELECT body FROM events WHERE job_id = ? ORDER BY cursor", (job.job_id,)))]
    finally:
        store.close()
    assert [r[0] for r in rows] == list(range(6))  # each segment stored once
    # The events are those of the uninterrupted run's segments: none lost or stored twice.
    numbers = itertools.count(1)
    engine = EventEngine(rules_from_proto(RULES, TEXTS), lambda: f"{job.job_id}.{next(numbers)}")
    _, segments, _ = split(reference)
    changes = [c for s in segments for c in engine.observe(outcome_from_proto(s))] + engine.finish()
    expected = [(c.event_id, PHASES[c.phase], c.peak.score) for c in changes]
    events = [events_pb2.Event.FromString(bytes(row[0])) for row in stored]
    close_to: Any = pytest.approx  # peak scores travel as float32
    assert [(e.event_id, e.phase, close_to(e.peak_score)) for e in events] == expected
    # Only the segment in flight at the kill was scored twice: the two stored before it were not.
    assert len(stack.lvlm.answers) <= (6 + 2) * calls_per_segment


async def test_an_event_on_a_segment_the_cascade_screened_out_keeps_the_key_frame(scripted_live: Scripted,
                                                                                    tmp_path: Path) -> None:
    """Such a text was judged on its key frame alone: that frame is its evidence, without contexts."""
    folder = frame_folder(tmp_path, 96)
    request = _submit(folder)
    request.options.cascade_threshold = 1.0  # only a screening score of 1.0 passes
    async with open_channel(scripted_live.address) as channel:
        job = await jobs_pb2_grpc.JobsStub(channel).SubmitJob(request)
        updates = await _watch(scripted_live.address, job.job_id)
        segments = [u.segment for u in updates if u.WhichOneof("update") == "segment"]
        screened = {(s.start_seconds, t.text): t.representative for s in segments for t in s.scores if t.screened_out}
        assert screened
        checked = 0
        latest = {u.event.event_id: u.event for u in updates if u.WhichOneof("update") == "event"}
        for event in latest.values():  # the evidence is the latest peak's
            if event.has_evidence and (event.peak_seconds, event.text) in screened:
                evidence = await events_pb2_grpc.EventsStub(channel).GetEvidence(
                    events_pb2.GetEvidenceRequest(event_id=event.event_id))
                frame = screened[(event.peak_seconds, event.text)]
                assert evidence.key_frame.data == sorted(folder.iterdir())[frame].read_bytes()
                assert not evidence.position_context.data and not evidence.temporal_context.data
                checked += 1
    assert checked
