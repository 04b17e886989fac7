"""The CLIP side of a segment (key frames, position and temporal contexts) for k texts: this
project's services against the authors' way (benchmarks/reference_clip.py), same model, same
frames, same machine, and a check that both compute the same contexts.

clip_service (a random-weight ViT-B-32 by default: the paper's architecture, nothing downloaded)
and context_service run in this process on 127.0.0.1; the project's time is SelectKeyFrames +
BuildContexts over gRPC with the parity profile. Texts are the ShT classes. Two cases:

- as chosen: each text's contexts on the key frames SelectKeyFrames chose (random weights choose
  the same frames for most texts, so the windows of few frames are embedded: 176-328 forwards);
- worst case: text i is given the key frames {o, 6+o, 12+o, 18+o} with o = i mod 6, so from 6
  texts on every window of all 24 frames is embedded (936 forwards), as texts that all look at
  different frames would need.

The reference shares nothing between texts and its work does not depend on which frames are key
frames, so its time for k texts is k times its time per text (the median over --reference-texts
texts and --repeats runs). Its contexts are compared with the project's, in both cases, for those
texts. The project runs in its steady state: text embeddings are cached across segments (the
first, untimed run fills the cache), where the reference encodes every class's 21 templates for
every text and segment as the authors' code does. Both run on the CPU, or both on a GPU in fp16
(--device cuda).

With --window-features crops dense, each k also gets a row with dense window features (one CLIP
pass per frame, windows pooled from its patch features; not parity). Its last column says how far
its contexts are from the reference's: how many texts keep the reference's temporal position, and
the mean absolute difference of the position contexts in grey levels.

    python -m benchmarks.clip_side [--texts 1 5 11] [--repeats 2] [--models random|tiny] [--device cpu|cuda]
                                   [--precision auto|bf16|...] [--window-features crops dense]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
from PIL import Image

from anyanomaly.v1 import clip_pb2, clip_pb2_grpc, common_pb2, context_pb2, context_pb2_grpc
from benchmarks.bench_segment import DEFAULT_VIDEO, first_frames
from benchmarks.reference_clip import ReferenceClip, ReferenceContexts
from services.clip_service.config import ClipSettings
from services.clip_service.engine import ClipEngine
from services.clip_service.model import load_clip
from services.clip_service.server import build_service as build_clip
from services.common.clients import open_channel
from services.common.enums import WINDOW_FEATURES
from services.common.presets import SHTECH_CLASSES, get_preset
from services.common.server import RunningServer, start_server
from services.context_service.config import ContextSettings
from services.context_service.server import build_service as build_context

FRAMES = 24
WINDOWS = get_preset("shtech").window_sizes


def worst_case_key_frames(text_index: int) -> list[int]:
    offset = text_index % (FRAMES // 4)
    return [offset + j * (FRAMES // 4) for j in range(4)]


@dataclass
class Row:
    texts: int
    features: str  # window features: crops or dense
    reference_seconds: float
    chosen_seconds: float
    worst_seconds: float
    chosen_forwards: int
    worst_forwards: int
    reference_forwards: int
    same_contexts: str  # "yes", "NO", or for dense how far from the reference


class Services:
    def __init__(self, clip: RunningServer, context: RunningServer, engine: ClipEngine) -> None:
        self.clip, self.context, self.engine = clip, context, engine

    @classmethod
    async def start(cls, models: str, device: str = "cpu", precision: str = "auto") -> Services:
        clip_settings = ClipSettings(host="127.0.0.1", port=0, models=models, device=device, precision=precision,
                                     log_level="WARNING")
        clip_spec, engine = build_clip(clip_settings)
        clip = await start_server(clip_spec, clip_settings)
        try:
            await clip.until_ready()
            # A worst-case segment at k = 11 takes about a minute on 2 cores: no deadline in the way.
            context_settings = ContextSettings(host="127.0.0.1", port=0, clip_address=clip.address,
                                               clip_timeout_seconds=1800.0, log_level="WARNING")
            context = await start_server(build_context(context_settings)[0], context_settings)
            await context.until_ready()
        except BaseException:
            await clip.shutdown(1.0)
            raise
        return cls(clip, context, engine)

    async def stop(self) -> None:
        await self.context.shutdown(1.0)
        await self.clip.shutdown(1.0)


async def project_segment(services: Services, frames: list[common_pb2.Image], texts: list[str], worst: bool,
                          features: str = "crops") -> tuple[float, int, Any, Any]:
    """(seconds, CLIP image forwards, key-frame answer, contexts answer) for one segment."""
    async with open_channel(services.clip.address) as clip_channel, \
            open_channel(services.context.address) as context_channel:
        clip: Any = clip_pb2_grpc.ClipServiceStub(clip_channel)
        context: Any = context_pb2_grpc.ContextServiceStub(context_channel)
        before = services.engine.model.images_encoded
        started = time.perf_counter()
        selection = await clip.SelectKeyFrames(clip_pb2.SelectKeyFramesRequest(frames=frames, texts=texts))
        queries = [context_pb2.ContextQuery(text=text, key_frames=worst_case_key_frames(i),
                                            representative=worst_case_key_frames(i)[0])
                   if worst else context_pb2.ContextQuery(text=text, key_frames=chosen.key_frames,
                                                          representative=chosen.representative)
                   for i, (text, chosen) in enumerate(zip(texts, selection.selections, strict=True))]
        contexts = await context.BuildContexts(context_pb2.BuildContextsRequest(
            frames=frames, queries=queries,
            options=context_pb2.ContextOptions(profile=common_pb2.PROFILE_PARITY, preset="shtech",
                                               window_features=WINDOW_FEATURES.value(features))))
        seconds = time.perf_counter() - started
    return seconds, services.engine.model.images_encoded - before, selection, contexts


@dataclass
class ReferenceRun:
    contexts: ReferenceContexts
    representative_ksm: int
    key_frames_ksm: list[int]


def same(reference: ReferenceRun, selection: Any, context: Any) -> bool:
    """Parity as METHOD.md section 16 defines it: the same key frames and temporal position,
    context pixels within 1 grey level."""
    position = np.asarray(Image.open(io.BytesIO(context.position_context.data)).convert("RGB"), dtype=np.int16)
    temporal = np.asarray(Image.open(io.BytesIO(context.temporal_context.data)).convert("RGB"), dtype=np.int16)
    return (selection.representative == reference.representative_ksm
            and list(selection.key_frames) == reference.key_frames_ksm
            and context.grid_position.candidate == reference.contexts.temporal_position
            and int(np.abs(position - reference.contexts.position_context).max()) <= 1
            and int(np.abs(temporal - reference.contexts.temporal_context).max()) <= 1)


def distance(reference: ReferenceRun, context: Any) -> tuple[bool, float]:
    """(the reference's temporal position kept, mean |difference| of the position contexts)."""
    position = np.asarray(Image.open(io.BytesIO(context.position_context.data)).convert("RGB"), dtype=np.int16)
    return (context.grid_position.candidate == reference.contexts.temporal_position,
            float(np.abs(position - reference.contexts.position_context).mean()))


def reference_text(reference: ReferenceClip, jpegs: list[bytes], text_index: int) -> tuple[float, ReferenceRun]:
    text = SHTECH_CLASSES[text_index]
    started = time.perf_counter()
    representative, key_frames = reference.key_frames(jpegs, text)
    chosen = worst_case_key_frames(text_index)
    position = reference.position_context(jpegs[chosen[0]], SHTECH_CLASSES, text, WINDOWS)
    candidate, temporal = reference.temporal_context([jpegs[k] for k in chosen], text, WINDOWS)
    seconds = time.perf_counter() - started
    contexts = ReferenceContexts(chosen[0], chosen, position, candidate, temporal)
    return seconds, ReferenceRun(contexts, representative, key_frames)


def chosen_reference(reference: ReferenceClip, jpegs: list[bytes], text_index: int) -> ReferenceRun:
    """The reference's contexts on the key frames its own KSM chose (untimed)."""
    contexts = reference.segment(jpegs, SHTECH_CLASSES[text_index], SHTECH_CLASSES, WINDOWS)
    return ReferenceRun(contexts, contexts.representative, contexts.key_frames)


async def measure(args: argparse.Namespace) -> list[Row]:
    jpegs = first_frames(args.video, FRAMES)
    frames = [common_pb2.Image(data=data) for data in jpegs]
    precision = args.precision
    services = await Services.start(args.models, args.device, precision)
    try:
        model: Any = services.engine.model
        preprocess = open_clip.image_transform(model.image_size, is_train=False, mean=model.mean, std=model.std)
        # The reference keeps the parity precision (fp32 on the CPU, fp16 on a GPU): with another
        # --precision the same-contexts check asks whether that precision changes the outputs.
        weights = model if precision == "auto" else load_clip(ClipSettings(models=args.models, device=args.device))
        reference = ReferenceClip(weights._model, weights._tokenizer, preprocess)
        print(f"model: {model.info.name} ({model.info.weights}), {model.info.device} {model.info.dtype} (reference "
              f"{weights.info.dtype}); {FRAMES} frames of "
              f"{args.video.name}; ShT windows {'/'.join(map(str, WINDOWS))}; parity profile; contexts compared "
              f"for the first {args.reference_texts} texts in both cases")
        per_text, worst_runs = [], {}
        for repeat in range(args.repeats + 1):  # the first run warms up
            for index in range(args.reference_texts):
                seconds, worst_runs[index] = reference_text(reference, jpegs, index)
                if repeat:
                    per_text.append(seconds)
        chosen_runs = {index: chosen_reference(reference, jpegs, index) for index in range(args.reference_texts)}
        reference_seconds = statistics.median(per_text)
        rows = []
        for k in args.texts:
            texts = list(SHTECH_CLASSES[:k])
            for features in args.window_features:
                figures, agree, distances = {}, True, []
                for worst, runs in ((False, chosen_runs), (True, worst_runs)):
                    timings = []
                    for repeat in range(args.repeats + 1):
                        seconds, forwards, selection, contexts = await project_segment(services, frames, texts,
                                                                                       worst, features)
                        if repeat:
                            timings.append(seconds)
                    figures[worst] = (statistics.median(timings), forwards)
                    compared = [(run, selection.selections[index], contexts.contexts[index])
                                for index, run in runs.items() if index < k]
                    agree &= all(same(*item) for item in compared)
                    distances += [distance(run, context) for run, _, context in compared]
                kept = sum(position for position, _ in distances)
                verdict = "yes" if agree else "NO" if features == "crops" else \
                    f"{kept}/{len(distances)} grid, PC {statistics.mean(d for _, d in distances):.1f}"
                rows.append(Row(k, features, reference_seconds * k, figures[False][0], figures[True][0],
                                figures[False][1], figures[True][1], k * (FRAMES + 38 + 4 * 38), verdict))
                print(table(rows[-1:], header=len(rows) == 1), flush=True)
        return rows
    finally:
        await services.stop()


def table(rows: list[Row], header: bool = True) -> str:
    lines = [f"{'texts':>5} {'windows':>7} {'reference s':>12} {'as chosen s':>12} {'ratio':>6} "
             f"{'worst case s':>13} {'ratio':>6} "
             f"{'forwards: reference':>20} {'chosen':>7} {'worst':>6} {'same contexts':>21}"] if header else []
    lines += [f"{r.texts:>5} {r.features:>7} {r.reference_seconds:>12.2f} {r.chosen_seconds:>12.2f} "
              f"{r.reference_seconds / r.chosen_seconds:>5.1f}x {r.worst_seconds:>13.2f} "
              f"{r.reference_seconds / r.worst_seconds:>5.1f}x {r.reference_forwards:>20} {r.chosen_forwards:>7} "
              f"{r.worst_forwards:>6} {r.same_contexts:>21}" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="a video of at least 24 frames")
    parser.add_argument("--models", default="random", choices=("random", "tiny"))
    parser.add_argument("--texts", type=int, nargs="+", default=[1, 5, 11])
    parser.add_argument("--repeats", type=int, default=2, choices=range(1, 100), metavar="N (1 or more)")
    parser.add_argument("--reference-texts", type=int, default=2, help="texts the reference is timed on")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where both run (cuda: fp16, as clip_service runs there)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                        help="clip_service's --precision; the reference keeps the parity precision")
    parser.add_argument("--window-features", nargs="+", default=["crops"], choices=WINDOW_FEATURES.choices,
                        help="crops (parity), dense (one pass per frame), or both: a row each")
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
