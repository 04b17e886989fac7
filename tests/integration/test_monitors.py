"""Monitors end to end: real services and the scripted LVLM, a frame folder played in a loop or
a real RTSP camera (GStreamer), a webhook receiver, a real Mosquitto broker, JSON lines."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from anyanomaly.v1 import events_pb2, events_pb2_grpc, monitors_pb2, monitors_pb2_grpc, orchestrator_pb2
from services.common.clients import open_channel
from services.orchestrator.store.store import Store
from tests.conftest import Scripted, scripted_stack
from tests.helpers import rtsp_camera
from tests.helpers.detect import frame_folder
from tests.helpers.fixtures import avenue_clip
from tests.helpers.mosquitto import Subscriber, mosquitto
from tests.helpers.webhook import WebhookReceiver

TEXTS = ["person running", "bicycle"]
SECRET = "s3cret-key"
OPEN, UPDATE, CLOSE = events_pb2.EVENT_PHASE_OPEN, events_pb2.EVENT_PHASE_UPDATE, events_pb2.EVENT_PHASE_CLOSE


async def until(condition: Callable[[], Any], what: str, timeout: float = 90) -> Any:
    """Poll an async condition until it holds (the system under test runs on this loop)."""
    deadline = time.monotonic() + timeout
    while not (result := await condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
    return result


def verified(received: Any) -> dict[str, Any]:
    """The webhook body after checking its signature the way the README tells receivers to."""
    timestamp = received.headers["x-anyanomaly-timestamp"]
    expected = "sha256=" + hmac.new(SECRET.encode(), f"{timestamp}.".encode() + received.body,
                                    hashlib.sha256).hexdigest()
    assert hmac.compare_digest(received.headers["x-anyanomaly-signature"], expected)
    assert abs(time.time() - int(timestamp)) < 600
    body: dict[str, Any] = json.loads(received.body)
    return body


async def test_a_monitor_opens_updates_pauses_and_delivers_everywhere(scripted_live: Scripted,
                                                                      tmp_path: Path) -> None:
    folder = frame_folder(tmp_path, 24)  # one segment, played again and again at 25 fps
    with WebhookReceiver(fail_first=2) as hook, WebhookReceiver(always_fail=True) as broken, \
            mosquitto() as broker:
        listener = Subscriber(broker)
        spec = monitors_pb2.MonitorSpec(
            name="gate", source=orchestrator_pb2.VideoSource(frame_folder=str(folder)), texts=TEXTS,
            rules=[events_pb2.EventRule(threshold=0.05)],
            targets=[monitors_pb2.DeliveryTarget(webhook=monitors_pb2.WebhookTarget(url=hook.url, secret=SECRET)),
                     monitors_pb2.DeliveryTarget(webhook=monitors_pb2.WebhookTarget(url=broken.url)),
                     monitors_pb2.DeliveryTarget(mqtt=monitors_pb2.MqttTarget(
                         url=broker, topic_prefix="site", home_assistant_discovery=True)),
                     monitors_pb2.DeliveryTarget(json_lines=monitors_pb2.JsonLinesTarget(path="events/gate.jsonl"))])
        async with open_channel(scripted_live.address) as channel:
            monitors: Any = monitors_pb2_grpc.MonitorsStub(channel)
            events: Any = events_pb2_grpc.EventsStub(channel)
            created = await monitors.CreateMonitor(monitors_pb2.CreateMonitorRequest(spec=spec))
            monitor_id = created.monitor_id
            assert not created.spec.targets[0].webhook.secret  # write-only

            async def listed(**where: Any) -> list[events_pb2.Event]:
                request = events_pb2.ListEventsRequest(monitor_id=monitor_id, **where)
                return list((await events.ListEvents(request)).events)

            async def get() -> monitors_pb2.Monitor:
                return await monitors.GetMonitor(monitors_pb2.GetMonitorRequest(monitor_id=monitor_id))

            opened = await until(lambda: _phases(listed(), OPEN, 2), "an OPEN event per text")
            assert {e.text for e in opened} == set(TEXTS) and all(e.start_wall_ms > 0 for e in opened)
            live = await get()
            assert live.state == monitors_pb2.MONITOR_STATE_LIVE and live.segments_scored >= 1
            assert live.frames_read >= 24 and live.last_segment_wall_ms > 0
            evidence = await events.GetEvidence(events_pb2.GetEvidenceRequest(event_id=opened[0].event_id))
            assert evidence.key_frame.data in {p.read_bytes() for p in folder.iterdir()}

            # New texts at run time: the open events close, the source stays connected.
            frames_before = (await get()).frames_read
            changed = monitors_pb2.MonitorSpec()
            changed.CopyFrom(spec)
            changed.targets[0].webhook.secret = ""  # left empty: the stored secret is kept
            del changed.texts[:]
            changed.texts.append("bicycle")
            await monitors.UpdateMonitor(monitors_pb2.UpdateMonitorRequest(monitor_id=monitor_id, spec=changed))
            closed = await until(lambda: _phases(listed(), CLOSE, 2), "the CLOSE of both events")
            assert {e.event_id for e in closed} == {e.event_id for e in opened}
            await until(lambda: _phases(listed(text="bicycle"), OPEN, 2), "a new bicycle event")
            after = await get()
            assert after.state == monitors_pb2.MONITOR_STATE_LIVE and list(after.spec.texts) == ["bicycle"]
            assert after.frames_read > frames_before

            paused = await monitors.PauseMonitor(monitors_pb2.PauseMonitorRequest(monitor_id=monitor_id))
            assert paused.state == monitors_pb2.MONITOR_STATE_PAUSED
            every = await until(lambda: _phases(listed(), CLOSE, 3), "the close of the bicycle event")
            frames_paused = (await get()).frames_read
            everything = await listed()
            last = everything[-1].cursor

            # Delivered everywhere, in order, at least once; the receiver that failed twice got it.
            await until(lambda: _async(lambda: len(hook.delivered) >= len(everything)), "webhook deliveries")
            bodies = [verified(r) for r in hook.delivered]
            assert [b["cursor"] for b in bodies] == [e.cursor for e in everything]
            assert [b["phase"] for b in bodies[:2]] == ["OPEN", "OPEN"] and len(hook.requests) == len(bodies) + 2
            lines = _json_lines(tmp_path)
            assert lines == [r.body for r in hook.delivered]
            store = Store.open(tmp_path / "data")
            try:
                letters = await until(lambda: _dead_letters(store, len(everything)), "dead letters")
            finally:
                store.close()
            assert [(t, e.cursor) for t, _, _, e in letters] == [(f"webhook {broken.url}", e.cursor)
                                                                  for e in everything]
            messages = await until(lambda: _async(lambda: _states_off(listener, TEXTS)), "MQTT state OFF")
            topics = {t for t, _, _ in messages}
            for text in TEXTS:
                key = text.replace(" ", "_")
                assert f"homeassistant/binary_sensor/anyanomaly_{monitor_id}_{key}/config" in topics
                assert f"site/{monitor_id}/{key}/event" in topics
            events_json = [json.loads(p) for t, p, _ in messages if t.endswith("/event")]
            assert [e["cursor"] for e in events_json] == [e.cursor for e in everything]
            assert every[-1].cursor == last

            resumed = await monitors.ResumeMonitor(monitors_pb2.ResumeMonitorRequest(monitor_id=monitor_id))
            assert resumed.state != monitors_pb2.MONITOR_STATE_PAUSED
            await until(lambda: _async_get(get, lambda m: m.frames_read > frames_paused), "frames after resume")
            await monitors.DeleteMonitor(monitors_pb2.DeleteMonitorRequest(monitor_id=monitor_id))
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await get()
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        listener.close()


async def _phases(events: Any, phase: int, count: int) -> list[events_pb2.Event] | None:
    found = [e for e in await events if e.phase == phase]
    return found if len(found) >= count else None


async def _async(check: Callable[[], Any]) -> Any:
    return check()


async def _async_get(get: Callable[[], Any], check: Callable[[monitors_pb2.Monitor], bool]
                     ) -> monitors_pb2.Monitor | None:
    """The monitor, once `check` holds for it."""
    monitor: monitors_pb2.Monitor = await get()
    return monitor if check(monitor) else None


def _json_lines(tmp_path: Path) -> list[bytes]:
    return (tmp_path / "data" / "exports" / "events" / "gate.jsonl").read_bytes().splitlines()


async def _dead_letters(store: Store, count: int) -> Any:
    letters = await store.dead_letters()
    return letters if len(letters) >= count else None


def _states_off(listener: Subscriber, texts: list[str]) -> list[tuple[str, bytes, bool]] | None:
    messages = listener.received()
    states = {t: p for t, p, _ in messages if t.endswith("/state")}
    wanted = [t for t in states if any(t.endswith(f"/{text.replace(' ', '_')}/state") for text in texts)]
    return messages if len(wanted) == len(texts) and all(states[t] == b"OFF" for t in wanted) else None


async def test_a_monitor_that_falls_behind_drops_whole_segments(tmp_path: Path) -> None:
    async with scripted_stack(data_dir=str(tmp_path / "data"), max_lag_segments=1) as stack:
        stack.lvlm.hold_after = 0  # every LVLM call waits: scoring falls behind the source
        spec = monitors_pb2.MonitorSpec(source=orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(
            tmp_path, 24))), texts=["bicycle"], options=orchestrator_pb2.DetectOptions(segment_length=8))
        async with open_channel(stack.address) as channel:
            monitors: Any = monitors_pb2_grpc.MonitorsStub(channel)
            monitor_id = (await monitors.CreateMonitor(monitors_pb2.CreateMonitorRequest(spec=spec))).monitor_id
            request = monitors_pb2.GetMonitorRequest(monitor_id=monitor_id)
            behind = await until(lambda: _async_get(lambda: monitors.GetMonitor(request),
                                                    lambda m: m.segments_dropped >= 3), "dropped segments")
            assert behind.segments_scored == 0 and behind.frames_dropped >= 3 * 8
            dropped = (await monitors.GetMonitor(request)).segments_dropped
            stack.lvlm.release()
            await until(lambda: _async_get(lambda: monitors.GetMonitor(request), lambda m: m.segments_scored >= 2),
                        "scoring after the release")
            final = await monitors.GetMonitor(request)
            # Read, dropped and scored add up: nothing queues without bound in between.
            in_flight = final.frames_read - final.frames_dropped - 8 * final.segments_scored
            assert final.segments_dropped >= dropped and 0 <= in_flight <= 8 * (1 + 2 + 1)
            await monitors.DeleteMonitor(request)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_camera_that_goes_away_is_reconnected(tmp_path: Path) -> None:
    folder = frame_folder(tmp_path, 50)
    port = _free_port()
    log = tmp_path / "camera.log"
    camera = rtsp_camera.start(port, folder, log)
    async with scripted_stack(data_dir=str(tmp_path / "data"), stream_timeout_seconds=2.0,
                              reconnect_min_seconds=0.2, reconnect_max_seconds=1.0) as stack:
        spec = monitors_pb2.MonitorSpec(source=orchestrator_pb2.VideoSource(uri=f"rtsp://127.0.0.1:{port}/cam"),
                                        texts=["bicycle"], sample_fps=10)
        async with open_channel(stack.address) as channel:
            monitors: Any = monitors_pb2_grpc.MonitorsStub(channel)
            monitor_id = (await monitors.CreateMonitor(monitors_pb2.CreateMonitorRequest(spec=spec))).monitor_id
            request = monitors_pb2.GetMonitorRequest(monitor_id=monitor_id)

            async def state(check: Callable[[monitors_pb2.Monitor], bool], what: str) -> monitors_pb2.Monitor:
                try:
                    result: monitors_pb2.Monitor = await until(
                        lambda: _async_get(lambda: monitors.GetMonitor(request), check), what)
                except AssertionError as timeout:  # say where it stood
                    raise AssertionError(f"{timeout}; the monitor: {await monitors.GetMonitor(request)}; camera "
                                         f"exit code {camera.poll()}; its log: {log.read_text()[-2000:]}") from None
                return result

            try:
                first = await state(lambda m: m.state == monitors_pb2.MONITOR_STATE_LIVE and m.segments_scored >= 1,
                                    "live and scoring")
                assert first.frames_dropped > 0  # sampled 25 -> 10 fps
                camera.send_signal(signal.SIGKILL)
                camera.wait()
                broken = await state(lambda m: m.state == monitors_pb2.MONITOR_STATE_RECONNECTING, "RECONNECTING")
                assert broken.state_reason
                camera = rtsp_camera.start(port, folder, log)
                back = await state(lambda m: m.state == monitors_pb2.MONITOR_STATE_LIVE
                                   and m.segments_scored > broken.segments_scored, "live again and scoring")
                assert back.frames_read > broken.frames_read and not back.state_reason
            finally:
                await monitors.DeleteMonitor(request)
                camera.kill()
                camera.wait()


async def test_bad_monitor_specs_are_refused_with_what_to_change(scripted_live: Scripted, tmp_path: Path) -> None:
    folder = str(frame_folder(tmp_path, 24))
    good = monitors_pb2.MonitorSpec(source=orchestrator_pb2.VideoSource(frame_folder=folder), texts=["bicycle"])

    def spec(**changes: Any) -> monitors_pb2.MonitorSpec:
        changed = monitors_pb2.MonitorSpec()
        changed.CopyFrom(good)
        for name, value in changes.items():
            if name == "targets":
                changed.targets.extend(value)
            elif name == "rules":
                changed.rules.extend(value)
            elif isinstance(value, Message):
                getattr(changed, name).CopyFrom(value)
            else:
                setattr(changed, name, value)
        return changed

    bad = {
        "one source": spec(source=orchestrator_pb2.VideoSource()),
        "unsupported stream URI": spec(source=orchestrator_pb2.VideoSource(uri="ftp://camera/1")),
        "no such file": spec(source=orchestrator_pb2.VideoSource(path=str(tmp_path / "missing.mp4"))),
        "sample_fps": spec(sample_fps=-1.0),
        "webhook url": spec(targets=[monitors_pb2.DeliveryTarget(webhook=monitors_pb2.WebhookTarget(url="file:///x"))]),
        "outside <data dir>/exports": spec(targets=[monitors_pb2.DeliveryTarget(
            json_lines=monitors_pb2.JsonLinesTarget(path="../../etc/cron.d/x"))]),
        "mqtt url": spec(targets=[monitors_pb2.DeliveryTarget(mqtt=monitors_pb2.MqttTarget(url="http://broker"))]),
        "mqtt://host[:port]": spec(targets=[monitors_pb2.DeliveryTarget(mqtt=monitors_pb2.MqttTarget(
            url="mqtt://broker:99999"))]),
        "set webhook, mqtt or json_lines": spec(targets=[monitors_pb2.DeliveryTarget()]),
        "not detected": spec(rules=[events_pb2.EventRule(text="car")]),
        "release must be": spec(rules=[events_pb2.EventRule(threshold=0.5, release=0.9)]),
    }
    async with open_channel(scripted_live.address) as channel:
        monitors: Any = monitors_pb2_grpc.MonitorsStub(channel)
        for message, wrong in bad.items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await monitors.CreateMonitor(monitors_pb2.CreateMonitorRequest(spec=wrong))
                pytest.fail(f"accepted: {message}")
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message
            assert message in (refused.value.details() or ""), refused.value.details()
        with_password = spec(targets=[monitors_pb2.DeliveryTarget(mqtt=monitors_pb2.MqttTarget(
            url="mqtt://camera-user:hunter2@127.0.0.1:1"))])
        created = await monitors.CreateMonitor(monitors_pb2.CreateMonitorRequest(spec=with_password))
        shown = await monitors.GetMonitor(monitors_pb2.GetMonitorRequest(monitor_id=created.monitor_id))
        assert shown.spec.targets[0].mqtt.url == "mqtt://camera-user:***@127.0.0.1:1"
        moved = spec(source=orchestrator_pb2.VideoSource(uri="rtsp://elsewhere/1"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await monitors.UpdateMonitor(monitors_pb2.UpdateMonitorRequest(monitor_id=created.monitor_id, spec=moved))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "source cannot change" in (refused.value.details() or "")
        # A GetMonitorRequest for Pause and Delete, as clients built before they had their own request
        # messages send it: the same wire form.
        for method in (monitors.GetMonitor, monitors.PauseMonitor, monitors.DeleteMonitor):
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await method(monitors_pb2.GetMonitorRequest(monitor_id="nope"))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        listed = await monitors.ListMonitors(monitors_pb2.ListMonitorsRequest())
        assert [m.monitor_id for m in listed.monitors] == [created.monitor_id]
        await monitors.DeleteMonitor(monitors_pb2.DeleteMonitorRequest(monitor_id=created.monitor_id))


async def test_a_monitor_whose_frames_break_a_limit_fails_and_says_why(tmp_path: Path) -> None:
    async with scripted_stack(data_dir=str(tmp_path / "data"), max_image_pixels=100 * 100) as stack, \
            open_channel(stack.address) as channel:
        monitors: Any = monitors_pb2_grpc.MonitorsStub(channel)
        video = monitors_pb2.MonitorSpec(source=orchestrator_pb2.VideoSource(path=str(avenue_clip("21"))),
                                         texts=["bicycle"])
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # a video's declared size is known at once
            await monitors.CreateMonitor(monitors_pb2.CreateMonitorRequest(spec=video))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "frames are 640x360, above the limit of 10000 pixels" in (refused.value.details() or "")
        # A frame folder's pictures are read as it plays: the monitor starts, then fails.
        spec = monitors_pb2.MonitorSpec(source=orchestrator_pb2.VideoSource(
            frame_folder=str(frame_folder(tmp_path, 24))), texts=["bicycle"])
        monitor_id = (await monitors.CreateMonitor(monitors_pb2.CreateMonitorRequest(spec=spec))).monitor_id
        request = monitors_pb2.GetMonitorRequest(monitor_id=monitor_id)
        failed = await until(lambda: _async_get(lambda: monitors.GetMonitor(request),
                                                lambda m: m.state == monitors_pb2.MONITOR_STATE_FAILED),
                             "FAILED")  # no retry: the frames will not shrink
        assert "above the limit of 10000 pixels" in failed.state_reason and failed.segments_scored == 0
        assert (await monitors.GetMonitor(request)).state == monitors_pb2.MONITOR_STATE_FAILED  # and stays
        await monitors.DeleteMonitor(request)
