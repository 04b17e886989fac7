"""The `anyanomaly` command.

    anyanomaly serve  [--models default|tiny] [--lvlm-url URL --lvlm-model NAME]
    anyanomaly detect SOURCE -t TEXT [-t TEXT ...] [--models default|tiny] [--output FILE]
                      [--address HOST:PORT] [--lvlm-url URL --lvlm-model NAME]
    anyanomaly eval   --dataset c-shtech|c-avenue|shtech|avenue|custom ... (see --help)
    anyanomaly monitors create|list|get|pause|resume|delete ...   (live cameras; serve --data-dir)
    anyanomaly events watch|list|evidence ...
    anyanomaly jobs submit|get|list|cancel|watch ...

Without --address, `detect` starts the embedded single-machine stack for the duration
of the command.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import json
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from anyanomaly import planning
from anyanomaly.cli import live as live_cli
from anyanomaly.errors import describe
from anyanomaly.evaluation import command as eval_command
from anyanomaly.launcher import EmbeddedStack, StackError, StackOptions
from anyanomaly.pictures import DEFAULT_THRESHOLD, EvidenceKeeper, EvidencePicture, plot_detection, write_evidence
from anyanomaly.report import write_html_report
from anyanomaly.results import RANDOM_WEIGHTS_WARNING, ResultBuilder, detect_into
from anyanomaly.v1 import common_pb2, orchestrator_pb2
from services.common import auth
from services.common.clients import failed_service
from services.common.enums import (
    KEY_FRAME_STRATEGY,
    MULTI_TEXT_FUSION,
    PROFILE,
    SCORE_MODE,
    TAIL_POLICY,
    TEMPORAL_SELECTION,
    WINDOW_FEATURES,
)
from services.common.errors import InvalidInput, StartupError

PROG = "anyanomaly"
BAD_INPUT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
                   grpc.StatusCode.UNAUTHENTICATED}


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


def _add_stack_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", choices=("default", "tiny"), default="default",
                        help="'default': the real CLIP and LVLM weights; 'tiny': tiny random models "
                             "(no downloads, meaningless scores)")
    parser.add_argument("--lvlm-url", default="", help="use an OpenAI-compatible LVLM server (e.g. `vllm serve` at "
                                                       "http://gpu-node:8000/v1) instead of a local model")
    parser.add_argument("--lvlm-model", default="", help="the model name that server serves")
    parser.add_argument("--log-dir", type=Path, default=None, help="write the services' logs to this folder")
    parser.add_argument("--profile", choices=PROFILE.choices, default=None,
                        help="'parity' reproduces the authors' code, quirks included; for `serve`, the services' "
                             "default for requests that name no profile")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Zero-shot, text-defined video anomaly detection.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run all four services on this machine until Ctrl-C")
    _add_stack_options(serve)
    serve.add_argument("--port", type=int, default=50050, help="orchestrator port (0 picks a free one)")
    serve.add_argument("--host", default="127.0.0.1", help="address the services bind")
    serve.add_argument("--data-dir", type=Path, default=None,
                       help="keep jobs, monitors, events and evidence here (SQLite); without it the Jobs, Monitors "
                            "and Events services are off")
    serve.add_argument("--auth-tokens-file", type=Path, default=None,
                       help="ask the orchestrator's callers for a credential from this file (anyanomaly token new)")
    serve.add_argument("--media-roots", default="", help="comma-separated folders sources may lie under")
    serve.add_argument("--http-port", type=int, default=0,
                       help="serve the web console on this port of --host (0: off)")
    serve.add_argument("--allow-hosts", default="", help="comma-separated stream hosts (names, *.domain, CIDR)")
    serve.add_argument("--tls-cert", type=Path, default=None, help="the orchestrator serves TLS with this PEM "
                       "certificate (the other services stay on 127.0.0.1)")
    serve.add_argument("--tls-key", type=Path, default=None, help="the PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", type=Path, default=None,
                       help="require callers' certificates signed by this PEM CA (mutual TLS)")

    detect = commands.add_parser("detect", help="score a video (file, frame folder or stream URI) for anomaly texts")
    detect.add_argument("source", help="video file, folder of frames, or rtsp:// / http:// URI")
    detect.add_argument("-t", "--text", dest="texts", action="append", required=True,
                        help="what counts as an anomaly, e.g. 'bicycle'; repeat for several; 'a-b' means a and b")
    detect.add_argument("--output", type=Path, default=None, help="write the result JSON here")
    detect.add_argument("--plot", type=Path, default=None, metavar="PNG",
                        help="draw the score curves (each text, the smoothed frame score, threshold, spans above it, "
                             "segment boundaries) into this PNG (needs matplotlib)")
    detect.add_argument("--evidence", type=Path, default=None, metavar="DIR",
                        help="write evidence pictures here: for the best segments and each span above the threshold, "
                             "the key frame, the attention heatmap over it and the temporal grid, with the text, "
                             "score and reason (asks the orchestrator for the images)")
    detect.add_argument("--report", type=Path, default=None, metavar="HTML",
                        help="write a self-contained HTML report: summary, plot, evidence, best segments")
    detect.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"the score whose spans --plot, --evidence and --report show as events "
                             f"(default {DEFAULT_THRESHOLD})")
    detect.add_argument("--address", default="", help="an orchestrator HOST:PORT (default: start the embedded stack)")
    live_cli.connection_options(detect)
    _add_stack_options(detect)
    detect.add_argument("--preset", default="", help="dataset preset: shtech (default), avenue or custom")
    detect.add_argument("--segment-length", type=int, default=0, help="frames per segment (default 24)")
    detect.add_argument("--weights", type=float, nargs=3, metavar=("FRAME", "POSITION", "TEMPORAL"),
                        help="fusion weights (default 0.6 0.3 0.1)")
    detect.add_argument("--sigma", type=float, default=None, help="Gaussian smoothing over frames (default 15; 0 off)")
    detect.add_argument("--tail", choices=TAIL_POLICY.choices, default=None,
                        help="last partial segment: 'score' it (default) or 'drop' it (parity)")
    detect.add_argument("--keep-hyphens", action="store_true", help="do not split 'a-b' texts into a and b")
    detect.add_argument("--strategy", choices=KEY_FRAME_STRATEGY.choices, default=None,
                        help="key-frame strategy (default clip_then_grouping, the paper's)")
    detect.add_argument("--half-stride", action="store_true", help="overlapping windows (stride = window / 2)")
    detect.add_argument("--grid-selection", choices=TEMPORAL_SELECTION.choices, default=None,
                        help="temporal-context position: max_window (the reference) or grid_embedding (the paper)")
    detect.add_argument("--window-features", choices=WINDOW_FEATURES.choices, default=None,
                        help="window features for the position and temporal contexts: crops (the reference, one "
                             "CLIP pass per window) or dense (one pass per key frame, faster, not parity)")
    detect.add_argument("--fusion-rule", choices=MULTI_TEXT_FUSION.choices, default=None,
                        help="several texts: fuse_then_max (default) or max_then_fuse (the reference)")
    detect.add_argument("--mode", choices=SCORE_MODE.choices, default="standard",
                        help="LVLM scoring: standard (score + reason), fast (score from token probabilities, no "
                             "reason) or reason_first")
    detect.add_argument("--multi-text", action="store_true",
                        help="score all texts on shared images: 3 LVLM calls per segment instead of 3 per text")
    detect.add_argument("--reason-threshold", type=float, default=None,
                        help="with --mode fast: fetch the reason of texts whose fused score reaches this")
    detect.add_argument("--gate", type=float, default=None,
                        help="skip the LVLM for segments whose best CLIP similarity is below this (off by default)")
    detect.add_argument("--cascade", type=float, default=None, metavar="THRESHOLD",
                        help="screen each text with one fast call on its key frame; contexts and full scoring only "
                             "for texts whose screening score reaches THRESHOLD, 0..1 (off by default)")
    detect.add_argument("--quiet", action="store_true", help="no progress bar")

    live_cli.add_commands(commands)

    token = commands.add_parser("token", help="make a bearer token for the orchestrator's --auth-tokens-file")
    token.add_argument("action", choices=("new",))
    token.add_argument("--name", required=True, help="who or what uses it (shown in the access log)")
    token.add_argument("--scopes", required=True,
                       help=f"comma-separated: {', '.join(auth.SCOPES)} (admin: all)")
    token.add_argument("--json", action="store_true")

    capacity = commands.add_parser("plan", help="LVLM pods and GPUs for a site's cameras and texts")
    capacity.add_argument("--cameras", type=int, required=True)
    capacity.add_argument("--texts", type=int, required=True, help="anomaly texts per camera")
    source = capacity.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-benchmark", type=Path, metavar="FILE",
                        help="seconds per call, concurrency and calls per segment from a "
                             "`python -m benchmarks.bench_lvlm --json FILE` result")
    source.add_argument("--lvlm-seconds-per-call", type=float,
                        help="one LVLM call's time at the pod's concurrency (python -m benchmarks.bench_lvlm)")
    capacity.add_argument("--mode", choices=("standard", "fast", "reason_first", "multi_text"), default="standard")
    capacity.add_argument("--fps", type=float, default=25.0, help="frames per second scored per camera")
    capacity.add_argument("--segment-length", type=int, default=24)
    capacity.add_argument("--gate-pass", type=float, default=1.0, help="share of segments passing the CLIP gate")
    capacity.add_argument("--concurrency-per-pod", type=int, default=None,
                          help="calls one LVLM pod answers at once (default: the benchmark's, else 16)")
    capacity.add_argument("--utilization", type=float, default=0.7, help="planned share of a pod's capacity")
    capacity.add_argument("--gpus-per-pod", type=int, default=1)
    capacity.add_argument("--min-duration", type=float, default=0.0, help="the event rule's minimum duration (s)")
    capacity.add_argument("--json", action="store_true")

    evaluate = commands.add_parser("eval", help="micro-AUROC on C-ShT, C-Ave, ShanghaiTech, Avenue or your own data")
    eval_command.add_arguments(evaluate)
    _add_stack_options(evaluate)
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _source(argument: str, remote: bool) -> orchestrator_pb2.VideoSource:
    if "://" in argument:
        return orchestrator_pb2.VideoSource(uri=argument)
    path = Path(argument).expanduser()
    if not remote and not path.exists():
        raise UsageError(f"no such file or folder: {argument}")
    location = str(path.resolve()) if path.exists() else argument
    if path.is_dir():
        return orchestrator_pb2.VideoSource(frame_folder=location)
    return orchestrator_pb2.VideoSource(path=location)


def _request(args: argparse.Namespace) -> orchestrator_pb2.DetectRequest:
    profile = PROFILE.value(args.profile) if args.profile else common_pb2.PROFILE_UNSPECIFIED
    options = orchestrator_pb2.DetectOptions(
        profile=profile, preset=args.preset, segment_length=args.segment_length,
        fusion_weights=args.weights or [], keep_hyphenated_texts=args.keep_hyphens,
    )
    if args.sigma is not None:
        options.sigma = args.sigma
    if args.tail is not None:
        options.tail_policy = TAIL_POLICY.value(args.tail)
    if args.strategy is not None:
        options.strategy = KEY_FRAME_STRATEGY.value(args.strategy)
    if args.fusion_rule is not None:
        options.multi_text_fusion = MULTI_TEXT_FUSION.value(args.fusion_rule)
    options.half_stride = args.half_stride
    options.scoring_mode = SCORE_MODE.value(args.mode)
    options.multi_text = args.multi_text
    if args.reason_threshold is not None:
        options.reason_threshold = args.reason_threshold
    if args.gate is not None:
        options.gate_threshold = args.gate
    if args.cascade is not None:
        options.cascade_threshold = args.cascade
    if args.grid_selection is not None:
        options.temporal_selection = TEMPORAL_SELECTION.value(args.grid_selection)
    if args.window_features is not None:
        options.window_features = WINDOW_FEATURES.value(args.window_features)
    return orchestrator_pb2.DetectRequest(source=_source(args.source, bool(args.address)), texts=args.texts,
                                          options=options)


def _stack_options(args: argparse.Namespace, port: int = 0, host: str = "127.0.0.1") -> StackOptions:
    if bool(args.lvlm_url) != bool(args.lvlm_model):
        raise UsageError("--lvlm-url and --lvlm-model go together (the server's URL and the model it serves)")
    data_dir = getattr(args, "data_dir", None)
    def file(name: str) -> str:
        path = getattr(args, name, None)
        return str(path.expanduser().resolve()) if path else ""

    guarded = [("--auth-tokens-file", file("auth_tokens_file")), ("--media-roots", getattr(args, "media_roots", "")),
               ("--allow-hosts", getattr(args, "allow_hosts", "")), ("--tls-cert", file("tls_cert")),
               ("--tls-key", file("tls_key")), ("--tls-client-ca", file("tls_client_ca")),
               ("--http-port", str(getattr(args, "http_port", 0) or ""))]
    return StackOptions(models=args.models, lvlm_url=args.lvlm_url, lvlm_model=args.lvlm_model, host=host,
                        orchestrator_port=port, log_dir=args.log_dir, profile=args.profile or "default",
                        data_dir=data_dir.expanduser().resolve() if data_dir else None,
                        orchestrator_args=tuple(part for flag, value in guarded if value for part in (flag, value)))


def _print_summary(result: dict[str, Any], output: Path | None) -> None:
    segments = result["segments"]
    print(f"{result['source']}: {result['num_frames']} frames, {len(segments)} segments, "
          f"texts {', '.join(result['texts'])}")
    top = sorted(segments, key=lambda s: s["max_fused"], reverse=True)[:3]
    for segment in top:
        best = max(segment["scores"].items(), key=lambda item: item[1]["fused"])
        print(f"  frames {segment['start_frame']}-{segment['end_frame'] - 1}: {segment['max_fused']:.2f} "
              f"({best[0]}) {best[1]['reason'][:100]}")
    if result["parse_failures"]:
        print(f"  {result['parse_failures']} answers had no readable score (scored 0)")
    usage = result["lvlm_usage"]
    print(f"  {result['timings']['total_seconds']:.1f} s, {usage['calls']} LVLM calls, "
          f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} answer tokens")
    if result["gated_segments"]:
        print(f"  {result['gated_segments']} of {len(segments)} segments skipped the LVLM (CLIP gate)")
    if result["screened_out"]:
        print(f"  {result['screened_out']} of {len(segments) * len(result['texts'])} segment-texts screened out "
              "(cascade)")
    if "warning" in result["models"]:
        print(f"  note: {RANDOM_WEIGHTS_WARNING}")
    if output is not None:
        print(f"  result written to {output}")


def _write(output: Path | None, document: dict[str, Any]) -> None:
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        # allow_nan=False: a non-finite number is a bug to see, never invalid JSON in the file
        output.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")


async def _culprit(error: grpc.aio.AioRpcError, stack: EmbeddedStack | None) -> tuple[str, str]:
    """(the service whose failure ended the detection, how it ended when it is a process of the
    embedded stack that exited), as precisely as it is known."""
    named = failed_service(error)
    if stack is not None and named in stack.services:
        return named, await stack.exit_reason(named)  # a killed process may take a moment to be reaped
    if stack is not None and not named:
        for service in stack.services:
            if why := await stack.exit_reason(service, within=0):
                return service, why
    return named or "orchestrator", ""


async def _detect(args: argparse.Namespace) -> int:
    stack_options = None if args.address else _stack_options(args)
    request = _request(args)
    stack: EmbeddedStack | None = None
    address = args.address
    images = args.evidence is not None or args.report is not None
    if images:
        request.options.include_images = True
    builder = ResultBuilder(request, EvidenceKeeper(args.threshold) if images else None)
    if not args.address and (args.tls_ca or args.tls_cert or args.tls_key or args.token_file):
        raise UsageError("--tls-ca, --tls-cert, --tls-key and --token-file are for an orchestrator at --address "
                         "(the embedded stack runs on this machine, on 127.0.0.1)")
    pictures = args.plot is not None or args.evidence is not None or args.report is not None
    if pictures:  # checked before the detection, not after it
        if not 0 <= args.threshold <= 1:
            raise UsageError(f"--threshold is a score, 0..1; got {args.threshold}")
        if (args.plot or args.report) and importlib.util.find_spec("matplotlib") is None:
            raise UsageError("--plot and --report need matplotlib: pip install 'anyanomaly[eval]'")
        folders = [args.evidence] + [path.parent for path in (args.plot, args.report) if path is not None]
        for folder in (f for f in folders if f is not None):
            try:  # a folder that cannot be written is said now, not after the detection
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UsageError(f"cannot write pictures to {folder}: {error.strerror or error}") from None
    tls = live_cli.client_tls(args) if args.address else None
    token = live_cli.client_token(args) if args.address else ""
    try:
        if stack_options is not None:
            stack = EmbeddedStack(stack_options)
            await stack.start()
            address = stack.orchestrator_address
        await detect_into(builder, address, None if args.quiet else "detect", tls=tls, token=token)
    except grpc.aio.AioRpcError as error:
        details = describe(error)
        if error.code() in BAD_INPUT_CODES:
            if builder.segments:
                _write(args.output, builder.partial({"code": error.code().name, "message": details}))
            raise UsageError(details) from error
        reached = builder.started is not None or failed_service(error)  # the orchestrator answered
        if not reached and args.address and error.code() == grpc.StatusCode.UNAVAILABLE:
            raise UsageError(f"cannot reach the orchestrator at {args.address}: {details}") from error
        service, why = await _culprit(error, stack)
        _write(args.output, builder.partial({"code": error.code().name, "service": service, "exit": why,
                                             "message": details}))
        kept = f"; the {len(builder.segments)} segments received are in {args.output}" if args.output else ""
        raise ServiceFailure(f"{service}{f' ({why})' if why else ''} failed: {details}{kept}") from error
    except asyncio.CancelledError:
        _write(args.output, builder.partial({"code": "CANCELLED", "message": "interrupted"}))
        raise
    finally:
        if stack is not None:
            await stack.stop()
    result = builder.document()
    _write(args.output, result)
    _print_summary(result, args.output)
    if pictures:
        _pictures(args, result, builder.keeper)
    return 0


def _pictures(args: argparse.Namespace, result: dict[str, Any], keeper: EvidenceKeeper | None) -> None:
    with tempfile.TemporaryDirectory(prefix="anyanomaly-pictures-") as scratch:
        plot = args.plot or Path(scratch) / "plot.png"
        if args.plot is not None or args.report is not None:
            spans = plot_detection(result, plot, args.threshold)
            if args.plot is not None:
                print(f"  plot written to {args.plot} ({len(spans)} spans at or above {args.threshold:g})")
        evidence: list[EvidencePicture] = []
        if keeper is not None:
            evidence = write_evidence(result, keeper, args.evidence or Path(scratch) / "evidence", args.threshold)
            if args.evidence is not None:
                print(f"  {len(evidence)} evidence pictures written to {args.evidence}")
        if args.report is not None:
            write_html_report(result, plot.read_bytes(), evidence, args.report)
            print(f"  report written to {args.report}")


async def _eval(args: argparse.Namespace) -> int:
    stack_options = None if args.address or args.results else _stack_options(args)
    try:
        import h5py  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as error:
        raise UsageError(f"anyanomaly eval needs the eval extra ({error.name} is missing): "
                         "pip install '.[eval]'") from error
    report = await eval_command.run_eval(args, stack_options)
    print(f"{report['dataset']}: {report['mode']}")
    for run in report["runs"]:
        value = run["auroc"] if isinstance(run["auroc"], str) else f"{100 * run['auroc']:.2f}"
        gaussian = run.get("per_video_gaussian_auroc")
        versus = f"; per-video Gaussian {100 * gaussian:.2f}" if isinstance(gaussian, float) else ""
        print(f"  {run['name']:24} {value:>9}  ({run['videos']} videos, {run['frames']} frames{versus})")
    average = report["averages"]["all"]
    print(f"  {'average':24} {average if isinstance(average, str) else f'{100 * average:.2f}':>9}")
    print(f"  report: {args.output_dir / 'report.md'}")
    return 0


async def _token(args: argparse.Namespace) -> int:
    """A new token, and the line that grants it (the file keeps only its hash)."""
    token = auth.new_token()
    line = f"{auth.token_hash(token)} {args.scopes} {args.name}"
    try:
        auth.parse_grants(line, "the new line")  # the name and scopes as the orchestrator will read them
    except ValueError as error:
        raise UsageError(str(error).replace("the new line line 1: ", "")) from error
    if args.json:
        print(json.dumps({"name": args.name, "scopes": args.scopes.split(","), "token": token, "line": line}))
        return 0
    print(f"token (give it to the client; it is shown only now): {token}")
    print(f"line for the orchestrator's --auth-tokens-file: {line}")
    return 0


async def _plan(args: argparse.Namespace) -> int:
    try:
        measured = None
        if args.from_benchmark:
            measured = planning.from_benchmark(json.loads(args.from_benchmark.read_text()), args.mode, args.texts)
        seconds = measured.seconds_per_call if measured else args.lvlm_seconds_per_call
        concurrency = args.concurrency_per_pod or (measured.concurrency if measured else 16)
        site = planning.Site(args.cameras, args.texts, seconds, args.mode, args.fps, args.segment_length,
                             args.gate_pass, concurrency, args.utilization, args.gpus_per_pod, args.min_duration,
                             measured.calls_per_segment if measured else 0)
        result = planning.plan(site)
    except (OSError, ValueError) as error:  # an unreadable or malformed benchmark file, a bad site
        raise UsageError(str(error)) from error
    if args.json:
        print(json.dumps({"site": dataclasses.asdict(site), "plan": dataclasses.asdict(result)}))
        return 0
    print(f"{site.cameras} cameras x {site.sample_fps:g} fps, {site.texts} texts, mode {site.mode}: "
          f"{result.segments_per_second:.2f} segments/s x {result.calls_per_segment} LVLM calls"
          f"{f' x {site.gate_pass:g} passing the gate' if site.gate_pass < 1 else ''} = "
          f"{result.calls_per_second:.1f} calls/s")
    if measured:
        print(f"from {args.from_benchmark}: {measured.source}")
    print(f"one LVLM pod: {site.concurrency} calls at once x {site.seconds_per_call:.3g} s each, planned at "
          f"{site.utilization:.0%}: {result.calls_per_second_per_pod:.1f} calls/s")
    print(f"LVLM pods: {result.pods} ({result.gpus} GPUs)")
    print(f"first anomalous frame -> event: about {result.latency_seconds:.1f} s (segment "
          f"{site.segment_length / site.sample_fps:.2f} s + a call {site.seconds_per_call:g} s"
          f"{f' + min duration {site.min_duration_seconds:g} s' if site.min_duration_seconds else ''}; "
          "more when pods queue)")
    return 0


async def _serve(args: argparse.Namespace) -> int:
    stack = EmbeddedStack(_stack_options(args, port=args.port, host=args.host))
    try:
        await stack.start()
        for name, address in stack.addresses().items():
            print(f"{name:16} {address}", flush=True)
        if args.http_port:
            print(f"{'console':16} http://{args.host}:{args.http_port}/", flush=True)
        if args.models == "tiny":
            print(f"note: {RANDOM_WEIGHTS_WARNING}", flush=True)
        print("ready; Ctrl-C stops the services", flush=True)
        await asyncio.Event().wait()  # until SIGINT or SIGTERM cancels this command
    finally:
        await stack.stop()
        print("stopped", flush=True)
    return 0


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


async def _interruptible(command: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    """Run a command; SIGINT (Ctrl-C) and SIGTERM cancel it, so that its cleanup runs (the
    embedded stack stopped, partial results written) before the process exits."""
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def interrupt(signum: int) -> None:
        received.append(signum)
        task.cancel()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt, signum)
    try:
        return await command(args)
    except asyncio.CancelledError:
        if received:
            raise Interrupted(received[0]) from None
        raise


class ServiceFailure(Exception):
    """A service failed: printed as one line naming it, exit code 1."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"serve": _serve, "detect": _detect, "eval": _eval, "monitors": live_cli.run, "events": live_cli.run,
               "jobs": live_cli.run, "plan": _plan, "token": _token}[args.command]
    try:
        return asyncio.run(_interruptible(command, args))
    except Interrupted as stop:
        if args.command == "serve":
            return 0  # a stop request is how serve ends
        print(f"{PROG}: interrupted ({stop})", file=sys.stderr)
        return 128 + stop.signum
    except (UsageError, InvalidInput, StartupError) as error:  # StartupError: client TLS files that cannot work
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except (StackError, ServiceFailure) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as error:  # eval's detections, monitors, events and jobs
        if args.command in ("monitors", "events", "jobs"):
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                print(f"{PROG}: error: cannot reach the orchestrator at {args.address}: {describe(error)}",
                      file=sys.stderr)
                return 1
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                print(f"{PROG}: error: {describe(error)}", file=sys.stderr)
                return 2
        if error.code() in BAD_INPUT_CODES:
            print(f"{PROG}: error: {describe(error)}", file=sys.stderr)
            return 2
        print(f"{PROG}: error: {failed_service(error) or 'orchestrator'} failed: {describe(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
