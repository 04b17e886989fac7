"""ClipService servicer: protobuf <-> ClipEngine, nothing else."""

from __future__ import annotations

from anyanomaly.v1 import clip_pb2, clip_pb2_grpc, common_pb2
from services.clip_service.config import ClipSettings
from services.clip_service.engine import ClipEngine, Selection, TextEncoding
from services.clip_service.ksm import Strategy
from services.clip_service.preprocess import Mode
from services.common.enums import KEY_FRAME_STRATEGY, PREPROCESS, TEXT_ENCODING
from services.common.server import RpcContext, ServiceSpec
from services.common.tensors import to_tensor

SERVICE_NAME = clip_pb2.DESCRIPTOR.services_by_name["ClipService"].full_name

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
        encoding = TEXT_ENCODING.member(request.encoding, TextEncoding, TextEncoding.RAW)
        vectors = await self._engine.embed_texts(list(request.texts), encoding)
        return clip_pb2.EmbedTextsResponse(embeddings=to_tensor(vectors))

    async def EmbedImages(
        self, request: clip_pb2.EmbedImagesRequest, context: RpcContext
    ) -> clip_pb2.EmbedImagesResponse:
        mode = PREPROCESS.member(request.preprocess, Mode, Mode.CENTER_CROP)
        windows = [(w.size, w.stride) for w in request.windows]
        result = await self._engine.embed_images(
            [image.data for image in request.images], mode, windows, dense=request.dense
        )
        layouts = [
            clip_pb2.WindowLayout(size=g.size, stride=g.stride, rows=g.rows, cols=g.cols, offset=g.offset)
            for g in result.grids
        ]
        return clip_pb2.EmbedImagesResponse(embeddings=to_tensor(result.embeddings), layouts=layouts)

    async def SelectKeyFrames(
        self, request: clip_pb2.SelectKeyFramesRequest, context: RpcContext
    ) -> clip_pb2.SelectKeyFramesResponse:
        strategy = KEY_FRAME_STRATEGY.member(request.strategy, Strategy, Strategy.CLIP_THEN_GROUPING)
        mode = PREPROCESS.member(request.preprocess, Mode, Mode.CENTER_CROP)
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
