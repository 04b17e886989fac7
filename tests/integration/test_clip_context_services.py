"""clip_service and context_service as real gRPC servers on 127.0.0.1 (tiny CLIP),
exercised through the generated stubs on real Avenue frames."""

from __future__ import annotations

import grpc
import numpy as np
import open_clip
import pytest

from anyanomaly.v1 import clip_pb2, clip_pb2_grpc, common_pb2, context_pb2, context_pb2_grpc
from services.clip_service.engine import ClipEngine
from services.clip_service.model import TINY_MODEL_NAME
from services.common.clients import open_channel
from services.common.images import decode_image
from services.common.presets import SHTECH_CLASSES
from services.common.server import RunningServer
from services.common.tensors import from_tensor
from tests.helpers import reference

TEXTS = ["running", "bicycle"]


def frames_msg(pngs: list[bytes]) -> list[common_pb2.Image]:
    return [common_pb2.Image(data=p) for p in pngs]


async def select(address: str, pngs: list[bytes], texts: list[str]) -> clip_pb2.SelectKeyFramesResponse:
    async with open_channel(address) as channel:
        stub = clip_pb2_grpc.ClipServiceStub(channel)
        return await stub.SelectKeyFrames(clip_pb2.SelectKeyFramesRequest(frames=frames_msg(pngs), texts=texts))


def context_request(
    pngs: list[bytes],
    selections: clip_pb2.SelectKeyFramesResponse,
    profile: common_pb2.Profile.ValueType = common_pb2.PROFILE_DEFAULT,
    preset: str = "shtech",
) -> context_pb2.BuildContextsRequest:
    return context_pb2.BuildContextsRequest(
        frames=frames_msg(pngs),
        queries=[
            context_pb2.ContextQuery(text=s.text, key_frames=list(s.key_frames), representative=s.representative)
            for s in selections.selections
        ],
        options=context_pb2.ContextOptions(profile=profile, preset=preset, include_attention_map=True),
    )


async def test_key_frames_for_24_real_frames_and_two_texts(
    clip_server: tuple[RunningServer, ClipEngine], avenue21_pngs: list[bytes]
) -> None:
    running, engine = clip_server
    before = engine.model.images_encoded
    response = await select(running.address, avenue21_pngs, TEXTS)
    assert engine.model.images_encoded - before == 24  # one pass over the frames for both texts
    assert [s.text for s in response.selections] == TEXTS
    for selection in response.selections:
        assert len(selection.similarities) == 24
        best = int(np.argmax(np.array(selection.similarities, dtype=np.float32)))
        assert selection.representative == best
        assert list(selection.key_frames) == [best % 6 + 6 * j for j in range(4)]


async def test_key_frames_match_an_independent_reference_computation(
    clip_server: tuple[RunningServer, ClipEngine], avenue21_frames: list[np.ndarray], avenue21_pngs: list[bytes]
) -> None:
    running, engine = clip_server
    _, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL_NAME, pretrained=None)
    response = await select(running.address, avenue21_pngs, TEXTS)
    for selection in response.selections:
        best, keys = reference.ksm(engine.model, preprocess, avenue21_frames, selection.text)
        assert (selection.representative, list(selection.key_frames)) == (best, keys)


async def test_contexts_are_decodable_224_pngs_with_a_valid_grid_choice(
    clip_server: tuple[RunningServer, ClipEngine], context_server: RunningServer, avenue21_pngs: list[bytes]
) -> None:
    running, engine = clip_server
    selections = await select(running.address, avenue21_pngs, TEXTS)
    before = engine.model.images_encoded
    async with open_channel(context_server.address) as channel:
        response = await context_pb2_grpc.ContextServiceStub(channel).BuildContexts(
            context_request(avenue21_pngs, selections)
        )
    distinct_frames = {k for s in selections.selections for k in (*s.key_frames, s.representative)}
    # One batched call: 38 windows (25 + 9 + 4) of each distinct key frame, shared by both texts.
    assert engine.model.images_encoded - before == 38 * len(distinct_frames)
    assert list(response.class_names) == list(SHTECH_CLASSES)  # both texts are ShT classes
    assert [c.text for c in response.contexts] == TEXTS
    for item in response.contexts:
        for image in (item.position_context, item.temporal_context):
            assert image.data.startswith(b"\x89PNG")
            assert decode_image(image.data).shape == (224, 224, 3)
        attention = from_tensor(item.attention_map)
        assert attention.shape == (224, 224) and attention.min() == 0 and attention.max() <= 1
        assert 0 <= item.grid_position.candidate < 38
        assert item.grid_position.window_size in (48, 80, 120)


