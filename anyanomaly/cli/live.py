"""`anyanomaly monitors | events | jobs`: the live API from the command line, for people and
scripts. `--json` prints one JSON object per line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from anyanomaly.v1 import (
    events_pb2,
    events_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    monitors_pb2,
    monitors_pb2_grpc,
    orchestrator_pb2,
)
from services.common.clients import open_channel
from services.common.config import environment
from services.common.errors import StartupError
from services.common.event_document import event_json
from services.common.images import image_format
from services.common.tls import ClientTls
from services.common.urls import is_loopback_host

DEFAULT_ADDRESS = "127.0.0.1:50050"
TOKEN_VARIABLE = "ANYANOMALY_TOKEN"
JOB_STATES = {name.removeprefix("JOB_STATE_").lower(): value for name, value in jobs_pb2.JobState.items() if value}
ANY_STATE = jobs_pb2.JOB_STATE_UNSPECIFIED


def connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-ca", default="", metavar="PEM", help="reach the orchestrator over TLS, trusting this CA")
    parser.add_argument("--tls-cert", default="", metavar="PEM", help="present this client certificate (mutual TLS)")
    parser.add_argument("--tls-key", default="", metavar="PEM", help="the key of --tls-cert")
    parser.add_argument("--token-file", default="", metavar="FILE",
                        help=f"send the bearer token in this file (default: ${TOKEN_VARIABLE})")


def client_token(args: argparse.Namespace) -> str:
    """The bearer token: from --token-file, else the environment; "" when none. Sending it in
    plaintext beyond this machine is warned about."""
    token = environment(TOKEN_VARIABLE).strip()
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise StartupError(f"cannot read the token file {args.token_file}: {exc.strerror or exc}") from None
    host = args.address.rpartition(":")[0] or args.address
    if token and not args.tls_ca and not is_loopback_host(host):
        print(f"warning: sending the token to {args.address} without TLS (anyone on the way can read it); "
              "give --tls-ca", file=sys.stderr)
    return token


def client_tls(args: argparse.Namespace) -> ClientTls | None:
    return ClientTls.from_settings(args.tls_ca, args.tls_cert, args.tls_key, ("--tls-ca", "--tls-cert", "--tls-key"))


def _address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"the orchestrator (default {DEFAULT_ADDRESS})")
    connection_options(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def _rule_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-t", "--text", dest="texts", action="append", required=True, help="an anomaly text; repeat")
    parser.add_argument("--threshold", type=float, default=0.0, help="open an event at this score (default 0.5)")
    parser.add_argument("--release", type=float, default=None, help="close below this (default: the threshold)")
    parser.add_argument("--min-duration", type=float, default=0.0, help="seconds above the threshold to open")
    parser.add_argument("--cooldown", type=float, default=0.0, help="seconds after a close before the next open")
    parser.add_argument("--max-per-hour", type=int, default=0, help="events per hour and text at most (0: any)")
    parser.add_argument("--segment-length", type=int, default=0, help="frames per segment (default 24)")


def add_commands(commands: Any) -> None:
    monitors = commands.add_parser("monitors", help="live sources watched for anomaly texts").add_subparsers(
        dest="action", required=True)
    create = monitors.add_parser("create", help="watch a stream (or loop a file) for texts")
    _address(create)
    create.add_argument("--source", required=True, help="rtsp://, rtsps://, http(s):// URI, or a file/folder to loop")
    create.add_argument("--name", default="")
    _rule_options(create)
    create.add_argument("--sample-fps", type=float, default=0.0, help="frames per second taken (0: all)")
    create.add_argument("--webhook", action="append", default=[], help="POST each event here (repeatable)")
    create.add_argument("--webhook-secret-file", type=Path, default=None,
                        help="file holding the HMAC-SHA256 key that signs webhook bodies")
    create.add_argument("--mqtt", default="", help="mqtt://host:1883 broker for events and ON/OFF states")
    create.add_argument("--mqtt-prefix", default="", help="topic prefix (default anyanomaly)")
    create.add_argument("--home-assistant", action="store_true", help="publish Home Assistant discovery")
    create.add_argument("--json-lines", default="", help="append events to this file (relative to <data dir>/exports)")
    for action, about in (("list", "all monitors"), ("get", "one monitor"), ("pause", "stop reading, keep it"),
                          ("resume", "read again"), ("delete", "remove it")):
        parser = monitors.add_parser(action, help=about)
        _address(parser)
        if action != "list":
            parser.add_argument("monitor_id")

    events = commands.add_parser("events", help="events of monitors and jobs").add_subparsers(
        dest="action", required=True)
    for action, about in (("watch", "follow new events (resumable with --since)"), ("list", "stored events")):
        parser = events.add_parser(action, help=about)
        _address(parser)
        parser.add_argument("--monitor", default="", help="only this monitor's")
        parser.add_argument("--job", default="", help="only this job's")
        parser.add_argument("--text", default="", help="only this text's")
        if action == "watch":
            parser.add_argument("--since", type=int, default=-1,
                                help="events after this cursor (0: all stored; default: only new ones)")
        else:
            parser.add_argument("--limit", type=int, default=100, help="at most this many")
    evidence = events.add_parser("evidence", help="write an event's images to a folder")
    _address(evidence)
    evidence.add_argument("event_id")
    evidence.add_argument("--output-dir", type=Path, required=True)

    jobs = commands.add_parser("jobs", help="long detections of files that survive restarts").add_subparsers(
        dest="action", required=True)
    submit = jobs.add_parser("submit", help="queue a file or frame folder")
    _address(submit)
    submit.add_argument("source", help="a video file or a frame folder (as the orchestrator sees it)")
    submit.add_argument("--name", default="")
    _rule_options(submit)
    for action, about in (("get", "one job"), ("cancel", "stop it"), ("watch", "its segments and events")):
        parser = jobs.add_parser(action, help=about)
        _address(parser)
        parser.add_argument("job_id")
        if action == "watch":
            parser.add_argument("--from-segment", type=int, default=0)
    listing = jobs.add_parser("list", help="jobs, oldest first")
    _address(listing)
    listing.add_argument("--state", choices=sorted(JOB_STATES), default=None)


def _rules(args: argparse.Namespace) -> list[events_pb2.EventRule]:
    rule = events_pb2.EventRule(threshold=args.threshold, min_duration_seconds=args.min_duration,
                                cooldown_seconds=args.cooldown, max_per_hour=args.max_per_hour)
    if args.release is not None:
        rule.release = args.release
    return [rule]


def _source(argument: str) -> orchestrator_pb2.VideoSource:
    if "://" in argument:
        return orchestrator_pb2.VideoSource(uri=argument)
    path = Path(argument).expanduser()
    location = str(path.resolve()) if path.exists() else argument
    return orchestrator_pb2.VideoSource(frame_folder=location) if path.is_dir() else orchestrator_pb2.VideoSource(
        path=location)


def _as_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _monitor_line(monitor: monitors_pb2.Monitor) -> str:
    state = monitors_pb2.MonitorState.Name(monitor.state).removeprefix("MONITOR_STATE_")
    why = f" ({monitor.state_reason})" if monitor.state_reason else ""
    return (f"{monitor.monitor_id}  {state}{why}  {monitor.spec.name or '-'}  texts: {', '.join(monitor.spec.texts)}"
            f"  frames {monitor.frames_read} (dropped {monitor.frames_dropped}), segments {monitor.segments_scored}"
            f" (dropped {monitor.segments_dropped}), lag {monitor.lag_seconds:.1f} s")


def _event_line(event: events_pb2.Event) -> str:
    body = event_json(event)
    owner = f"monitor {event.monitor_id}" if event.monitor_id else f"job {event.job_id}"
    return (f"#{event.cursor} {body['phase']:6} {event.text!r} {owner} {event.start_seconds:.1f}-"
            f"{event.end_seconds:.1f} s peak {event.peak_score:.2f} at {event.peak_seconds:.1f} s"
            f"{'  ' + event.reason[:120] if event.reason else ''}")


def _job_line(job: jobs_pb2.Job) -> str:
    state = jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
    source = job.source.path or job.source.frame_folder
    return (f"{job.job_id}  {state}{f' ({job.error})' if job.error else ''}  {job.name or '-'}  {source}  "
            f"segments {job.segments_done}{f', restarts {job.restarts}' if job.restarts else ''}")


def _emit(args: argparse.Namespace, document: dict[str, Any], line: str) -> None:
    print(json.dumps(document, separators=(",", ":")) if args.json else line, flush=True)


async def run(args: argparse.Namespace) -> int:
    tls, token = client_tls(args), client_token(args)
    async with open_channel(args.address, default_timeout=None, tls=tls, token=token) as channel:
        handler: Callable[[argparse.Namespace, Any], Any] = {
            "monitors": _monitors, "events": _events, "jobs": _jobs}[args.command]
        await handler(args, channel)
    return 0


async def _monitors(args: argparse.Namespace, channel: Any) -> None:
    stub: Any = monitors_pb2_grpc.MonitorsStub(channel)
    if args.action == "create":
        targets = []
        secret = args.webhook_secret_file.read_text().strip() if args.webhook_secret_file else ""
        for url in args.webhook:
            targets.append(monitors_pb2.DeliveryTarget(webhook=monitors_pb2.WebhookTarget(url=url, secret=secret)))
        if args.mqtt:
            targets.append(monitors_pb2.DeliveryTarget(mqtt=monitors_pb2.MqttTarget(
                url=args.mqtt, topic_prefix=args.mqtt_prefix, home_assistant_discovery=args.home_assistant)))
        if args.json_lines:
            targets.append(monitors_pb2.DeliveryTarget(json_lines=monitors_pb2.JsonLinesTarget(path=args.json_lines)))
        spec = monitors_pb2.MonitorSpec(
            name=args.name, source=_source(args.source), texts=args.texts, rules=_rules(args), targets=targets,
            sample_fps=args.sample_fps, options=orchestrator_pb2.DetectOptions(segment_length=args.segment_length))
        monitors = [await stub.CreateMonitor(monitors_pb2.CreateMonitorRequest(spec=spec))]
    elif args.action == "list":
        monitors, token = [], ""
        while True:
            page = await stub.ListMonitors(monitors_pb2.ListMonitorsRequest(page_token=token))
            monitors += list(page.monitors)
            if not (token := page.next_page_token):
                break
    else:
        method, request = {
            "get": (stub.GetMonitor, monitors_pb2.GetMonitorRequest),
            "pause": (stub.PauseMonitor, monitors_pb2.PauseMonitorRequest),
            "resume": (stub.ResumeMonitor, monitors_pb2.ResumeMonitorRequest),
            "delete": (stub.DeleteMonitor, monitors_pb2.DeleteMonitorRequest),
        }[args.action]
        monitors = [await method(request(monitor_id=args.monitor_id))]
    for monitor in monitors:
        _emit(args, _as_json(monitor), _monitor_line(monitor))


async def _events(args: argparse.Namespace, channel: Any) -> None:
    stub: Any = events_pb2_grpc.EventsStub(channel)
    if args.action == "evidence":
        evidence = await stub.GetEvidence(events_pb2.GetEvidenceRequest(event_id=args.event_id))
        args.output_dir.mkdir(parents=True, exist_ok=True)
        written = {}
        for name in ("key_frame", "position_context", "temporal_context"):
            data = getattr(evidence, name).data
            path = args.output_dir / f"{name}.{image_format(data) if image_format(data) == 'png' else 'jpg'}"
            path.write_bytes(data)
            written[name] = str(path)
        _emit(args, {"event_id": args.event_id, **written}, "\n".join(written.values()))
        return
    stream: AsyncIterator[events_pb2.Event]
    if args.action == "watch":
        stream = stub.WatchEvents(events_pb2.WatchEventsRequest(
            after_cursor=args.since, monitor_id=args.monitor, job_id=args.job, text=args.text))
    else:
        stream = _listed(stub, args)
    async for event in stream:
        _emit(args, event_json(event), _event_line(event))


async def _listed(stub: Any, args: argparse.Namespace) -> AsyncIterator[events_pb2.Event]:
    token, left = "", args.limit
    while left > 0:
        page = await stub.ListEvents(events_pb2.ListEventsRequest(
            monitor_id=args.monitor, job_id=args.job, text=args.text, page_size=min(left, 1000), page_token=token))
        for event in page.events:
            yield event
        left -= len(page.events)
        if not (token := page.next_page_token):
            return


async def _jobs(args: argparse.Namespace, channel: Any) -> None:
    stub: Any = jobs_pb2_grpc.JobsStub(channel)
    if args.action == "watch":
        request = jobs_pb2.WatchJobRequest(job_id=args.job_id, from_segment=args.from_segment)
        async for update in stub.WatchJob(request):
            kind = update.WhichOneof("update")
            if kind == "event":
                _emit(args, {"event": event_json(update.event)}, _event_line(update.event))
            elif kind == "segment":
                segment = update.segment
                _emit(args, _as_json(update), f"segment {segment.index} frames {segment.start_frame}-"
                      f"{segment.end_frame - 1}: {segment.score:.2f}")
            else:
                _emit(args, _as_json(update), kind or "")
        return
    if args.action == "submit":
        jobs = [await stub.SubmitJob(jobs_pb2.SubmitJobRequest(
            source=_source(args.source), texts=args.texts, rules=_rules(args), name=args.name,
            options=orchestrator_pb2.DetectOptions(segment_length=args.segment_length)))]
    elif args.action == "list":
        jobs, token = [], ""
        while True:
            page = await stub.ListJobs(jobs_pb2.ListJobsRequest(
                state=JOB_STATES[args.state] if args.state else ANY_STATE, page_token=token))
            jobs += list(page.jobs)
            if not (token := page.next_page_token):
                break
    elif args.action == "cancel":
        jobs = [await stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=args.job_id))]
    else:
        jobs = [await stub.GetJob(jobs_pb2.GetJobRequest(job_id=args.job_id))]
    for job in jobs:
        _emit(args, _as_json(job), _job_line(job))
