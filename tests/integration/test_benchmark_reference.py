"""The yardstick of `make bench` computes what the services compute: benchmarks.reference_clip
(the CLIP side the authors' way) gives the same key frames and contexts as clip_service +
context_service with the parity profile, on real frames, for the key frames the texts chose and
for the benchmark's worst case (every text on other frames)."""

from __future__ import annotations

from typing import Any

import open_clip

from anyanomaly.v1 import common_pb2
from benchmarks import clip_side
from benchmarks.bench_segment import DEFAULT_VIDEO, first_frames
from benchmarks.reference_clip import ReferenceClip, ReferenceContexts
from services.common.presets import SHTECH_CLASSES


async def test_the_benchmark_reference_computes_the_services_contexts() -> None:
    jpegs = first_frames(DEFAULT_VIDEO, clip_side.FRAMES)
    frames = [common_pb2.Image(data=data) for data in jpegs]
    services = await clip_side.Services.start("tiny")
    try:
        model: Any = services.engine.model
        preprocess = open_clip.image_transform(model.image_size, is_train=False, mean=model.mean, std=model.std)
        reference = ReferenceClip(model._model, model._tokenizer, preprocess)
        texts = list(SHTECH_CLASSES[:3])
        runs = [clip_side.reference_text(reference, jpegs, index)[1] for index in range(len(texts))]
        _, forwards, selection, contexts = await clip_side.project_segment(services, frames, texts, worst=True)
        assert forwards == 24 + 38 * 12  # 3 texts on 3 disjoint sets of 4 key frames
        for index, run in enumerate(runs):
            assert clip_side.same(run, selection.selections[index], contexts.contexts[index]), texts[index]
        _, _, chosen, chosen_contexts = await clip_side.project_segment(services, frames, texts, worst=False)
        for index in range(len(texts)):
            run = clip_side.chosen_reference(reference, jpegs, index)
            assert clip_side.same(run, chosen.selections[index], chosen_contexts.contexts[index]), texts[index]
        # Dense window features: one forward per distinct frame, contexts near the reference's.
        _, dense_forwards, _, dense = await clip_side.project_segment(services, frames, texts, worst=True,
                                                                      features="dense")
        assert dense_forwards == 24 + 12
        for index, run in enumerate(runs):
            assert clip_side.distance(run, contexts.contexts[index])[1] < 0.01  # the crops: the same pictures
            assert clip_side.distance(run, dense.contexts[index])[1] > 0.5  # dense: other attention maps
        # A wrong temporal position or a changed picture is told apart.
        run = runs[0]
        moved = clip_side.ReferenceRun(ReferenceContexts(
            run.contexts.representative, run.contexts.key_frames, run.contexts.position_context,
            run.contexts.temporal_position + 1, run.contexts.temporal_context), run.representative_ksm,
            run.key_frames_ksm)
        assert not clip_side.same(moved, selection.selections[0], contexts.contexts[0])
        darker = clip_side.ReferenceRun(ReferenceContexts(
            run.contexts.representative, run.contexts.key_frames, run.contexts.position_context // 2,
            run.contexts.temporal_position, run.contexts.temporal_context), run.representative_ksm,
            run.key_frames_ksm)
        assert not clip_side.same(darker, selection.selections[0], contexts.contexts[0])
    finally:
        await services.stop()
