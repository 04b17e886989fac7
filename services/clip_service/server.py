"""ClipService servicer: protobuf <-> ClipEngine, nothing else."""

from __future__ import annotations

from anyanomaly.v1 import clip_pb2, clip_pb2_grpc, common_pb2

from services.clip_service.config import ClipSettings
from services.clip_service.engine import ClipEngine, Selection, TextEncoding
from services.clip_service.ksm import Strategy
from services.clip_service.preprocess import Mode
from services.common.server import RpcContext, ServiceSpec
from services.common.tensors import to_tensor
from services.common.validation import lookup

SERVICE_NAME = clip_pb2.DESCRIPTOR.services_by_name["ClipService"].full_name

_ENCODINGS = {
    clip_pb2.TEXT_ENCODING_UNSPECIFIED: TextEncoding.RAW,
    clip_pb2.TEXT_ENCODING_RAW: TextEncoding.RAW,
    clip_pb2.TEXT_ENCODING_TEMPLATE_ENSEMBLE: TextEncoding.TEMPLATE_ENSEMBLE,
}
_MODES = {
    clip_pb2.PREPROCESS_UNSPECIFIED: Mode.CENTER_CROP,
    clip_pb2.PREPROCESS_CENTER_CROP: Mode.CENTER_CROP,
    clip_pb2.PREPROCESS_SQUASH: Mode.SQUASH,
    clip_pb2.PREPROCESS_SQUASH_NORMALIZED: Mode.SQUASH_NORMALIZED,
}
STRATEGIES = {
    common_pb2.KEY_FRAME_STRATEGY_UNSPECIFIED: Strategy.CLIP_THEN_GROUPING,
    common_pb2.KEY_FRAME_STRATEGY_CLIP_THEN_GROUPING: Strategy.CLIP_THEN_GROUPING,
    common_pb2.KEY_FRAME_STRATEGY_RANDOM: Strategy.RANDOM,
    common_pb2.KEY_FRAME_STRATEGY_CLIP_TOP4: Strategy.CLIP_TOP4,
    common_pb2.KEY_FRAME_STRATEGY_GROUPING_THEN_CLIP: Strategy.GROUPING_THEN_CLIP,
}


def _selection(selection: Selection) -> clip_pb2.KeyFrameSelection:
    return clip_pb2.KeyFrameSelection(
        text=selection.text, representative=selection.representative, key_frames=list(selection.key_frames),
        similarities=selection.similarities.tolist(),
    )


class ClipServicer(clip_pb2_grpc.ClipServiceServicer):
    def __init__(self, engine: ClipEngine) -> None:
        self._engine = engine

    async def EmbedTexts(
        self, request: clip_pb2.EmbedTextsRequest, context: RpcContext
    ) -> clip_pb2.EmbedTextsResponse:
        encoding = lookup(_ENCODINGS, request.encoding, "text encoding")
        vectors = await self._engine.embed_texts(list(request.texts), encoding)
        return clip_pb2.EmbedTextsResponse(embeddings=to_tensor(vectors))

    async def EmbedImages(
        self, request: clip_pb2.EmbedImagesRequest, context: RpcContext
    ) -> clip_pb2.EmbedImagesResponse:
        mode = lookup(_MODES, request.preprocess, "preprocess")
        windows = [(w.size, w.stride) for w in request.windows]
        result = await self._engine.embed_images(
            [image.data for image in request.images], mode, windows
        )
        layouts = [
            clip_pb2.WindowLayout(size=g.size, stride=g.stride, rows=g.rows, cols=g.cols, offset=g.offset)
            for g in result.grids
        ]
        return clip_pb2.EmbedImagesResponse(embeddings=to_tensor(result.embeddings), layouts=layouts)

    async def SelectKeyFrames(
        self, request: clip_pb2.SelectKeyFramesRequest, context: RpcContext
    ) -> clip_pb2.SelectKeyFramesResponse:
        strategy = lookup(STRATEGIES, request.strategy, "key-frame strategy")
        mode = lookup(_MODES, request.preprocess, "preprocess")
        result = await self._engine.select_key_frames(
            [frame.data for frame in request.frames], list(request.texts), strategy, request.seed, mode,
            joint=request.joint,
        )
        response = clip_pb2.SelectKeyFramesResponse(
            selections=[_selection(s) for s in result.selections], best_similarity=result.best_similarity
        )
        if result.joint is not None:
            response.joint.CopyFrom(_selection(result.joint))
        return response

    async def GetModelInfo(
        self, request: common_pb2.GetModelInfoRequest, context: RpcContext
    ) -> common_pb2.ModelInfo:
        info = self._engine.info
        return common_pb2.ModelInfo(
            name=info.name, weights=info.weights, device=info.device, dtype=info.dtype,
            random_weights=info.random_weights, embed_dim=info.embed_dim, image_size=info.image_size,
        )


def build_service(settings: ClipSettings, engine: ClipEngine | None = None) -> tuple[ServiceSpec, ClipEngine]:
    engine = engine or ClipEngine(settings)
    spec = ServiceSpec(
        name="clip_service",
        service_names=[SERVICE_NAME],
        register=lambda server: clip_pb2_grpc.add_ClipServiceServicer_to_server(ClipServicer(engine), server),
        start=engine.load,
        stop=engine.close,
    )
    return spec, engine