async def test_parity_profile_reproduces_the_reference_pc_and_tc(
    clip_server: tuple[RunningServer, ClipEngine],
    context_server: RunningServer,
    avenue21_frames: list[np.ndarray],
    avenue21_pngs: list[bytes],
) -> None:
    running, engine = clip_server
    selections = await select(running.address, avenue21_pngs, TEXTS)
    async with open_channel(context_server.address) as channel:
        response = await context_pb2_grpc.ContextServiceStub(channel).BuildContexts(
            context_request(avenue21_pngs, selections, profile=common_pb2.PROFILE_PARITY)
        )
    sizes = (48, 80, 120)
    for selection, item in zip(selections.selections, response.contexts, strict=True):
        key_frames = [avenue21_frames[k] for k in selection.key_frames]
        candidate, expected_tc = reference.temporal_context(engine.model, key_frames, selection.text, sizes)
        assert item.grid_position.candidate == candidate
        tc = decode_image(item.temporal_context.data).astype(int)
        assert np.abs(tc - expected_tc).max() <= 1
        expected_pc = reference.position_context(
            engine.model, avenue21_frames[selection.representative], list(SHTECH_CLASSES), selection.text, sizes
        )
        pc_diff = np.abs(decode_image(item.position_context.data).astype(int) - expected_pc)
        assert pc_diff.max() <= 1 and (pc_diff > 0).mean() < 0.01, (pc_diff.max(), (pc_diff > 0).mean())


async def test_avenue_preset_uses_25_9_1_windows_and_its_class_list(
    clip_server: tuple[RunningServer, ClipEngine], context_server: RunningServer, avenue21_pngs: list[bytes]
) -> None:
    running, _ = clip_server
    selections = await select(running.address, avenue21_pngs, ["running", "stroller"])
    async with open_channel(context_server.address) as channel:
        response = await context_pb2_grpc.ContextServiceStub(channel).BuildContexts(
            context_request(avenue21_pngs, selections, preset="avenue")
        )
    assert list(response.class_names) == ["too_close", "bicycle", "throwing", "running", "dancing", "stroller"]
    assert all(0 <= c.grid_position.candidate < 35 for c in response.contexts)


async def build(address: str, request: context_pb2.BuildContextsRequest) -> context_pb2.BuildContextsResponse:
    async with open_channel(address) as channel:
        return await context_pb2_grpc.ContextServiceStub(channel).BuildContexts(request)


async def test_the_attention_map_of_each_profile_is_the_one_its_options_define(
    clip_server: tuple[RunningServer, ClipEngine], context_server: RunningServer, avenue21_frames: list[np.ndarray],
    avenue21_pngs: list[bytes],
) -> None:
    """Each profile's attention map, recomputed independently (tests/helpers/reference.py) from the
    same CLIP weights: parity (raw-pixel windows, softmax on raw cosines), parity with only the
    logit scale fixed, and the default (normalised windows, logit scale 100). The logit scale
    makes the class softmax a real posterior: the map before min-max spreads far wider."""
    running, engine = clip_server
    selections = await select(running.address, avenue21_pngs, ["running"])
    representative = avenue21_frames[selections.selections[0].representative]
    classes = list(SHTECH_CLASSES)  # "running" is one of them
    sizes = (48, 80, 120)
    scaled_parity = context_request(avenue21_pngs, selections, profile=common_pb2.PROFILE_PARITY)
    scaled_parity.options.attention_logit_scale = 100.0
    cases = [
        (context_request(avenue21_pngs, selections, profile=common_pb2.PROFILE_PARITY), 1.0, False),
        (scaled_parity, 100.0, False),
        (context_request(avenue21_pngs, selections), 100.0, True),
    ]
    raws, maps = [], []
    for request, scale, normalized in cases:
        response = await build(context_server.address, request)
        raw, mask = reference.attention_map(engine.model, representative, classes, "running", sizes, scale,
                                            normalized)
        served = from_tensor(response.contexts[0].attention_map)
        np.testing.assert_allclose(served, mask, atol=0.02)  # float noise, amplified by min-max
        raws.append(raw)
        maps.append(served)
    assert not np.allclose(maps[0], maps[1], atol=0.05) and not np.allclose(maps[1], maps[2], atol=0.05)
    spread = [float(raw.max() - raw.min()) for raw in raws]
    assert spread[1] > 10 * spread[0]  # the logit scale sharpens the near-uniform parity map


