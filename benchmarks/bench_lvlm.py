"""LVLM cost per segment in each scoring mode, for k = 1, 5 and 11 texts.

Runs the real lvlm_service (`openai` backend) against a local OpenAI-compatible server that
answers every call after a fixed latency (standing in for `vllm serve`; tokens are counted
as ~4 characters per token plus a fixed number per image). A segment is what the
orchestrator sends: a key frame, a position context and a temporal context per text (or,
with multi_text, three shared images carrying every text). Prints calls, prompt and answer
tokens and wall time per segment, and the frames per second that allows (24 frames per
segment, the LVLM being the bottleneck), next to the reference code's sequential 3k calls.
Images are the pictures sent per segment; their tokens are part of the prompt tokens (TimedLLM
counts IMAGE_TOKENS per image; a real engine its own).

    python -m benchmarks.bench_lvlm [--latency-ms 200] [--ms-per-answer-token 0] [--concurrency 16]
                                    [--json FILE]

`--json FILE` keeps the figures for `anyanomaly plan --from-benchmark FILE`; run it against a
real engine (`--openai-url`) to plan from measured call times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from pathlib import Path

import numpy as np

from anyanomaly.v1 import common_pb2, lvlm_pb2, lvlm_pb2_grpc
from benchmarks.timed_llm import TimedLLM
from services.common.clients import open_channel
from services.common.images import encode_png
from services.common.logs import configure_logging
from services.common.presets import SHTECH_CLASSES
from services.common.server import start_server
from services.lvlm_service.config import LvlmSettings
from services.lvlm_service.server import build_service

SEGMENT_FRAMES = 24
MODES = {
    "standard": lvlm_pb2.ScoreOptions(mode=lvlm_pb2.SCORE_MODE_STANDARD),
    "reason_first": lvlm_pb2.ScoreOptions(mode=lvlm_pb2.SCORE_MODE_REASON_FIRST),
    "fast": lvlm_pb2.ScoreOptions(mode=lvlm_pb2.SCORE_MODE_FAST),
    "multi_text": lvlm_pb2.ScoreOptions(mode=lvlm_pb2.SCORE_MODE_STANDARD, multi_text=True),
}


def segment(texts: list[str], multi_text: bool) -> list[lvlm_pb2.ScoreItem]:
    rng = np.random.default_rng(0)
    image = common_pb2.Image(data=encode_png(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)))
    kinds = (lvlm_pb2.CONTEXT_KIND_FRAME, lvlm_pb2.CONTEXT_KIND_POSITION, lvlm_pb2.CONTEXT_KIND_TEMPORAL)
    if multi_text:
        return [lvlm_pb2.ScoreItem(image=image, kind=kind, texts=texts) for kind in kinds]
    return [lvlm_pb2.ScoreItem(image=image, kind=kind, texts=[t]) for t in texts for kind in kinds]


async def run(latency: float, per_token: float, concurrency: int, segments: int,
              server: tuple[str, str] | None = None) -> list[dict[str, object]]:
    """`server`: (URL, model) of a real OpenAI-compatible engine instead of the timed stand-in."""
    with TimedLLM(latency, per_token) if server is None else contextlib.nullcontext() as timed:
        url, model = (timed.url, timed.model) if timed is not None else server  # type: ignore[misc]
        settings = LvlmSettings(host="127.0.0.1", port=0, backend="openai", openai_url=url,
                                openai_model=model, max_concurrency=concurrency, log_level="WARNING")
        spec, _ = build_service(settings)
        lvlm = await start_server(spec, settings)
        await lvlm.until_ready()
        engine = (f"{url} ({model})" if timed is None else
                  f"engine latency {latency * 1000:.0f} ms per call + {per_token * 1000:.0f} ms per answer token")
        print(f"{engine}, {concurrency} calls in flight; "
              f"per segment of {SEGMENT_FRAMES} frames (median of {segments})")
        print(f"{'k':>3} {'mode':<13} {'calls':>6} {'images':>6} {'prompt tok':>11} {'answer tok':>11} {'wall s':>8} "
              f"{'FPS':>7} {'ref. wall s':>12} {'ref. FPS':>9}")
        rows: list[dict[str, object]] = []
        async with open_channel(lvlm.address) as channel:
            stub = lvlm_pb2_grpc.LvlmServiceStub(channel)
            for k in (1, 5, 11):
                texts = list(SHTECH_CLASSES[:k])
                # The authors' loop: one call at a time, each with a score and a reason (~12 tokens).
                reference = 3 * k * (latency + 12 * per_token)
                for mode, options in MODES.items():
                    walls, usage = [], lvlm_pb2.Usage()
                    for _ in range(segments):
                        started = time.perf_counter()
                        response = await stub.Score(lvlm_pb2.ScoreRequest(
                            items=segment(texts, options.multi_text), options=options))
                        walls.append(time.perf_counter() - started)
                        usage = response.usage
                    wall = statistics.median(walls)
                    rows.append({"texts": k, "mode": mode, "calls": usage.calls, "prompt_tokens": usage.prompt_tokens,
                                 "completion_tokens": usage.completion_tokens, "images": usage.images,
                                 "wall_seconds": wall})
                    print(f"{k:>3} {mode:<13} {usage.calls:>6} {usage.images:>6} {usage.prompt_tokens:>11} "
                          f"{usage.completion_tokens:>11} {wall:>8.2f} {SEGMENT_FRAMES / wall:>7.1f} "
                          f"{reference:>12.2f} {SEGMENT_FRAMES / reference:>9.1f}")
        await lvlm.shutdown(1.0)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--ms-per-answer-token", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--segments", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--openai-url", default="", help="measure this OpenAI-compatible engine (e.g. vLLM at "
                        "http://host:8000/v1) instead of the timed stand-in")
    parser.add_argument("--openai-model", default="Qwen/Qwen2.5-VL-7B-Instruct", help="the model it serves")
    args = parser.parse_args()
    configure_logging("bench", "WARNING", "text")
    server = (args.openai_url, args.openai_model) if args.openai_url else None
    rows = asyncio.run(run(args.latency_ms / 1000, args.ms_per_answer_token / 1000, args.concurrency, args.segments,
                           server))
    if args.json:
        engine = args.openai_url or "TimedLLM"
        args.json.write_text(json.dumps({"benchmark": "bench_lvlm", "engine": engine, "latency_ms": args.latency_ms,
                                         "concurrency": args.concurrency, "segment_frames": SEGMENT_FRAMES,
                                         "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