async def test_grid_embedding_selection_embeds_every_candidate_grid(
    clip_server: tuple[RunningServer, ClipEngine], context_server: RunningServer, avenue21_frames: list[np.ndarray],
    avenue21_pngs: list[bytes],
) -> None:
    running, engine = clip_server
    selections = await select(running.address, avenue21_pngs, ["running"])
    request = context_request(avenue21_pngs, selections, profile=common_pb2.PROFILE_PARITY)
    request.options.temporal_selection = context_pb2.TEMPORAL_SELECTION_GRID_EMBEDDING
    before = engine.model.images_encoded
    response = await build(context_server.address, request)
    distinct = len({*selections.selections[0].key_frames, selections.selections[0].representative})
    assert engine.model.images_encoded - before == 38 * distinct + 38  # windows, then the 38 composed grids
    # Independent check: compose all 38 grids with the reference code and embed them directly.
    key_frames = [avenue21_frames[k] for k in selections.selections[0].key_frames]
    grids = reference.all_grids(key_frames, (48, 80, 120))
    scores = (reference.embed_images(engine.model, grids) @ reference.embed_text(engine.model, "running")).numpy()
    assert response.contexts[0].grid_position.candidate == int(np.argmax(scores))
    assert response.contexts[0].grid_position.score == pytest.approx(float(scores.max()), abs=1e-4)


async def test_half_stride_windows_give_115_candidates(
    clip_server: tuple[RunningServer, ClipEngine], context_server: RunningServer, avenue21_pngs: list[bytes]
) -> None:
    running, engine = clip_server
    selections = await select(running.address, avenue21_pngs, ["running"])
    request = context_request(avenue21_pngs, selections)
    request.options.half_stride = True
    before = engine.model.images_encoded
    response = await build(context_server.address, request)
    distinct = len({*selections.selections[0].key_frames, selections.selections[0].representative})
    assert engine.model.images_encoded - before == 115 * distinct  # 81 + 25 + 9 windows per frame
    assert 0 <= response.contexts[0].grid_position.candidate < 115


async def test_dense_window_features_take_one_clip_pass_per_frame(
    clip_server: tuple[RunningServer, ClipEngine], context_server: RunningServer, avenue21_pngs: list[bytes]
) -> None:
    running, engine = clip_server
    selections = await select(running.address, avenue21_pngs, TEXTS)
    crops_request = context_request(avenue21_pngs, selections)
    dense_request = context_request(avenue21_pngs, selections)
    dense_request.options.window_features = context_pb2.WINDOW_FEATURES_DENSE
    crops = await build(context_server.address, crops_request)
    before = engine.model.images_encoded
    dense = await build(context_server.address, dense_request)
    distinct = {k for s in selections.selections for k in (*s.key_frames, s.representative)}
    assert engine.model.images_encoded - before == len(distinct)  # not 38 per frame
    for item, plain in zip(dense.contexts, crops.contexts, strict=True):
        assert decode_image(item.position_context.data).shape == (224, 224, 3)
        assert decode_image(item.temporal_context.data).shape == (224, 224, 3)
        assert 0 <= item.grid_position.candidate < 38
        attention = from_tensor(item.attention_map)
        assert attention.min() == 0 and attention.max() <= 1
        assert not np.allclose(attention, from_tensor(plain.attention_map), atol=0.05)  # other features


async def test_dense_windows_without_grids_are_refused_with_a_message(
    clip_server: tuple[RunningServer, ClipEngine], avenue21_pngs: list[bytes]
) -> None:
    running, _ = clip_server
    request = clip_pb2.EmbedImagesRequest(images=frames_msg(avenue21_pngs[:2]), dense=True,
                                          preprocess=clip_pb2.PREPROCESS_SQUASH)
    async with open_channel(running.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await clip_pb2_grpc.ClipServiceStub(channel).EmbedImages(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "give the window grids" in (caught.value.details() or "")
